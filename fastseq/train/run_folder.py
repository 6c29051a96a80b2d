"""A run folder owned by one process at a time, and resumed only with the config that started it.

The lock is an advisory `flock` on <folder>/.lock, which the kernel drops when its process ends, so a
killed run never leaves the folder stuck. A run is checked in full before anything in its folder is
written (`check`: the config, compared as parsed values, against the one its checkpoint was trained
under; `check_tokenizer`: the tokenizer the data gives against the checkpoint's), and only when training
starts (`begin`) is the config recorded. Nothing is deleted: starting afresh, or over a run that never
reached its first checkpoint, moves the earlier run's files into a dated folder inside this one.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
from typing import Iterable, Optional

from .. import atomic

# Keys that change nothing a run computes: they may differ when a run resumes.
HARMLESS = ("train.progress", "train.log_every", "train.loggers", "out_dir")
# What a run writes into its folder; --fresh moves them aside (PREVIOUS).
PREVIOUS = "previous-"
RUN_FILES = ("checkpoint.pt", "log.jsonl", "log.csv", "model.pt", "tokenizer.json", "config.json", "curves.png")
EVENTS = "events.out.tfevents."  # TensorBoard's files


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder."""


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _number(value) -> Optional[float]:
    """value as a number when it is one, or a string that reads as one (YAML 1.1 reads 1e-3 as a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def same_value(a, b) -> bool:
    """Equal as parsed values: 1e-3, "1e-3" and 0.001 are one setting; 1 and 1.0 too; True is not 1."""
    x, y = _number(a), _number(b)
    if x is not None and y is not None and not (isinstance(a, str) and isinstance(b, str)):
        return x == y
    return a == b


def changed_keys(old: dict, new: dict) -> dict:
    """{dotted key: (old value, new value)} for every setting that differs as a value (missing: None)."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if not same_value(a.get(k), b.get(k))}


class RunFolder:
    """`with RunFolder(path) as folder:` holds the folder's lock; `folder.start(config, fresh, allow)`
    checks the config against the one the folder's run started with and records it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = None

    def __enter__(self) -> "RunFolder":
        os.makedirs(self.path, exist_ok=True)
        lock = open(os.path.join(self.path, ".lock"), "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise RunFolderBusy(f"run folder {self.path} is in use by another fastseq process (pid {holder}); wait "
                                f"for it to end, or give this run another folder (--out)") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
        self._lock = None

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def resumable(self) -> bool:
        """Whether the folder holds a checkpoint a run would resume from."""
        return os.path.exists(self._file("checkpoint.pt"))

    def _resumed(self, name: str, what: str, fresh: bool):
        """The JSON of `name` a resumed run is checked against; None when nothing is resumed (fresh, no
        checkpoint) or the folder has no such file."""
        path = self._file(name)
        if fresh or not self.resumable() or not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable {what} ({e}); pass --fresh to start the run afresh (the "
                             f"earlier run's files are kept in a {PREVIOUS}* folder)") from None

    def check(self, config: dict, fresh: bool = False, allow: Iterable[str] = ()) -> None:
        """Refuse to resume the folder's checkpoint under a config that differs from the one it was trained
        under (keys outside HARMLESS and `allow`). Writes nothing. A folder without a checkpoint binds no
        config: its files are moved aside when the run begins."""
        config = json.loads(json.dumps(config))
        saved = self._resumed("config.json", "run config", fresh)
        if saved is None:
            return
        allowed = set(HARMLESS) | set(allow)
        differ = {k: v for k, v in changed_keys(saved, config).items() if k not in allowed}
        if differ:
            listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differ.items())
            raise ValueError(f"run folder {self.path} holds a run with another config ({listed}); pass --fresh "
                             f"to start it afresh, --allow-change KEY for a key that may change, or another "
                             f"--out")

    def check_tokenizer(self, state: dict, fresh: bool = False) -> None:
        """Refuse to resume the checkpoint with a tokenizer other than the one it was trained with (the same
        data path whose text changed gives other ids to the same vocabulary size). `state`: the saved form
        (Tokenizer.state()). Writes nothing."""
        path = self._file("tokenizer.json")
        saved = self._resumed("tokenizer.json", "tokenizer", fresh)
        if saved is None:
            return
        saved.pop("sha256", None)
        if saved != json.loads(json.dumps(state)):
            raise ValueError(f"run folder {self.path}: the tokenizer this config's data gives ({_describe(state)}) "
                             f"is not the checkpoint's ({path}: {_describe(saved)}): the data changed since the "
                             f"run started; resuming would give its ids other meanings. Pass --fresh to start "
                             f"afresh, or another --out")

    def begin(self, config: dict, fresh: bool = False) -> Optional[str]:
        """Training starts: the earlier run's files moved aside when starting afresh (or when they hold no
        checkpoint to resume), then `config` recorded. Returns the folder they went to, if any."""
        moved = None
        present = [n for n in RUN_FILES if os.path.exists(self._file(n))]
        if os.path.isdir(self._file("")):
            present += sorted(n for n in os.listdir(self._file("")) if n.startswith(EVENTS))
        if present and (fresh or not self.resumable()):
            moved = self._aside(present)
        atomic.write(self._file("config.json"), lambda f: json.dump(json.loads(json.dumps(config)), f, indent=1),
                     mode="w")
        return moved

    def _aside(self, names: list[str]) -> str:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        target, n = self._file(PREVIOUS + stamp), 1
        while os.path.exists(target):
            n += 1
            target = self._file(f"{PREVIOUS}{stamp}-{n}")
        os.makedirs(target)
        for name in names:
            os.replace(self._file(name), os.path.join(target, name))
        return target

    def start(self, config: dict, fresh: bool = False, allow: Iterable[str] = ()) -> Optional[str]:
        """check() then begin(): for a caller with nothing to check in between."""
        self.check(config, fresh, allow)
        return self.begin(config, fresh)


def _describe(state: dict) -> str:
    kind = state.get("kind", "?")
    size = len(state.get("chars") or state.get("words") or [])
    return f"{kind}, {size} entries" if size else str(kind)
