"""The cases each op declares as pytest-benchmark benchmarks (settings and hooks in conftest.py): one
benchmark per (case, implementation), the implementations of a case in one group. pytest-benchmark times
each call as a user's loop sees it (the device synchronized after it: host time included); on a GPU the
device's own time per call (timing.measure: calls queued back to back between two events) goes to
extra_info as gpu_median_ms."""
import pytest
import torch

from fastseq.bench import timing

from conftest import device

_made: dict = {}


def _calls(case) -> dict:
    """The case's calls, made once for all its implementations (the previous case's freed)."""
    if case.name not in _made or _made[case.name][0] is not case:
        _made.clear()
        if device().type == "cuda":
            torch.cuda.empty_cache()
        _made[case.name] = (case, case.make())
    return _made[case.name][1]


def test_case(benchmark, case_impl, request):
    case, impl = case_impl
    fn, dev = _calls(case)[impl], device()

    def call():
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    benchmark.group = f"{case.op}: {case.name}"
    benchmark.extra_info.update({"op": case.op, "case": case.name, "sizes": case.sizes, "dtype": case.dtype,
                                 "impl": impl, "baseline": impl in case.baselines, "work": case.work,
                                 "ceiling": case.ceiling})
    try:
        once = timing.measure(fn, dev, warmup=2, min_reps=3, min_seconds=0.0)
    except RuntimeError as e:  # an SDPA backend that does not serve the case says so
        pytest.skip(f"{impl}: {str(e).splitlines()[0][:200]}")
    if dev.type == "cuda":
        gpu = timing.measure(fn, dev)
        benchmark.extra_info.update({"gpu_median_ms": gpu["median_ms"], "gpu_p25_ms": gpu["p25_ms"],
                                     "gpu_p75_ms": gpu["p75_ms"]})
    per_call_s = once.get("call_median_ms", once["median_ms"]) * 1e-3
    rounds = max(5, min(200, int(request.config.getoption("--seconds") / max(per_call_s, 1e-6))))
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)
