"""Helpers shared by the tests: backends present per device, tolerances, errors, host reads."""
import contextlib

from torch.overrides import TorchFunctionMode

import pytest
import torch

from fastseq import backends, ops  # noqa: F401  (importing ops registers the op families)
from fastseq.ops.registry import declared

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Norm-relative error allowed against a float64 oracle: fp32 math; fp16/bf16 rounding of inputs,
# GEMM outputs and gradients carried through time.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


# Below this root-mean-square size a reference counts as near zero: the error is then measured against
# this floor (an absolute tolerance, as assert_close's atol), not against the reference's own norm.
# FLOOR × TOL is a few units of rounding per O(1) term in every dtype (float64: 1e-15, about 4.5 eps).
FLOOR = {torch.float64: 1e-5, torch.float32: 1e-2, torch.float16: 0.3, torch.bfloat16: 0.3}


def rel_err(out: torch.Tensor, ref: torch.Tensor, terms: int = 1) -> float:
    """||out - ref|| / max(||ref||, FLOOR * sqrt(numel * terms)), in float64. `terms`: how many O(1)
    products each element sums, for reductions whose result can cancel far below its terms."""
    floor = FLOOR.get(out.dtype, 1e-6) * max(out.numel() * terms, 1) ** 0.5
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), "non-finite values"
    return ((out - ref).norm() / max(ref.norm().item(), floor)).item()


def assert_proportion(hits, n, p: float):
    """hits of n Bernoulli(p) draws: the share is within 6 binomial standard errors of p, so a correct
    sampler fails about once in 10^9 runs."""
    hits, n = float(hits), float(n)
    assert abs(hits / n - p) < 6 * (p * (1 - p) / n) ** 0.5, f"share {hits / n:.4f} of {n:.0f} draws, expected {p:.4f}"


def backend_params(family: str = "lstm", needs=None, autograd: bool = True):
    """(device, backend) pairs for an op family: every backend implementing every function of `needs`
    (default: all the family's functions, forward and backward) that is present on the CPU; every GPU
    backend implementing them, marked `cuda`. With `autograd`, a backward torch's autograd derives counts
    where it is verified (through the public ops); without, only the custom op's own (a test of the op)."""
    declaration = declared()[family]
    needs = tuple(declaration.functions) if needs is None else needs
    serves = {device: [b for b in declaration.backends if declaration.provides(b, needs, device if autograd else None)]
              for device in ("cpu", "cuda")}
    params = [pytest.param("cpu", b, id=f"cpu-{b}") for b in backends.BACKENDS
              if b in serves["cpu"] and backends.availability(b, "cpu")[0]]
    params += [pytest.param("cuda", b, id=f"cuda-{b}", marks=pytest.mark.cuda)
               for b in ("cuda", "triton", "torch", "reference") if b in serves["cuda"]]
    return params


def cpu_backends(family: str = "lstm", needs=None, autograd: bool = True) -> list[str]:
    """The backends of `backend_params` present on the CPU, by name."""
    return [p.values[1] for p in backend_params(family, needs, autograd) if p.values[0] == "cpu"]


KERNEL_RUNS = [pytest.param("cpu", "triton", id="triton-interpreter"),
               pytest.param("cuda", None, id="cuda", marks=pytest.mark.cuda)]


def kernel_run(device, backend):
    """The context to run a model's ops in: the Triton kernels on CPU tensors (under the interpreter,
    where this machine has it) or the default (fastest) backends on the GPU."""
    if backend is not None and not backends.availability(backend, device)[0]:
        pytest.skip(f"{backend} on {device}: {backends.availability(backend, device)[1]}")
    return backends.use(backend) if backend else contextlib.nullcontext()


# The tensor methods that bring values to the host: on a GPU each waits for the device (a synchronization)
HOST_READS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
              torch.Tensor.__index__, torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.numpy}


class HostReads(TorchFunctionMode):
    """Counts the host reads of tensor values made inside the block: `with HostReads() as reads: ...; reads.n`."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += func in HOST_READS
        return func(*args, **(kwargs or {}))
