"""Hugging Face checkpoints into fastseq's models: a GPT-2 written by transformers from a random config loads
into CausalLM.from_hf with equal logits (float64) and equal greedy and beam outputs."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastseq.generation import generate  # noqa: E402
from fastseq.models import CausalLM  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                                     eos_token_id=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return path


def test_gpt2_logits_equal_transformers(checkpoint):
    hf = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).double().eval()
    ours = CausalLM.from_hf(checkpoint).double().eval()
    assert ours.config.activation == "gelu_tanh" and ours.config.eos_id == 2
    tokens = torch.randint(3, 120, (3, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("beams", [1, 3])
def test_gpt2_generation_equals_transformers(checkpoint, beams):
    hf = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).double().eval()
    ours = CausalLM.from_hf(hf)
    prompt = torch.randint(3, 120, (2, 6))
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=7, do_sample=False, num_beams=beams, length_penalty=0.0,
                             eos_token_id=None, pad_token_id=0)[:, 6:]
        found = generate(ours, prompt, max_new_tokens=7, method="beam" if beams > 1 else "greedy", beams=beams,
                         length_penalty=0.0, eos_id=None)
    assert torch.equal(found.tokens, theirs)


@pytest.fixture(scope="module")
def peaked_gpt2():
    """A random GPT-2 in float64 whose next tokens are clear (embeddings scaled up) and whose EOS comes often
    (its embedding along the mean final state): beams finish at many lengths, so the stopping rules matter."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                                     eos_token_id=2)
    hf = transformers.GPT2LMHeadModel(config).double().eval()
    with torch.no_grad():
        hf.transformer.wte.weight.mul_(8)
        h = hf.transformer(torch.randint(3, 50, (64, 10))).last_hidden_state.reshape(-1, 32)
        typical = (h @ hf.transformer.wte.weight.T).max(-1).values.median()
        hf.transformer.wte.weight[2] = h.mean(0) / h.mean(0).norm() ** 2 * typical
    return hf


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0, -0.5])
@pytest.mark.parametrize("early_stopping", ["never", False, True])
def test_beam_search_stops_as_transformers_does(peaked_gpt2, early_stopping, alpha):
    """Every early_stopping rule and length penalty (EOS on): the same n best hypotheses and scores as Hugging
    Face's beam search, whose early_stopping and num_return_sequences names fastseq's options take."""
    ours = CausalLM.from_hf(peaked_gpt2)
    prompt = torch.randint(3, 50, (6, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = peaked_gpt2.generate(prompt, max_new_tokens=12, do_sample=False, num_beams=3, length_penalty=alpha,
                                      early_stopping=early_stopping, eos_token_id=2, pad_token_id=0,
                                      num_return_sequences=3, return_dict_in_generate=True, output_scores=True)
        found = generate(ours, prompt, max_new_tokens=12, method="beam", beams=3, length_penalty=alpha, eos_id=2,
                         pad_id=0, early_stopping=early_stopping, num_return_sequences=3)
    for row, (tokens, n) in enumerate(zip(theirs.sequences[:, 5:].tolist(), found.lengths.tolist())):
        expected = tokens[:tokens.index(2) + 1] if 2 in tokens else tokens
        assert found.tokens[row, :n].tolist() == expected, row
    torch.testing.assert_close(found.scores.float(), theirs.sequences_scores.float(), atol=1e-5, rtol=1e-5)


def test_other_checkpoints_are_refused_naming_why():
    bert = transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                                 num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match="a GPT-2 checkpoint is expected"):
        CausalLM.from_hf(bert)


def test_save_pretrained_round_trips_model_and_tokenizer(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    from fastseq.data.tokenizers import BPETokenizer, load_tokenizer
    from fastseq.models import CausalLMConfig, Model

    text = ["the cat sat on the mat", "a dog sat on a log"] * 20
    tokenizer = BPETokenizer.fit(text, vocab_size=60)
    model = CausalLM(CausalLMConfig(tokenizer.vocab_size, 16, 2, 1, max_len=32)).eval()
    model.save_pretrained(tmp_path, tokenizer)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    again = Model.from_pretrained(tmp_path)
    assert type(again) is CausalLM and again.output.weight is again.embedding.tokens.weight  # still tied
    tokens = torch.tensor([tokenizer.encode("the cat sat")])
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(tokens), model(tokens))
    hf_tok = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))  # HF tokenizers reads it itself
    assert hf_tok.encode("the cat sat").ids == tokenizer.encode("the cat sat")
    assert load_tokenizer(tmp_path / "tokenizer.json").encode("a dog") == tokenizer.encode("a dog")
    with pytest.raises(ValueError, match="not a MaskedLM"):
        __import__("fastseq").models.MaskedLM.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def bert_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bert")
    config = transformers.BertConfig(vocab_size=97, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                                     intermediate_size=40, max_position_embeddings=40, type_vocab_size=2,
                                     pad_token_id=0)
    hf = transformers.BertForMaskedLM(config)
    with torch.no_grad():  # a checkpoint's head bias and token-type table are not zero
        hf.cls.predictions.bias.normal_()
        hf.bert.embeddings.token_type_embeddings.weight.normal_()
    hf.save_pretrained(path)
    return path


@pytest.mark.parametrize("padded", [False, True])
def test_bert_logits_equal_transformers(bert_checkpoint, padded):
    from fastseq.models import MaskedLM

    hf = transformers.BertForMaskedLM.from_pretrained(bert_checkpoint).double().eval()
    ours = MaskedLM.from_hf(hf, mask_id=4).eval()  # from the float64 model: the token-type fold rounds in its dtype
    assert ours.config.mask_id == 4 and ours.config.pad_id == 0 and ours.config.layer_norm_eps == 1e-12
    B, T = 3, 13
    tokens = torch.randint(5, 97, (B, T))
    lengths = torch.tensor([13, 7, 10]) if padded else torch.full((B,), T)
    mask = torch.arange(T)[None] < lengths[:, None]
    with torch.no_grad():
        theirs = hf(tokens, attention_mask=mask.long()).logits
        found = ours(tokens, lengths=lengths if padded else None)
    torch.testing.assert_close(found[mask], theirs[mask], atol=1e-10, rtol=1e-10)


def test_bert_needs_a_mask_id_and_a_bert(bert_checkpoint, checkpoint, tmp_path):
    import shutil

    from fastseq.models import MaskedLM

    with pytest.raises(ValueError, match="mask_id is needed"):
        MaskedLM.from_hf(bert_checkpoint)
    shutil.copytree(bert_checkpoint, tmp_path / "with_tokenizer")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "[MASK]"] + [f"w{i}" for i in range(91)]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "with_tokenizer")
    assert MaskedLM.from_hf(str(tmp_path / "with_tokenizer")).config.mask_id == 5  # read from its tokenizer
    with pytest.raises(ValueError, match="a BERT checkpoint is expected"):
        MaskedLM.from_hf(transformers.GPT2LMHeadModel.from_pretrained(checkpoint), mask_id=3)
    bert = transformers.BertForMaskedLM.from_pretrained(bert_checkpoint)
    bert.config.position_embedding_type = "relative_key"
    with pytest.raises(ValueError, match="position_embedding_type"):
        MaskedLM.from_hf(bert, mask_id=3)
