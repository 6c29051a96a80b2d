"""The special-function unit's tanh rate, measured: every thread chains tanh on independent registers."""
import torch
import triton
import triton.language as tl

from fastseq.triton.additive_attention import _tanh

BLOCK, ITERS = 1024, 512


@triton.jit
def _chain(x_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr, FAST: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    for _ in range(ITERS):
        x = _tanh(x * 1.5 + 0.25, FAST)
    tl.store(x_ptr + offs, x)


def tanh_chain(device: torch.device, approx: bool) -> float:
    """tanh/s over enough programs to fill every SM many times."""
    import timing

    n = BLOCK * torch.cuda.get_device_properties(device).multi_processor_count * 64
    x = torch.randn(n, device=device)
    t = timing.measure(lambda: _chain[(n // BLOCK,)](x, ITERS=ITERS, BLOCK=BLOCK, FAST=approx, num_warps=4),
                       device, min_seconds=0.3)["median_ms"]
    return n * ITERS / (t * 1e-3)
