"""Activation functions for every Triton kernel of fastseq: one tanh (exact, or the special-function
unit's approximation on a GPU), built from tl.sigmoid where Triton has no tanh of its own."""
import triton
import triton.language as tl


@triton.jit
def tanh(x, FAST: tl.constexpr):
    """tanh(x). FAST: the hardware's `tanh.approx.f32` (float32 only, about 2^-11 relative error), for
    kernels whose rate the tanh unit bounds; otherwise 2σ(2x) − 1, exact to the input's precision."""
    if FAST:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 2 * tl.sigmoid(2 * x) - 1
