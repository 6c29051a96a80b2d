"""Which backend serves an op call: what this machine has, the default per device, the user's choice.

Backends, by the code that runs: the table KINDS below (what `fastseq info`, the tests, the benchmarks and
docs/backends.md read).

The user chooses, most specific first:
    1. `with fastseq.backends.use("triton"):` or `use(cuda="triton", cpu="reference")`;
    2. the environment variable FASTSEQ_BACKEND, e.g. "triton" or "cuda=triton,cpu=reference";
    3. otherwise, where an op offers its call for timing, the fastest backend measured for the call's
       shape bucket (fastseq.ops.tuning; FASTSEQ_AUTOTUNE=0 turns it off);
    4. otherwise the first available of the op family's own order for the device (`Family.order`, where
       measurements set one) or DEFAULT_ORDER[device], that implements the op.
A choice that cannot serve the call (not built, no device, not implemented for that op) raises
BackendUnavailableError naming it and saying why; nothing falls back silently.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
from dataclasses import dataclass
from typing import Iterator, Optional


@dataclass(frozen=True)
class Kind:
    """A kind of backend: its name, the code that runs, the tensors it serves and the device types it runs
    on (Triton runs CPU tensors on its interpreter only), and whether it is a fused kernel (benchmarked
    against the baselines) rather than the reference."""

    name: str
    code: str
    serves: str
    devices: tuple[str, ...]
    fused: bool = True


# In the order the tests and benchmarks list them.
KINDS = (
    Kind("cuda", "CUDA C++ kernels in fastseq._C (csrc/ launchers, kernels/ device code)",
         "CUDA tensors, when fastseq._C was built with CUDA", ("cuda",)),
    Kind("cpu", "C++ CPU kernels in fastseq._C (csrc/)", "CPU tensors", ("cpu",)),
    Kind("triton", "Triton kernels (fastseq/ops/<op>/triton*.py)",
         "CUDA tensors; CPU tensors under TRITON_INTERPRET=1 (a tool for testing kernels)", ("cuda", "cpu")),
    Kind("torch", "torch's own kernels (fastseq/ops/<op>/torch_backend.py): the fused LSTM layer (oneDNN/ATen, "
                  "cuDNN), scaled_dot_product_attention; trained through torch's autograd where the family lists it",
         "CPU and CUDA tensors", ("cpu", "cuda")),
    Kind("reference", "pure PyTorch (fastseq/ops/<op>/reference.py), the test oracle", "any tensor", ("cpu", "cuda"),
         fused=False),
)
BACKENDS = tuple(k.name for k in KINDS)
DEVICE_TYPES = ("cpu", "cuda")
# On CPU tensors Triton runs only on its interpreter: never the default there. torch's own kernels come
# first where they serve the call: the measurements behind this order are in docs/benchmarks.md.
DEFAULT_ORDER = {"cuda": ("torch", "cuda", "triton", "reference"), "cpu": ("torch", "cpu", "reference")}


def kind(name: str) -> Kind:
    return next(k for k in KINDS if k.name == name)


def listed(device_type: str, fused_only: bool = False) -> tuple[str, ...]:
    """The backends that can run on `device_type`, in KINDS' order (fused_only: not the reference)."""
    return tuple(k.name for k in KINDS if device_type in k.devices and (k.fused or not fused_only))


ENV_VAR = "FASTSEQ_BACKEND"

_override: contextvars.ContextVar[Optional[dict[str, str]]] = contextvars.ContextVar(
    "fastseq_backend_override", default=None
)


class BackendUnavailableError(RuntimeError):
    """The backend asked for cannot serve this call."""


@dataclass(frozen=True)
class Choice:
    backend: str
    reason: str


@functools.lru_cache(maxsize=None)
def _load_extension():
    try:
        return importlib.import_module("fastseq._C"), None
    except ImportError as e:
        if os.environ.get("FASTSEQ_BUILD_EXT", "1") == "0":
            return None, "not built (FASTSEQ_BUILD_EXT=0)"
        return None, f"fastseq._C failed to import: {e}"


def extension():
    """The compiled extension fastseq._C, or None; `extension_error()` then says why."""
    return _load_extension()[0]


def extension_error() -> Optional[str]:
    return _load_extension()[1]


def extension_has_cuda() -> bool:
    ext = extension()
    return bool(ext is not None and ext.build_info()["with_cuda"])


@functools.lru_cache(maxsize=None)
def triton_version() -> Optional[str]:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


# os.environ's own store on POSIX (bytes keys; every write through os.environ updates it): a read there costs
# a dict lookup where os.environ.get encodes and decodes, and every op call reads two variables.
_ENVIRON = os.environ._data if os.name == "posix" and isinstance(getattr(os.environ, "_data", None), dict) else None


def getenv(name: str, default: str = "") -> str:
    """os.environ.get(name, default), at a dict lookup's cost where the platform allows."""
    if _ENVIRON is None:
        return os.environ.get(name, default)
    value = _ENVIRON.get(_KEYS.get(name) or _KEYS.setdefault(name, os.fsencode(name)))
    return default if value is None else os.fsdecode(value)


_KEYS: dict[str, bytes] = {}


def triton_interpret() -> bool:
    return getenv("TRITON_INTERPRET", "0") not in ("", "0")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def availability(backend: str, device_type: str) -> tuple[bool, str]:
    """Whether `backend` can run on tensors of `device_type` on this machine, and why (not)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device_type not in DEVICE_TYPES:
        return backend == "reference", f"device type {device_type!r} is served by the reference only"
    if backend == "reference":
        return True, "pure PyTorch, runs anywhere"
    if backend == "torch":
        if device_type == "cuda" and not cuda_available():
            return False, "no CUDA device"
        return True, "torch's own kernels (its fused LSTM: oneDNN/ATen or cuDNN; scaled_dot_product_attention)"
    if backend == "triton":
        if triton_version() is None:
            return False, "Triton is not installed"
        if device_type == "cuda":
            return (True, "Triton kernels") if cuda_available() else (False, "no CUDA device")
        if triton_interpret():
            return True, "Triton kernels under the interpreter (TRITON_INTERPRET=1)"
        return False, "Triton runs CPU tensors only under TRITON_INTERPRET=1"
    if backend != device_type:
        return False, f"the {backend!r} backend serves {backend.upper()} tensors, not {device_type.upper()} ones"
    if extension() is None:
        return False, f"fastseq._C is unavailable: {extension_error()}"
    if backend == "cuda":
        if not extension_has_cuda():
            return False, "fastseq._C was built without CUDA (CPU torch or no nvcc at install)"
        if not cuda_available():
            return False, "no CUDA device"
        return True, "CUDA C++ kernels in fastseq._C"
    return True, "C++ CPU kernels in fastseq._C"


def _parse(spec: str, source: str) -> dict[str, str]:
    """'triton' -> every device; 'cuda=triton,cpu=reference' -> per device."""
    choice: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        device, sep, name = part.rpartition("=")
        devices = (device.strip(),) if sep else DEVICE_TYPES
        name = name.strip()
        if name not in BACKENDS:
            raise ValueError(f"{source}: unknown backend {name!r}; expected one of {BACKENDS}")
        for d in devices:
            if d not in DEVICE_TYPES:
                raise ValueError(f"{source}: unknown device type {d!r}; expected one of {DEVICE_TYPES}")
            choice[d] = name
    return choice


@contextlib.contextmanager
def use(backend: Optional[str] = None, **per_device: str) -> Iterator[None]:
    """Run the ops called inside the block on `backend` (all devices) or on per-device backends.

    >>> with fastseq.backends.use("reference"): ...
    >>> with fastseq.backends.use(cuda="triton", cpu="cpu"): ...
    """
    choice = dict(_override.get() or {})
    if backend is not None:
        choice.update(_parse(backend, "backends.use"))
    for device, name in per_device.items():
        choice.update(_parse(f"{device}={name}", "backends.use"))
    token = _override.set(choice)
    try:
        yield
    finally:
        _override.reset(token)


def requested(device_type: str) -> Optional[tuple[str, str]]:
    """The user's explicit choice for `device_type` and where it came from, or None."""
    ctx = _override.get()
    if ctx and device_type in ctx:
        return ctx[device_type], "chosen with fastseq.backends.use"
    spec = getenv(ENV_VAR)
    if spec:
        env = _parse(spec, ENV_VAR)
        if device_type in env:
            return env[device_type], f"chosen by {ENV_VAR}={spec}"
    return None


def candidates(device_type: str, implemented: tuple[str, ...],
               order: Optional[tuple[str, ...]] = None) -> tuple[str, ...]:
    """The backends of `order` (default DEFAULT_ORDER[device_type]) that implement the op and run here."""
    return tuple(name for name in order or DEFAULT_ORDER.get(device_type, ("reference",))
                 if name in implemented and availability(name, device_type)[0])


def choose(op: str, device_type: str, implemented: tuple[str, ...], order: Optional[tuple[str, ...]] = None) -> Choice:
    """The backend that serves `op` on `device_type`, given the backends that implement it; without the
    user's choice, the first available of `order` (default DEFAULT_ORDER[device_type])."""
    asked = requested(device_type)
    if asked is not None:
        name, source = asked
        if name not in implemented:
            raise BackendUnavailableError(
                f"backend {name!r} ({source}) does not implement {op}; it has {implemented}"
            )
        ok, why = availability(name, device_type)
        if not ok:
            raise BackendUnavailableError(
                f"backend {name!r} ({source}) cannot run {op} on {device_type} tensors: {why}"
            )
        return Choice(name, source)
    skipped = []
    for name in order or DEFAULT_ORDER.get(device_type, ("reference",)):
        if name not in implemented:
            continue
        ok, why = availability(name, device_type)
        if ok:
            reason = f"default for {device_type}: {why}"
            return Choice(name, reason + (f" ({'; '.join(skipped)})" if skipped else ""))
        skipped.append(f"{name}: {why}")
    raise BackendUnavailableError(f"no backend can run {op} on {device_type} tensors: {'; '.join(skipped)}")
