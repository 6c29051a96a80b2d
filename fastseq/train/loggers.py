"""Where the Trainer's rows go: log.jsonl (one JSON object a row), log.csv (one column a key, the header
grown as new keys come: evaluation rows add theirs) and TensorBoard event files (torch.utils.tensorboard,
the optional `tensorboard` package), each under the run's folder. A resumed run rewrites its files from the
checkpoint's history, so no row appears twice after an interrupted run.

Callbacks: any object with some of on_step(trainer, row), on_eval(trainer, metrics) and
on_checkpoint(trainer, path), given to Trainer(callbacks=[...]).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
from typing import Iterable

from .. import atomic

LOGGERS = ("jsonl", "csv", "tensorboard")
CALLBACK_HOOKS = ("on_step", "on_eval", "on_checkpoint")


def check_names(owner: str, names) -> list[str]:
    """A config's logger names, checked: a list drawn from LOGGERS, each once; tensorboard needs its package."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{owner}: loggers must be a list of names among {list(LOGGERS)}, got {names!r}")
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"{owner}: unknown logger {unknown[0]!r}; loggers are {list(LOGGERS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: loggers names one twice: {list(names)}")
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(f"{owner}: the tensorboard logger needs the tensorboard package, which is not installed: "
                         f"pip install 'fastseq[tensorboard]' (or pip install tensorboard)")
    return list(names)


def check_callbacks(callbacks) -> list:
    """Trainer callbacks, checked: each has at least one hook, and every hook it has is callable."""
    callbacks = list(callbacks or ())
    for i, cb in enumerate(callbacks):
        hooks = [h for h in CALLBACK_HOOKS if hasattr(cb, h)]
        if not hooks:
            raise TypeError(f"Trainer: callbacks[{i}] ({type(cb).__name__}) has none of {list(CALLBACK_HOOKS)}")
        for h in hooks:
            if not callable(getattr(cb, h)):
                raise TypeError(f"Trainer: callbacks[{i}].{h} is not callable")
    return callbacks


class JsonlLogger:
    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, "log.jsonl")

    def restart(self, history: list[dict]) -> None:
        atomic.write(self.path, lambda f: f.writelines(json.dumps(row) + "\n" for row in history), mode="w")

    def log(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        pass


class CsvLogger:
    """log.csv: rewritten whole when a row brings a key the header lacks (a run's first evaluation),
    appended to otherwise."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, "log.csv")
        self.rows: list[dict] = []
        self.columns: list[str] = []

    def restart(self, history: list[dict]) -> None:
        self.rows, self.columns = [], []
        for row in history:
            self._add_columns(row)
            self.rows.append(row)
        self._rewrite()

    def _add_columns(self, row: dict) -> bool:
        new = [k for k in row if k not in self.columns]
        self.columns += new
        return bool(new)

    def _rewrite(self) -> None:
        def write(f):
            w = csv.DictWriter(f, self.columns)
            w.writeheader()
            w.writerows(self.rows)
        atomic.write(self.path, write, mode="w")

    def log(self, row: dict) -> None:
        self.rows.append(row)
        if self._add_columns(row) or not os.path.exists(self.path):
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Event files under the run's folder (`tensorboard --logdir RUN`): each number of a row a scalar at its
    step; a resumed run purges what was written after its checkpoint's step."""

    def __init__(self, folder: str) -> None:
        self.folder, self.writer = folder, None

    def restart(self, history: list[dict]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is not None:
            self.writer.close()
        step = max((r.get("step", 0) for r in history), default=0)
        self.writer = SummaryWriter(self.folder, purge_step=step + 1 if history else None)

    def log(self, row: dict) -> None:
        if self.writer is None:
            self.restart([])
        step = row.get("step", 0)
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


_KINDS = {"jsonl": JsonlLogger, "csv": CsvLogger, "tensorboard": TensorBoardLogger}


def make(names: Iterable[str], folder: str) -> list:
    return [_KINDS[n](folder) for n in names]
