"""Hugging Face models on fastseq's attention (fastseq.integrations.transformers): GPT-2, BERT, Llama-style
(grouped heads, RoPE), BART (cross-attention) and T5 (position bias) from small random configs give the logits
and the generated tokens of transformers' own "sdpa" (float64, CPU), on each fastseq backend."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import fastseq.integrations.transformers as integration  # noqa: E402
from fastseq import backends  # noqa: E402


def _models():
    t = transformers
    return {
        "gpt2": (t.GPT2LMHeadModel(t.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                  bos_token_id=1, eos_token_id=2)), False),
        "bert": (t.BertForMaskedLM(t.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64)), None),
        "llama": (t.LlamaForCausalLM(t.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, num_key_value_heads=2,
                                                    intermediate_size=64)), False),
        "bart": (t.BartForConditionalGeneration(t.BartConfig(vocab_size=100, d_model=32, encoder_layers=2,
                                                              decoder_layers=2, encoder_attention_heads=4,
                                                              decoder_attention_heads=4, encoder_ffn_dim=64,
                                                              decoder_ffn_dim=64)), True),
        "t5": (t.T5ForConditionalGeneration(t.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                        num_heads=4, decoder_start_token_id=0)), True),
    }


MODELS = ["gpt2", "bert", "llama", "bart", "t5"]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: (model.double().eval(), seq2seq) for name, (model, seq2seq) in _models().items()}


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("name", MODELS)
def test_logits_and_generation_equal_hf_sdpa(models, name, backend):
    model, seq2seq = models[name]
    g = torch.Generator().manual_seed(len(name))
    ids = torch.randint(3, 100, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, as batched generation pads
    inputs = {"input_ids": ids, "attention_mask": mask}
    if seq2seq:
        inputs["decoder_input_ids"] = ids[:, :4]
    found = {}
    for impl in ("sdpa", integration.NAME):
        model.set_attn_implementation(impl)
        with torch.no_grad(), backends.use(backend):
            logits = model(**inputs).logits
            gen = None
            if seq2seq is not None:
                gen = [model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                      num_beams=beams, pad_token_id=0) for beams in (1, 3)]
        found[impl] = (logits, gen)
    model.set_attn_implementation("sdpa")
    torch.testing.assert_close(found[integration.NAME][0], found["sdpa"][0], atol=1e-10, rtol=1e-10)
    if seq2seq is not None:
        for ours, theirs in zip(found[integration.NAME][1], found["sdpa"][1]):
            assert torch.equal(ours, theirs)


def test_from_pretrained_takes_the_name(tmp_path):
    t = transformers
    t.GPT2LMHeadModel(t.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32)).save_pretrained(
        tmp_path)
    model = t.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation=integration.NAME)
    assert model.config._attn_implementation == integration.NAME
    ids = torch.randint(0, 50, (1, 6))
    reference = t.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="sdpa")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
