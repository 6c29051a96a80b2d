"""Files written so that a killed process never leaves a truncated one: write a temporary file in the same
folder, flush it to disk, then rename it over the target (atomic on POSIX)."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Union

import torch


def write(path: Union[str, os.PathLike], write_to: Callable, mode: str = "wb") -> None:
    """Call write_to(file) on a temporary file beside `path`, then rename it to `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> the mode open() would give, as for every other file
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write_to(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def torch_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    """torch.save, atomically."""
    write(path, lambda f: torch.save(obj, f))
