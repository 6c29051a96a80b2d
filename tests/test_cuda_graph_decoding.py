"""CUDA-graph decoding (fastseq.generation.graphs): the static state a graph replays — KV caches read
whole and masked by their lengths, every update in place — decodes token for token as the eager path
does, for every decoder, greedy, sampling and beam search, ragged prompts included (on the CPU, the static
steps run without the graph); on a GPU, the captured graph's output equals eager decoding and its replay
reuses the same buffers."""
import pytest
import torch
from test_generation import _inputs, _sharpen, tiny_models

from fastseq.generation import generate
from fastseq.generation.search import beam_search, sequential
from fastseq.nn import KVCache


def _decode(model, tokens, lengths, method, cuda_graph, eos_id):
    with torch.no_grad():
        if method == "beam":
            return beam_search(model, tokens, lengths, 9, 3, 1.0, eos_id, 0, 0, True, cuda_graph=cuda_graph)
        generator = torch.Generator(device=tokens.device).manual_seed(3) if method == "sample" else None
        return sequential(model, tokens, lengths, 9, eos_id, 0, 0, True, sample=method == "sample",
                          generator=generator, cuda_graph=cuda_graph)


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
@pytest.mark.parametrize("kind", sorted(tiny_models()))
def test_static_decoding_equals_eager(kind, method):
    torch.manual_seed(11)
    model = _sharpen(tiny_models()[kind]).double().eval()
    tokens, lengths = _inputs()
    for eos_id in (None, 2):
        eager = _decode(model, tokens, lengths, method, False, eos_id)
        static = _decode(model, tokens, lengths, method, True, eos_id)
        assert torch.equal(eager.tokens, static.tokens) and torch.equal(eager.lengths, static.lengths), (kind, eos_id)
        torch.testing.assert_close(eager.scores, static.scores)


def test_a_static_cache_appends_at_each_rows_length_and_reorders_in_place():
    torch.manual_seed(0)
    cache = KVCache(3, 2, 4, 6, dtype=torch.float64)
    first = torch.randn(3, 2, 2, 4, dtype=torch.float64)
    cache.append(first, first.clone(), counts=[2, 1, 0])
    cache.make_static()
    assert cache.keys().shape == (3, 2, 6, 4)  # the whole buffer from now on
    new = torch.randn(3, 2, 1, 4, dtype=torch.float64)
    pointers = cache.k.data_ptr(), cache.lengths.data_ptr()
    cache.append(new, new.clone())
    assert cache.lengths.tolist() == [3, 2, 1]
    for b, at in enumerate([2, 1, 0]):
        torch.testing.assert_close(cache.k[b, :, at], new[b, :, 0])
    cache.reorder(torch.tensor([2, 0, 1]))
    assert cache.lengths.tolist() == [1, 3, 2] and (cache.k.data_ptr(), cache.lengths.data_ptr()) == pointers
    torch.testing.assert_close(cache.k[1, :, 2], new[0, :, 0])
    with pytest.raises(ValueError, match="one position per row"):
        cache.append(first, first.clone())


def test_cuda_graph_needs_cuda_inputs_and_the_cache():
    model = tiny_models()["causal_lm"]
    tokens, lengths = _inputs()
    with pytest.raises(ValueError, match="cuda_graph=True needs CUDA inputs"):
        generate(model, tokens, lengths, max_new_tokens=3, cuda_graph=True)


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["greedy", "beam"])
@pytest.mark.parametrize("kind", sorted(tiny_models()))
def test_cuda_graph_decoding_equals_eager_on_a_gpu(kind, method):
    torch.manual_seed(5)
    model = _sharpen(tiny_models()[kind]).cuda().eval()
    tokens, lengths = (t.cuda() for t in _inputs())
    args = dict(max_new_tokens=12, method=method, beams=3, eos_id=None)
    eager = generate(model, tokens, lengths, **args)
    graphed = generate(model, tokens, lengths, cuda_graph=True, **args)
    assert torch.equal(eager.tokens, graphed.tokens) and torch.equal(eager.lengths, graphed.lengths)
    torch.testing.assert_close(eager.scores, graphed.scores, atol=1e-4, rtol=1e-4)
