"""The quick GPU check: build, test and benchmark fastseq on a lent GPU machine in at most eight minutes.

    FASTSEQ_COMMIT=<sha> python benchmarks/gpu_quick.py [--out DIR] [--dry-run]      (or: make gpu-quick)

Each step runs under its own timeout and prints its elapsed time; a table of the steps and the headline
figures comes last. Everything lands in --out (default $OUT, the device tool's folder, else ./gpu-quick),
three files (that machine sends back at most eight):
    log           every step's output
    results.json  device, versions, commit, the steps and every benchmark figure
    junit.xml     the tests
    parity.json   the drop-in modules against torch.nn (benchmarks/parity.py's headline preset)
    generate-hf.json  generation against Hugging Face generate() (benchmarks/generate_hf.py)
Steps:
    build   the prebuilt extension (`make gpu-prebuild`, carried in build/prebuilt) when its build_info
            names the running torch and CUDA; else `pip install` offline with TORCH_CUDA_ARCH_LIST=9.0a
    tests   the `cuda`- and `extension`-marked tests, ops first, then modules, models and generation, on 8
            workers with a per-test timeout; nothing that needs ../shared/data (it does not travel)
    bench   benchmarks/sweep.py's headline preset in bf16, against cuDNN, SDPA and the naive forms
    parity  benchmarks/parity.py's headline preset in bf16: fastseq.nn's modules as a user gets them
            (backends chosen by measurement) against torch.nn's
    generate  benchmarks/generate_hf.py: a GPT-2 small CausalLM against transformers' generate() on the same
            configuration, batch 1/8/64, greedy and beam 5, bf16 (rows saved as they come)
Without a GPU (or with --dry-run) the GPU steps are skipped and the plan is printed: what runs here is
the prebuilt library's check. FASTSEQ_COMMIT names the commit (the device machine's copy has no .git).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREBUILT = os.path.join(ROOT, "build", "prebuilt")
PY = sys.executable
# Ops first (every backend and dtype against the float64 reference, strided inputs, registration), then the
# modules, the models and generation.
TEST_FILES = ["tests/test_tuning.py", "tests/test_lstm.py", "tests/test_additive_attention.py", "tests/test_attention.py",
              "tests/test_strided_inputs.py", "tests/test_padded_values.py", "tests/test_edge_inputs.py",
              "tests/test_backends.py", "tests/test_nn_lstm.py",
              "tests/test_nn_additive_attention.py", "tests/test_nn_multihead_attention.py",
              "tests/test_nn_transformer.py", "tests/test_models.py", "tests/test_generation.py",
              "tests/test_cuda_graph_decoding.py"]
# seconds; 8 minutes in all at most with the prebuilt extension (measured on an H200: tests 70, bench 46)
TIMEOUTS = {"info": 30, "build": 200, "tests": 180, "bench": 120, "parity": 80, "generate": 75}
BUILD_ENV = {"TORCH_CUDA_ARCH_LIST": "9.0a", "MAX_JOBS": "16"}


class Run:
    """The steps of one check: each one's command, status and time, its output appended to the log."""

    def __init__(self, out: str):
        self.out = out
        self.log = open(os.path.join(out, "log"), "a", buffering=1)
        self.steps: list[dict] = []

    def step(self, name: str, command: list[str] | None, env: dict | None = None, note: str = "",
             timeout: float | None = None) -> bool:
        """Runs `command` under `timeout` seconds (default TIMEOUTS[name]; None: skipped, with `note` saying
        why)."""
        timeout = timeout or TIMEOUTS[name]
        print(f"== {name}: {note or ' '.join(command)}", flush=True)
        self.log.write(f"\n== {name}: {note or ' '.join(command or [])}\n")
        if command is None:
            self.steps.append({"step": name, "status": "skipped", "seconds": 0.0, "note": note})
            return True
        start = time.monotonic()
        try:
            proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
            output, status = proc.stdout, "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired as e:
            output = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
            status = f"timeout {timeout:.0f} s"
        seconds = time.monotonic() - start
        self.log.write(output)
        print("\n".join(output.splitlines()[-15:]), flush=True)
        print(f"-- {name}: {status} in {seconds:.0f} s", flush=True)
        self.steps.append({"step": name, "status": status, "seconds": round(seconds, 1), "note": note})
        return status == "ok"


def prebuilt_library() -> str | None:
    """The carried build of fastseq._C for this Python, if any."""
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    found = glob.glob(os.path.join(PREBUILT, f"_C.{tag}-*.so"))
    return found[0] if found else None


CHECK_BUILD = """
import json, torch, fastseq._C as C
info = C.build_info()
print(json.dumps(info))
cuda_major = int(torch.version.cuda.split(".")[0]) if torch.version.cuda else None
assert info["torch_version"] == torch.__version__.split("+")[0], (info, torch.__version__)
assert info["with_cuda"] and info["cuda_runtime"] // 1000 == cuda_major, (info, torch.version.cuda)
"""


def use_prebuilt(run: Run) -> bool:
    """Copies the prebuilt library into the package and checks that it loads and names this torch."""
    library = prebuilt_library()
    if library is None:
        return False
    target = os.path.join(ROOT, "fastseq", os.path.basename(library))
    shutil.copy2(library, target)
    if run.step("build", [PY, "-c", CHECK_BUILD], note=f"prebuilt {os.path.relpath(library, ROOT)}"):
        return True
    os.remove(target)
    run.steps[-1]["status"] += " (prebuilt rejected)"
    return False


def headline(results: dict) -> list[str]:
    """A line per headline figure: the case, our time, the ratio to the fastest baseline, the fraction of
    the ceiling measured in the same run."""
    lines = []
    for op, rows in results.items():
        for r in rows:
            sizes = ",".join(f"{k}{v}" for k, v in r["sizes"].items() if not isinstance(v, list))
            case = f"{op} {r.get('case', '')} {r['mode']} {r['dtype']} {sizes} [{r['backend']}]"
            if "median_ms" not in r:
                lines.append(f"{case:<88} {'n/a':>9}")
                continue
            ratio = r.get("speedup") or r.get("speedup_vs_fastest_baseline") or r.get("speedup_vs_naive")
            fraction = (r.get("fraction_of_ceiling") or r.get("fraction_of_matmul_ceiling")
                        or r.get("fraction_of_tanh_floor"))
            lines.append(f"{case:<88} {r['median_ms']:8.3f} ms  x{ratio or float('nan'):5.2f}  "
                         f"{(fraction or 0):6.1%} of ceiling")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "gpu-quick"))
    parser.add_argument("--dry-run", action="store_true", help="skip the GPU steps, print the plan")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    run = Run(args.out)
    results_path = os.path.join(args.out, "results.json")
    import torch

    gpu = torch.cuda.is_available() and not args.dry_run
    why = "" if gpu else ("--dry-run" if args.dry_run else "no CUDA device here")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run.step("info", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"]
             if gpu else [PY, "-c", "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__)"])
    if not use_prebuilt(run):
        pip = [PY, "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation", "--no-deps", "-e", "."]
        run.step("build", pip if gpu else None, env=BUILD_ENV, note="" if gpu else f"{' '.join(pip)} ({why})")
    tests = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda or extension", "-n", "8",
             "--timeout", "120", "-rfE", f"--junitxml={os.path.join(args.out, 'junit.xml')}", *TEST_FILES]
    # each backend's correctness, chosen by the tests themselves: no per-shape timing of every backend
    # (tests/test_tuning.py's `cuda` test turns measurement on for its own calls)
    run.step("tests", tests if gpu else None, env={"FASTSEQ_AUTOTUNE": "0"},
             note="" if gpu else f"{' '.join(tests)} ({why})")
    bench = [PY, "benchmarks/sweep.py", "--preset", "headline", "--dtypes", "bf16", "--ops", "lstm",
             "additive_attention", "attention", "--json", results_path]
    run.step("bench", bench if gpu else None, note="" if gpu else f"{' '.join(bench)} ({why})")
    parity = [PY, "benchmarks/parity.py", "--preset", "headline", "--json", os.path.join(args.out, "parity.json")]
    run.step("parity", parity if gpu else None, note="" if gpu else f"{' '.join(parity)} ({why})")
    generation = [PY, "benchmarks/generate_hf.py", "--batches", "1", "8", "64", "--repeats", "1", "--json",
                  os.path.join(args.out, "generate-hf.json")]
    run.step("generate", generation if gpu else None, note="" if gpu else f"{' '.join(generation)} ({why})")

    report = {"meta": {}, "results": {}}
    if os.path.exists(results_path):
        with open(results_path) as f:
            report = json.load(f)
    report["meta"]["commit"] = os.environ.get("FASTSEQ_COMMIT", report["meta"].get("commit", "unknown"))
    report["steps"] = run.steps
    with open(results_path + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(results_path + ".tmp", results_path)

    table = ["", f"{'step':<8} {'status':<28} {'seconds':>8}"]
    table += [f"{s['step']:<8} {s['status']:<28} {s['seconds']:8.0f}" for s in run.steps]
    table += ["", *headline(report["results"])]
    print("\n".join(table))
    run.log.write("\n".join(table) + "\n")
    run.log.close()
    return 0 if all(s["status"] in ("ok", "skipped") for s in run.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
