"""pytest-benchmark suite: fastseq's attention against torch's scaled_dot_product_attention, forward+backward,
causal.

    pytest benchmarks/ --benchmark-group-by=param:case
"""
import pytest
import torch
import torch.nn.functional as F

from fastseq import backends, ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = {"B2-H4-T256-D64": (2, 4, 256, 64)}  # name: (B, H, T, D)
IMPLS = ["sdpa", "reference"] + [b for b in ("triton",) if backends.availability(b, DEVICE)[0] and DEVICE == "cuda"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_attention(benchmark, case, impl):
    B, H, T, D = CASES[case]
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=DEVICE, requires_grad=True) for _ in range(3))

    def run():
        if impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            with backends.use(impl):
                out = ops.attention(q, k, v, causal=True)
        out.sum().backward()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = case
    benchmark(run)
