"""pytest-benchmark over the cases each op declares (benchmarks/test_bench.py):

    pytest benchmarks/ --benchmark-only [--preset quick|cpu|gpu|headline] [--ops lstm,attention]
                       [--dtypes fp32,bf16] [--benchmark-json out.json] [--benchmark-autosave]
                       [--benchmark-compare]

The JSON's machine_info carries fastseq's device, versions, commit and the ceilings measured in the same
run; each benchmark's extra_info its case, sizes and implementation and, for fastseq's, its speed-up over
each baseline of its group and the fraction of the ceiling it reached (on a GPU both for the GPU time and
for the per-call time pytest-benchmark measures).
"""
import functools
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

OPS = ("lstm", "additive_attention", "attention")


def pytest_addoption(parser):
    group = parser.getgroup("fastseq benchmarks")
    group.addoption("--preset", default=None, choices=("quick", "cpu", "gpu", "headline"),
                    help="the declared cases' sizes (default: gpu on a GPU, else cpu)")
    group.addoption("--ops", default=",".join(OPS), help=f"comma-separated ops (default: {','.join(OPS)})")
    group.addoption("--dtypes", default=None, help="comma-separated (default: fp32,bf16 on a GPU, fp32 on a CPU)")
    group.addoption("--seconds", type=float, default=0.5, help="about this long timing each benchmark (>= 5 rounds)")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def settings(config) -> tuple[str, list[str], list[str]]:
    gpu = device().type == "cuda"
    preset = config.getoption("--preset") or ("gpu" if gpu else "cpu")
    dtypes = (config.getoption("--dtypes") or ("fp32,bf16" if gpu else "fp32")).split(",")
    ops = config.getoption("--ops").split(",")
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise pytest.UsageError(f"--ops: unknown {unknown} (known: {', '.join(OPS)})")
    return preset, dtypes, ops


@functools.lru_cache(maxsize=None)
def ceilings(dtypes: tuple[str, ...]) -> dict:
    from fastseq.bench import sweep

    return sweep.ceilings(device(), list(dtypes))


def pytest_generate_tests(metafunc):
    if "case_impl" not in metafunc.fixturenames:
        return
    from fastseq.bench import sweep

    preset, dtypes, ops = settings(metafunc.config)
    params = []
    for op in ops:
        fused = sweep.fused_backends(op, device())
        for case in sweep.OPS[op].cases(device(), preset, dtypes, fused):
            params += [pytest.param((case, impl), id=f"{op}[{case.name}]-{impl}") for impl in case.impls]
    metafunc.parametrize("case_impl", params)


def pytest_benchmark_update_machine_info(config, machine_info):
    from fastseq.bench import sweep

    preset, dtypes, _ = settings(config)
    machine_info["fastseq"] = sweep.metadata(device(), preset, ceilings(tuple(dtypes)))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """fastseq's speed-ups over its group's baselines and fractions of the measured ceilings."""
    from fastseq.bench import timing

    _, dtypes, _ = settings(config)
    measured = ceilings(tuple(dtypes))
    groups: dict = {}
    for b in output_json["benchmarks"]:
        groups.setdefault(b["group"], []).append(b)
    for members in groups.values():
        bases = [b for b in members if b["extra_info"].get("baseline")]
        for b in members:
            info = b["extra_info"]
            seconds = b["stats"]["median"]
            for base in bases:
                if base is not b:
                    info[f"speedup_vs_{base['extra_info']['impl']}"] = base["stats"]["median"] / seconds
                    if "gpu_median_ms" in info and "gpu_median_ms" in base["extra_info"]:
                        info[f"gpu_speedup_vs_{base['extra_info']['impl']}"] = (base["extra_info"]["gpu_median_ms"]
                                                                               / info["gpu_median_ms"])
            ceiling = measured.get(info.get("ceiling"))
            ceiling = ceiling.get(info.get("dtype")) if isinstance(ceiling, dict) else ceiling
            if ceiling and info.get("work"):
                best = info.get("gpu_median_ms", seconds * 1e3) * 1e-3
                info.update(timing.fraction_of(info["work"] / best, ceiling))
