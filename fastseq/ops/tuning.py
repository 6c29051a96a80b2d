"""The backend of an op chosen by measurement, as torch.backends.cudnn.benchmark chooses a convolution's
algorithm: the first call in a new shape bucket times each backend that can serve it, on that call's own
inputs (the forward, and its backward when a gradient is needed), and keeps the fastest for the bucket.

A bucket is the op family, the device's name (on a CPU, with torch's intra-op thread count), the dtype,
whether a gradient is needed, and the call's sizes rounded up to powers of two (and its flags). Choices
live in memory and in a JSON file, by default ~/.cache/fastseq/backend-choices.json (FASTSEQ_CACHE names
another), kept apart per torch, Triton and fastseq version and written atomically; a file that is corrupt,
from other versions or unwritable gives one warning and the choices stay in memory. FASTSEQ_AUTOTUNE=0
turns measurement off (the static order decides); a backend the user forces (fastseq.backends.use,
FASTSEQ_BACKEND) is never second-guessed; nothing is timed while torch.compile traces or a CUDA graph
captures (the cached or static choice serves).
On the CPU a kept choice is probed now and then (about 1% of the calls' time) and measured again when the
machine's load has changed what is fastest.
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import torch

from .. import atomic, backends

ENV_VAR = "FASTSEQ_AUTOTUNE"
CACHE_ENV_VAR = "FASTSEQ_CACHE"
# Timed runs per backend after one warm-up run, which never counts (a first call pays one-time costs:
# library initialization, compiling and autotuning kernels): enough to fill TARGET seconds, at least
# REPEATS and at most MOST, or one when the warm-up took over SLOW seconds. The backends take turns, so a
# machine's drift falls on all of them alike, and short calls get enough runs that noise does not decide.
REPEATS, MOST, TARGET, SLOW = 3, 25, 0.005, 0.05
MEAN_RUNS = 10  # the fewest timed runs a choice by mean takes, slow or not
# A kept choice on the CPU is checked now and then, as the machine's load changes: one timed run of each
# candidate in turns, at most once per PROBE_GAP times the candidates' recorded time (and PROBE_MIN_S), so
# checking costs about 1/PROBE_GAP of the calls' time. Over the last WINDOW probes, the kept backend's mean
# SLOWER times its record, or another candidate's mean below BEATEN times its, and the bucket is measured
# again: means, so that a load which stalls some calls and not others (a busy core) is counted at its cost.
PROBE_GAP, PROBE_MIN_S, WINDOW, SLOWER, BEATEN = 100, 2.0, 4, 3.0, 0.9
STATISTICS = ("median", "mean")  # how a measurement sums up its runs: pick(by=...)


@dataclass(slots=True)  # made on every op call: slots, not frozen (whose __init__ costs microseconds)
class Call:
    """What the chooser needs to time a call: its device, dtype, sizes and flags (the bucket), and `run`,
    which makes the same call on the backend it is given."""

    device: torch.device
    dtype: torch.dtype
    gradient: bool
    sizes: tuple[int, ...]
    flags: tuple
    run: Callable[[str], None]

    @classmethod
    def rerun(cls, fn: Callable, args: Sequence, gradient: bool, sizes: Sequence[int], flags: Sequence = ()) -> "Call":
        """The Call of the public op `fn(*args)`, timed by calling it again on each backend (forced, so it
        chooses nothing itself) on detached copies of its tensors, whose gradients reach none of the
        caller's, and, when `gradient`, backward through every output."""
        first = next(a for a in args if isinstance(a, torch.Tensor))

        def run(backend: str) -> None:
            with backends.use(**{first.device.type: backend}), torch.set_grad_enabled(gradient):
                outs = fn(*(a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                            for a in args))
                if gradient:
                    outs = outs if isinstance(outs, tuple) else (outs,)
                    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        return cls(first.device, first.dtype, gradient, tuple(sizes), tuple(flags), run)


@dataclass
class Measured:
    """A bucket's choice: the backend, each candidate's median time, and what measuring them cost."""

    backend: str
    times_ms: dict[str, float]
    tuning_s: float


_lock = threading.Lock()
_memory: dict[str, Measured] = {}
_file: dict[str, Measured] | None = None  # the cache file's choices, read once
_warned: set[str] = set()
# choices by a call's exact (unrounded) description: what every call after a bucket's first asks, answered
# without building the bucket's key (an op's per-call cost is measured in microseconds at small shapes)
_recent: dict[tuple, tuple[str, str]] = {}  # -> (backend, bucket)
_probe_at: dict[str, float] = {}  # bucket -> when its kept choice is next checked (perf_counter seconds)
_window: dict[str, list[dict[str, float]]] = {}  # bucket -> its last probes' times (ms) by candidate
_generation = 0  # changes with every measurement and forget(): generation()


def enabled() -> bool:
    """Whether calls are timed to choose a backend (FASTSEQ_AUTOTUNE, default on)."""
    return _enabled(backends.getenv(ENV_VAR, "1"))


@functools.lru_cache(maxsize=16)
def _enabled(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("0", "1", "false", "true", "off", "on", ""):
        raise ValueError(f"{ENV_VAR} must be 0 or 1, got {raw!r}")
    return value not in ("0", "false", "off")


def can_measure(device: torch.device) -> bool:
    """No timing while torch.compile traces or a CUDA graph captures: the cached or static choice serves."""
    if torch.compiler.is_compiling():
        return False
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def cache_path() -> str:
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastseq",
                           "backend-choices.json")
    return os.environ.get(CACHE_ENV_VAR) or default


def _versions() -> dict[str, str]:
    from .. import __version__
    from ..backends import triton_version

    return {"torch": torch.__version__, "triton": triton_version() or "none", "fastseq": __version__}


def _bucket(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _device(device: torch.device) -> str:
    """The device's name; on a CPU with the intra-op thread count torch runs on, which can change the ranking."""
    return f"cpu/{torch.get_num_threads()}t" if device.type == "cpu" else _device_name(device)


def key(family: str, call: Call) -> str:
    """The bucket of a call: its sizes rounded up to powers of two, its flags (booleans, kinds) as they are."""
    parts = [family, _device(call.device), str(call.dtype).removeprefix("torch."),
             "grad" if call.gradient else "nograd", "x".join(str(_bucket(s)) for s in call.sizes),
             *map(str, call.flags)]
    return "|".join(parts)


def _warn(kind: str, message: str) -> None:
    if kind not in _warned:
        _warned.add(kind)
        warnings.warn(f"fastseq backend choices: {message}; choosing in memory only", RuntimeWarning, stacklevel=4)


def _read() -> dict[str, Measured]:
    path = cache_path()
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("versions") != _versions():
            _warn("stale", f"{path} holds choices for {data.get('versions')}, not {_versions()}: they are remeasured")
            return {}
        choices = {}
        for bucket, entry in data["choices"].items():
            found = _entry(entry)
            if found is None:
                warnings.warn(f"fastseq backend choices: {path}: the choice for {bucket} is malformed "
                              f"({str(entry)[:80]}); it is remeasured", RuntimeWarning, stacklevel=4)
            else:
                choices[bucket] = found
        return choices
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        _warn("corrupt", f"{path} cannot be read ({type(error).__name__}: {error})")
        return {}


def _entry(entry) -> Optional[Measured]:
    """A cache file's choice, or None where it is not one (a backend name, times by backend, a cost)."""
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0  # noqa: E731
    if not isinstance(entry, dict) or set(entry) != {"backend", "times_ms", "tuning_s"}:
        return None
    times = entry["times_ms"]
    if not isinstance(entry["backend"], str) or not isinstance(times, dict) or not number(entry["tuning_s"]) \
            or not all(isinstance(b, str) and number(t) for b, t in times.items()):
        return None
    return Measured(**entry)


def _loaded() -> dict[str, Measured]:
    global _file
    if _file is None:
        _file = _read()
    return _file


def _save() -> None:
    """The file's choices and this process's, written to a temporary file and renamed over the cache."""
    path = cache_path()
    merged = {**_read(), **_memory}
    data = {"versions": _versions(), "choices": {k: asdict(v) for k, v in merged.items()}}
    try:
        atomic.write(path, lambda f: json.dump(data, f, indent=1), "w")
    except OSError as error:
        _warn("unwritable", f"{path} cannot be written ({error})")


def describe(bucket: str, measured: Measured) -> str:
    """One line for a bucket's choice: each candidate's time, fastest first, and what choosing cost."""
    times = ", ".join(f"{b} {ms:.3g} ms" for b, ms in sorted(measured.times_ms.items(), key=lambda i: i[1]))
    return f"{bucket}  -> {measured.backend}  ({times}; chosen in {measured.tuning_s:.2f} s)"


def cached(bucket: str) -> Optional[Measured]:
    """The choice kept for a bucket, in memory or in the cache file."""
    with _lock:
        return _memory.get(bucket) or _loaded().get(bucket)


def choices() -> dict[str, Measured]:
    """Every choice known to this process: the cache file's and those made here."""
    with _lock:
        return {**_loaded(), **_memory}


def forget() -> None:
    """Drop the choices held in memory and reread the cache file on next use (tests, a changed file)."""
    global _file, _generation
    with _lock:
        _generation += 1
        _memory.clear()
        _recent.clear()
        _probe_at.clear()
        _window.clear()
        _file = None
        _warned.clear()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_s(run: Callable[[], None], device: torch.device) -> float:
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def _times_ms(runs: dict[str, Callable[[], None]], device: torch.device, by: str = "median",
              prior: Optional[dict[str, list[float]]] = None) -> dict[str, float]:
    """Milliseconds of each backend's run, after a warm-up run of each, the backends in turns: the median of
    the runs, or their mean (then never fewer than MEAN_RUNS runs: a load that stalls one call in several is
    what it is asked to count, and fewer runs would miss it)."""
    warm = {b: _time_s(run, device) for b, run in runs.items()}
    least = MEAN_RUNS if by == "mean" else 1
    repeats = {b: max(least, 1 if w > SLOW else min(MOST, max(REPEATS, int(TARGET / max(w, 1e-9)))))
               for b, w in warm.items()}
    times: dict[str, list[float]] = {b: list((prior or {}).get(b, ())) for b in runs}  # the probes' runs count
    for turn in range(max(repeats.values())):
        for b, run in runs.items():
            if turn < repeats[b]:
                times[b].append(_time_s(run, device) * 1e3)
    summary = statistics.mean if by == "mean" else statistics.median
    return {b: summary(t) for b, t in times.items()}


def pick(family: str, candidates: tuple[str, ...], call: Call, by: str = "median") -> Optional[str]:
    """The fastest of `candidates` for the call's bucket: kept, or measured now (when measuring is allowed)
    by `call.run(backend)` under a forked random state, so the caller's random stream is untouched. None
    when there is nothing to choose between, measurement is off, or it cannot run now and nothing is kept.
    A kept choice on the CPU is probed now and then and measured again when the machine no longer agrees.
    by: "median" of the timed runs (a call whose time is steady), or "mean" (one that some loads stall)."""
    if by not in STATISTICS:
        raise ValueError(f"pick: by must be one of {STATISTICS}, got {by!r}")
    if len(candidates) < 2 or not enabled():
        return None
    exact = _exact(family, candidates, call)
    seen = _recent.get(exact)
    if seen is not None:
        backend, bucket = seen
        if call.device.type != "cpu" or time.perf_counter() < _probe_at.get(bucket, 0.0):
            return backend
        return _probe(family, candidates, call, exact, bucket, backend, by)
    bucket = key(family, call)
    hit = cached(bucket)
    if hit is not None and hit.backend in candidates:
        _remember(exact, bucket, hit)
        return hit.backend
    if not can_measure(call.device):
        return None
    return _measure(family, candidates, call, exact, bucket, by)


def _exact(family: str, candidates: tuple[str, ...], call: Call) -> tuple:
    threads = torch.get_num_threads() if call.device.type == "cpu" else 0
    return family, candidates, call.device, threads, call.dtype, call.gradient, call.sizes, call.flags


def kept(family: str, candidates: tuple[str, ...], call: Call) -> Optional[tuple[str, str, float, float]]:
    """The call's kept choice as (backend, bucket, when its next probe is due (perf_counter seconds), its
    recorded ms), for a caller that keeps it between calls until the probe is due (a per-call cost measured
    in microseconds); None where nothing is kept."""
    seen = _recent.get(_exact(family, candidates, call))
    if seen is None:
        return None
    backend, bucket = seen
    measured = cached(bucket)
    if measured is None:
        return None
    return backend, bucket, _probe_at.get(bucket, 0.0), measured.times_ms.get(backend, float("inf"))


def probe_now(bucket: Optional[str] = None) -> None:
    """The bucket's next probe due at once (every bucket's, given None): its caller saw a served call take far
    longer (SLOWER times) than its record, so a load that has come is seen within calls rather than after
    PROBE_GAP. Callers holding kept() copies take them again."""
    global _generation
    if bucket is None:
        _probe_at.clear()  # a bucket without an entry is due
    else:
        _probe_at[bucket] = 0.0
    _generation += 1


def generation() -> int:
    """A count that changes whenever a kept choice may have: a caller's copies older than it are stale."""
    return _generation


def _measure(family: str, candidates: tuple[str, ...], call: Call, exact: tuple, bucket: str, by: str,
             prior: Optional[dict[str, list[float]]] = None) -> str:
    """Time every candidate (with `prior`: runs already timed, a window of probes, counted with the new ones,
    so the measurement that follows a window's verdict weighs the same evidence) and keep the fastest."""
    start = time.perf_counter()
    devices = [call.device] if call.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        times = _times_ms({b: (lambda b=b: call.run(b)) for b in candidates}, call.device, by, prior)
    global _generation
    best = min(times, key=times.get)
    measured = Measured(best, times, time.perf_counter() - start)
    with _lock:
        _generation += 1
        _memory[bucket] = measured
        _save()
    _window.pop(bucket, None)
    for stale in [k for k, (_, b) in _recent.items() if b == bucket]:  # other calls of the bucket: the new choice
        del _recent[stale]
    _remember(exact, bucket, measured)
    _probe_at[bucket] = time.perf_counter() + _gap_s(measured)
    return best


def _probe(family: str, candidates: tuple[str, ...], call: Call, exact: tuple, bucket: str, backend: str,
           by: str) -> str:
    """One timed run of each candidate, in turns; measure the bucket again when, over the last WINDOW probes,
    `backend` runs far slower than its record or another candidate beats it, on average."""
    measured = cached(bucket)
    if measured is None or not can_measure(call.device):
        _probe_at[bucket] = time.perf_counter() + PROBE_MIN_S  # not asked again on every call
        return backend
    with torch.random.fork_rng(devices=[]):
        times = {b: _time_s(lambda b=b: call.run(b), call.device) * 1e3 for b in candidates}
    window = _window.setdefault(bucket, [])
    window.append(times)
    del window[:-WINDOW]
    if len(window) == WINDOW and _off(window, backend, measured.times_ms.get(backend)):
        return _measure(family, candidates, call, exact, bucket, by, {b: [p[b] for p in window] for b in candidates})
    _probe_at[bucket] = time.perf_counter() + _gap_s(measured)
    return backend


def _off(window: list[dict[str, float]], backend: str, recorded: Optional[float]) -> bool:
    """Whether the probes' means say the kept `backend` no longer serves: SLOWER times its record, or
    another candidate below BEATEN times its mean."""
    means = {b: statistics.mean(p[b] for p in window) for b in window[0]}
    kept = means[backend]
    return (recorded is not None and kept > SLOWER * recorded) or min(means.values()) < BEATEN * kept


def _gap_s(measured: Measured) -> float:
    return max(PROBE_MIN_S, PROBE_GAP * sum(measured.times_ms.values()) / 1e3)


def _remember(exact: tuple, bucket: str, measured: Measured) -> None:
    if len(_recent) >= 4096:  # a model whose shapes never repeat: keep the table bounded
        _recent.clear()
        _probe_at.clear()
    _recent[exact] = (measured.backend, bucket)
    _probe_at.setdefault(bucket, time.perf_counter() + _gap_s(measured))
