"""A run folder owned by one process at a time, and resumed only with the config that started it.

The lock is an advisory `flock` on <folder>/.lock, which the kernel drops when its process ends, so a
killed run never leaves the folder stuck. The config a run starts with is written to config.json before
any training; a later run in the same folder compares its own with it and refuses to resume under a
different one, naming the keys that differ, unless asked to start fresh or allowed to change those keys.
"""
from __future__ import annotations

import fcntl
import json
import os
from typing import Iterable

from .. import atomic

# Keys that change nothing a run computes: they may differ when a run resumes.
HARMLESS = ("train.progress", "train.log_every", "out_dir")
# What a run writes into its folder; --fresh removes them.
RUN_FILES = ("checkpoint.pt", "log.jsonl", "model.pt", "tokenizer.json", "config.json", "curves.png")


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


def changed_keys(old: dict, new: dict) -> dict:
    """{dotted key: (old value, new value)} for every setting that differs (missing: None)."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


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

    def start(self, config: dict, fresh: bool = False, allow: Iterable[str] = ()) -> None:
        """Refuse a config that differs from the folder's (keys outside HARMLESS and `allow`); with
        fresh, remove the earlier run's files instead. Then record `config` as the folder's."""
        config = json.loads(json.dumps(config))
        saved_path = os.path.join(self.path, "config.json")
        if fresh:
            for name in RUN_FILES:
                if os.path.exists(os.path.join(self.path, name)):
                    os.unlink(os.path.join(self.path, name))
        elif os.path.exists(saved_path):
            try:
                with open(saved_path, encoding="utf-8") as f:
                    saved = json.load(f)
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"{saved_path}: not a readable run config ({e}); pass --fresh to start the run "
                                 f"afresh") from None
            allowed = set(HARMLESS) | set(allow)
            differ = {k: v for k, v in changed_keys(saved, config).items() if k not in allowed}
            if differ:
                listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differ.items())
                raise ValueError(f"run folder {self.path} holds a run with another config ({listed}); pass --fresh "
                                 f"to start it afresh, --allow-change KEY for a key that may change, or another "
                                 f"--out")
        atomic.write(saved_path, lambda f: json.dump(config, f, indent=1), mode="w")
