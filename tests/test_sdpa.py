"""fastseq.ops.scaled_dot_product_attention against torch's SDPA on the input forms torch's own take: leading
batch dims (none to several), grouped heads, bool and float masks broadcast every way, is_causal with Tq != Tk,
scale, gradients, and torch's errors."""
import pytest
import torch
import torch.nn.functional as F

from fastseq import backends, ops

from _util import backend_params

CASES = [  # query, key/value shapes (value's last dim), mask shape (None: no mask)
    ((2, 4, 5, 8), (2, 4, 7, 8), 6, None),
    ((2, 4, 5, 8), (2, 4, 7, 8), 8, (5, 7)),
    ((2, 4, 5, 8), (2, 4, 7, 8), 8, (2, 1, 5, 7)),
    ((2, 4, 5, 8), (2, 4, 7, 8), 8, (1, 4, 1, 7)),
    ((2, 4, 5, 8), (2, 4, 7, 8), 8, (1, 7)),
    ((3, 5, 8), (3, 6, 8), 4, (3, 5, 6)),  # no head dim
    ((5, 8), (6, 8), 4, (5, 6)),  # no batch dim at all
    ((2, 3, 2, 4, 8), (2, 3, 2, 6, 8), 8, (3, 1, 4, 6)),  # two batch dims
    ((2, 3, 2, 4, 8), (2, 3, 2, 6, 8), 8, (2, 1, 1, 4, 6)),
]


def _masks(shape, kind, generator):
    if shape is None:
        return None
    if kind == "bool":
        m = torch.rand(shape, generator=generator) < 0.7
        return m
    return torch.randn(shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("device,backend", backend_params("attention"))
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_matches_torch_sdpa_with_gradients(device, backend, case, kind):
    q_shape, kv_shape, Ev, mask_shape = CASES[case]
    g = torch.Generator().manual_seed(case)
    q = torch.randn(q_shape, generator=g, dtype=torch.float64)
    k = torch.randn(kv_shape, generator=g, dtype=torch.float64)
    v = torch.randn(*kv_shape[:-1], Ev, generator=g, dtype=torch.float64)
    mask = _masks(mask_shape, kind, g)
    grad = torch.randn(*q_shape[:-1], Ev, generator=g, dtype=torch.float64)
    results = []
    for fn in (F.scaled_dot_product_attention, ops.scaled_dot_product_attention):
        args = [t.to(device).requires_grad_() for t in (q, k, v)]
        m = None if mask is None else mask.to(device)
        with backends.use(backend):
            out = fn(*args, attn_mask=m, scale=0.3)
        out.backward(grad.to(device))
        results.append([out, *(a.grad for a in args)])
    for ours, theirs in zip(results[1], results[0]):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("L,S", [(5, 5), (3, 7), (7, 3)])
def test_is_causal_aligns_queries_to_the_start_as_torch_does(L, S):
    q, k, v = torch.randn(2, 3, L, 8, dtype=torch.float64), torch.randn(2, 3, S, 8, dtype=torch.float64), \
        torch.randn(2, 3, S, 8, dtype=torch.float64)
    torch.testing.assert_close(ops.scaled_dot_product_attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_grouped_heads_need_enable_gqa_as_in_torch():
    q, k, v = torch.randn(2, 8, 5, 16, dtype=torch.float64), torch.randn(2, 2, 6, 16, dtype=torch.float64), \
        torch.randn(2, 2, 6, 16, dtype=torch.float64)
    torch.testing.assert_close(ops.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                               F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    with pytest.raises(ValueError, match="enable_gqa=True"):
        ops.scaled_dot_product_attention(q, k, v)


def test_a_query_that_may_attend_nowhere_gets_zeros_as_in_torch():
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4)
    m = torch.ones(3, 5, dtype=torch.bool)
    m[1] = False
    torch.testing.assert_close(ops.scaled_dot_product_attention(q, k, k, attn_mask=m),
                               F.scaled_dot_product_attention(q, k, k, attn_mask=m))


def test_errors_name_the_argument():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="attn_mask and is_causal"):
        ops.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(3, 3, dtype=torch.bool), is_causal=True)
    with pytest.raises(ValueError, match="attn_mask must broadcast"):
        ops.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        ops.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="key must be"):
        ops.scaled_dot_product_attention(q, torch.randn(1, 2, 3, 5), q)
