"""Helpers shared by the tests: backends present per device, tolerances, errors, host reads."""
import contextlib

import pytest
import torch
from torch.overrides import TorchFunctionMode

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
    params = [pytest.param("cpu", b, id=f"cpu-{b}") for b in backends.listed("cpu")
              if b in serves["cpu"] and backends.availability(b, "cpu")[0]]
    params += [pytest.param("cuda", b, id=f"cuda-{b}", marks=pytest.mark.cuda)
               for b in backends.listed("cuda") if b in serves["cuda"]]
    return params


def cpu_backends(family: str = "lstm", needs=None, autograd: bool = True) -> list[str]:
    """The backends of `backend_params` present on the CPU, by name."""
    return [p.values[1] for p in backend_params(family, needs, autograd) if p.values[0] == "cpu"]


def interpreted_wide(device, backend, dtype, wide: bool) -> None:
    """Skips a case over many tiles on Triton's interpreter in any dtype but float32: the interpreter runs
    each program in Python, and the dtypes' loads and casts are the same at one tile (run there in every
    dtype) as at many; the cuda run covers every dtype at every size."""
    if device == "cpu" and backend == "triton" and wide and dtype != torch.float32:
        pytest.skip("Triton's interpreter: cases over many tiles run in float32 (other dtypes at one tile; "
                    "every dtype on the cuda run)")


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
              torch.Tensor.__index__, torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.numpy,
              torch.Tensor.cpu}


class HostReads(TorchFunctionMode):
    """Counts the host reads of tensor values made inside the block: `with HostReads() as reads: ...; reads.n`."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += func in HOST_READS
        return func(*args, **(kwargs or {}))


# The calls that build a tensor from host data (a copy to the device when a device is named)
HOST_DATA = {torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor}


def _tensors(tree):
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _caller() -> tuple[str, str]:
    """(file:line, function) of the innermost frame in fastseq's package that led here (else the innermost
    outside torch)."""
    import traceback

    frames = traceback.extract_stack()[:-2]
    ours = [f for f in frames if "/fastseq/" in f.filename and "/tests/" not in f.filename]
    f = (ours or [f for f in frames if "/torch/" not in f.filename] or frames)[-1]
    return f"{f.filename.split('/fastseq/')[-1]}:{f.lineno}", f.name


class DeviceResidency(TorchFunctionMode):
    """Runs a block as if the tensors given to `resident(...)` lived on a GPU, and records in `crossings`
    each operation that would then cross between host and device: a host read of a value of such a tensor
    (item, int, bool, tolist, ...: a synchronization on a GPU), a tensor built from host data on a named
    device, a copy of a host tensor to a device. Residency spreads: to what is computed from a resident
    tensor and to what a factory makes with a `device=` that is a torch.device (as `device=x.device` is;
    the string "cpu" names the host). On this CPU every device is the host, so this is how a test here
    sees what `torch.cuda.set_sync_debug_mode("error")` sees on a GPU. A non-blocking copy of host data
    (the caller's, such as lengths given on the host) is no crossing: it waits for nothing. Triton's interpreter,
    which runs the kernels on the host, is not counted (a GPU launch reads nothing back)."""

    def __init__(self, allowed: dict[str, str] | None = None):
        super().__init__()
        self.allowed = allowed or {}  # function name -> why its reads are no crossing (a CPU-only path)
        self.crossings: list[str] = []
        self._resident: dict[int, torch.Tensor] = {}  # by id; the tensors are kept, so no id is reused
        self._paused = 0

    def resident(self, *trees):
        for t in _tensors(trees):
            self._resident[id(t)] = t
        return trees[0] if len(trees) == 1 else trees

    def is_resident(self, t) -> bool:
        return id(t) in self._resident

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._paused:
            return func(*args, **kwargs)
        inputs = _tensors((args, kwargs))
        from_device = any(self.is_resident(t) for t in inputs)
        name = getattr(func, "__qualname__", getattr(func, "__name__", str(func)))
        before = len(self.crossings)
        moved = False  # a copy to the device: its result is resident
        if func in HOST_READS and from_device:
            self.crossings.append(f"host read: {name}")
        elif func in HOST_DATA and isinstance(kwargs.get("device"), torch.device) and not inputs:
            self.crossings.append(f"host data to the device: {name}")
        elif func is torch.Tensor.copy_ and len(args) > 1:
            dst, src = args[0], args[1]
            if self.is_resident(dst) != self.is_resident(src):
                self.crossings.append("copy_ from a host tensor into a device tensor" if self.is_resident(dst)
                                      else "copy_ from a device tensor to the host")
        elif func in (torch.Tensor.to, torch.Tensor.cuda):
            target = kwargs.get("device", args[1] if len(args) > 1 else None)
            moved = isinstance(target, torch.device) or func is torch.Tensor.cuda
            if moved and not from_device and not kwargs.get("non_blocking", False):
                self.crossings.append(f"blocking copy of a host tensor to the device: {name}")
            elif isinstance(target, str) and target.startswith("cpu") and from_device:
                self.crossings.append(f"host read: {name}('cpu')")
        if len(self.crossings) > before:
            where, function = _caller()
            if function in self.allowed:
                del self.crossings[before:]
            else:
                self.crossings[-1] += f" at {where} ({function})"
        out = func(*args, **kwargs)
        # (padded, lengths): torch keeps lengths on the host
        if getattr(func, "__name__", "") == "_pad_packed_sequence":
            self.resident(out[0])
            return out
        if from_device or moved or isinstance(kwargs.get("device"), torch.device):
            self.resident(out)
        return out


@contextlib.contextmanager
def interpreter_uncounted(guard: DeviceResidency):
    """Inside `guard`, Triton's interpreter's own host copies are not crossings (on a GPU the launch runs
    there)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        yield
        return
    run = InterpretedFunction.run

    def paused(self, *args, **kwargs):
        guard._paused += 1
        try:
            return run(self, *args, **kwargs)
        finally:
            guard._paused -= 1

    InterpretedFunction.run = paused
    try:
        yield
    finally:
        InterpretedFunction.run = run
