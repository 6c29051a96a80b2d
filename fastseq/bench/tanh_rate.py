"""The device's tanh rate, measured (the ceiling of additive attention's scores): on a GPU every thread of
a Triton kernel chains tanh on independent registers; on a CPU torch.tanh over a cache-resident tensor."""
import functools

import torch

from . import timing

BLOCK, ITERS = 1024, 512


@functools.lru_cache(maxsize=None)
def _chain_kernel():
    """The Triton kernel (Triton imported only on a GPU: it is an optional dependency)."""
    import triton
    import triton.language as tl

    from ..triton.activations import tanh

    @triton.jit
    def chain(x_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr, FAST: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs)
        for _ in range(ITERS):
            x = tanh(x * 1.5 + 0.25, FAST)
        tl.store(x_ptr + offs, x)
    return chain


def tanh_chain(device: torch.device, approx: bool) -> float:
    """tanh/s over enough programs to fill every SM many times."""
    n = BLOCK * torch.cuda.get_device_properties(device).multi_processor_count * 64
    x = torch.randn(n, device=device)
    chain = _chain_kernel()
    t = timing.measure(lambda: chain[(n // BLOCK,)](x, ITERS=ITERS, BLOCK=BLOCK, FAST=approx, num_warps=4),
                       device, min_seconds=0.3)["median_ms"]
    return n * ITERS / (t * 1e-3)


def tanh_rate(device: torch.device, approx: bool = True) -> float:
    """Measured tanh/s of the device's compute-bound tanh: on a GPU a Triton kernel whose threads chain
    `tanh.approx.f32` (the special-function unit's rate; approx=False: the exact form the float32
    kernels use) on registers; on a CPU torch.tanh over a cache-resident float32 tensor."""
    if device.type != "cuda":
        x = torch.randn(1 << 16)
        t = timing.measure(lambda: torch.tanh(x), device, min_seconds=0.2)["median_ms"]
        return x.numel() / (t * 1e-3)
    return tanh_chain(device, approx)
