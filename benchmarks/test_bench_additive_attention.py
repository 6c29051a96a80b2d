"""pytest-benchmark suite: fastseq's additive attention against the naive PyTorch form, forward+backward.

    pytest benchmarks/ --benchmark-group-by=param:case
"""
import pytest
import torch

from fastseq import backends, ops
from fastseq.reference.additive_attention import naive

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = {"B8-Tq64-Tk64-H128": (8, 64, 64, 128, 128)}  # name: (B, Tq, Tk, H, Dv)
IMPLS = ["naive", "reference"] + [b for b in ("cuda", "triton") if backends.availability(b, DEVICE)[0]
                                  and DEVICE == "cuda"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_additive_attention(benchmark, case, impl):
    B, Tq, Tk, H, Dv = CASES[case]
    torch.manual_seed(0)
    args = [torch.randn(*s, device=DEVICE, requires_grad=True) for s in ((B, Tq, H), (B, Tk, H), (H,), (B, Tk, Dv))]

    def run():
        if impl == "naive":
            context = naive(*args)[0]
        else:
            with backends.use(impl):
                context = ops.additive_attention(*args)
        context.sum().backward()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = case
    benchmark(run)
