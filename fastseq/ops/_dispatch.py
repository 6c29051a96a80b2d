"""The table of backends that implement each op, and the lookup of the one that serves a call."""
from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from .. import backends

# op family -> backend name -> zero-argument loader of the object whose attributes are the op's functions
_TABLES: dict[str, dict[str, Callable[[], Any]]] = {}
# op family -> the functions every one of its backends provides
_FUNCTIONS: dict[str, tuple[str, ...]] = {}


def _extension_ops() -> Any:
    if backends.extension() is None:  # importing fastseq._C registers torch.ops.fastseq_ext
        raise backends.BackendUnavailableError(f"fastseq._C is unavailable: {backends.extension_error()}")
    return torch.ops.fastseq_ext


def register(family: str, functions: tuple[str, ...], reference: str, triton: str | None,
             extension: tuple[str, ...] = ()) -> None:
    """Declare an op family: the functions each of its backends provides, module paths for the reference
    and Triton, and the backends of fastseq._C that implement it ("cpu", "cuda")."""
    table: dict[str, Callable[[], Any]] = {"reference": lambda: importlib.import_module(reference)}
    if triton is not None:
        table["triton"] = lambda: importlib.import_module(triton)
    for name in extension:
        table[name] = _extension_ops
    _TABLES[family] = table
    _FUNCTIONS[family] = functions


def families() -> dict[str, tuple[str, ...]]:
    """Every registered op family and the backends implementing it."""
    return {family: tuple(table) for family, table in _TABLES.items()}


def functions(family: str) -> tuple[str, ...]:
    """The functions every backend of `family` provides."""
    return _FUNCTIONS[family]


def implementation(family: str, function: str, device_type: str) -> Callable:
    """The function `function` of the backend chosen for `family` on `device_type`."""
    table = _TABLES[family]
    choice = backends.choose(family, device_type, tuple(table))
    return getattr(table[choice.backend](), function)
