"""The one benchmark harness (fastseq.bench.sweep over the op modules beside it, cases declared with each op)
runs end to end on its quick preset here: every op case declared for it on every fused backend this machine
has, against its baseline; every model trains on fastseq and on torch.nn layers and every decoder generates;
the sweep writes JSON rows with the ratios to the baselines; the same cases run as pytest-benchmark
benchmarks (benchmarks/test_bench.py); benchmarks/parity.py times every drop-in module beside its torch.nn
twin."""
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from fastseq.bench import sweep  # noqa: E402
from fastseq.ops.registry import declared  # noqa: E402


def test_pytest_benchmark_runs_the_declared_cases_with_their_ratios(tmp_path):
    """pytest benchmarks/ --benchmark-only --preset quick: one benchmark per (case, implementation), grouped by
    case; the JSON's machine_info holds fastseq's device, versions, commit and measured ceilings; fastseq's
    benchmarks their speed-up over the group's baseline and the fraction of the ceiling; --benchmark-compare
    reads a saved run."""
    storage = ROOT / ".benchmarks" / tmp_path.name  # pytest-benchmark compares only runs stored under its rootdir
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", str(ROOT / "benchmarks"),
               "--benchmark-only", "--preset", "quick", "--ops", "lstm", "--benchmark-storage", str(storage),
               "--seconds", "0.02", "-q"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}  # not an xdist worker there
    first = subprocess.run(command + ["--benchmark-json", str(tmp_path / "run.json"), "--benchmark-save", "one"],
                           capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    data = json.loads((tmp_path / "run.json").read_text())
    meta = data["machine_info"]["fastseq"]
    assert meta["commit"] and meta["ceilings"]["matmul_flops"]["fp32"] > 0
    cases = {b["group"] for b in data["benchmarks"]}
    assert len(cases) == sum(len(batches) for *_, batches, _ in declared()["lstm"].cases["quick"])
    for b in data["benchmarks"]:
        info = b["extra_info"]
        assert info["impl"] == "torch.nn.LSTM" or info["speedup_vs_torch.nn.LSTM"] > 0, info
        assert 0 < info["fraction_of_ceiling"] and (info["fraction_of_ceiling"] <= 1 or "fraction_of_ceiling_note"
                                                     in info)
    try:
        again = subprocess.run(command + ["--benchmark-compare", "0001"], capture_output=True, text=True, cwd=ROOT,
                               timeout=600, env=env)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    assert again.returncode == 0 and "0001_one" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]


def test_lstm_sweep_runs_every_declared_quick_case(tmp_path):
    path = tmp_path / "results.json"
    assert sweep.main(["--ops", "lstm", "--preset", "quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]["lstm"]
    fused = sweep.fused_backends("lstm", torch.device("cpu"))
    cases = [(mode, layers, hidden, seq, batch)
             for mode, layers, hidden, seq, batches, _ in declared()["lstm"].cases["quick"] for batch in batches]
    # each backend that serves the case (the torch LSTM trains through autograd on a CPU), and the default
    able = {mode: [b for b in fused if declared()["lstm"].provides(b, needs, "cpu")]
            for mode, needs in (("inference", ("lstm_layer",)), ("training", ("lstm_layer", "lstm_layer_backward")))}
    assert able["inference"] == able["training"] == fused
    assert len(rows) == sum(len(able[mode]) + 1 for mode, *_ in cases)
    assert {(r["mode"], r["sizes"]["layers"], r["sizes"]["hidden"], r["sizes"]["seq"], r["sizes"]["batch"])
            for r in rows} == set(cases)
    for r in rows:
        assert r["median_ms"] > 0 and r["baseline_median_ms"] > 0 and r["speedup"] > 0, r


def test_additive_attention_sweep_times_the_torch_backend_on_a_cpu(tmp_path):
    """On a CPU the additive attention's fused kernels (CUDA, compiled Triton) do not run; its torch backend
    (trained through autograd there) is timed beside the naive form, forward and forward+backward."""
    path = tmp_path / "results.json"
    assert sweep.fused_backends("additive_attention", torch.device("cpu")) == ["torch"]
    assert sweep.main(["--ops", "additive_attention", "--preset", "quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]["additive_attention"]
    assert {(r["mode"], r["backend"]) for r in rows} == {("forward", "torch"), ("forward+backward", "torch")}
    for r in rows:
        assert r["median_ms"] > 0 and r["baselines"]["naive"]["median_ms"] > 0 and r["speedup_vs_naive"] > 0, r


def test_attention_sweep_times_the_torch_backend_where_it_serves(tmp_path):
    """On a CPU the attention's torch backend (SDPA, trained through autograd) runs every case: the forward
    and forward+backward (causal and full; with a float bias and a bool block mask) beside torch's SDPA
    (its own pick and the math kernel) given the same mask, MultiheadAttention beside torch's, and
    decoding."""
    path = tmp_path / "results.json"
    assert sweep.fused_backends("attention", torch.device("cpu")) == ["torch"]
    assert sweep.main(["--ops", "attention", "--preset", "quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]["attention"]
    modes = ("forward", "forward+backward")
    assert {(r["case"], r["mode"], r["backend"]) for r in rows} == {
        *((case, mode, "torch") for case in ("train", "mask-bias", "mask-block") for mode in modes),
        ("seq2seq", "forward+backward", "torch"), ("decode", "forward", "torch")}
    assert len(rows) == 10  # causal and full and two masks, forward and forward+backward; seq2seq; decoding
    for r in rows:
        baselines = {"torch-mha"} if r["case"] == "seq2seq" else {"sdpa", "sdpa-math"}
        assert r["median_ms"] > 0 and baselines <= set(r["baselines"]), r


def test_models_sweep_quick_preset(tmp_path):
    assert sweep.main(["--ops", "models", "--preset", "quick", "--out", str(tmp_path)]) == 0
    (path,) = [p for p in tmp_path.iterdir() if p.suffix == ".json"]
    rows = json.loads(path.read_text())["results"]
    train = {r["model"]: r for r in rows if r["case"] == "train"}
    assert set(train) == {"lstm_lm", "seq2seq", "seq2seq_additive", "transformer", "causal_lm", "masked_lm"}
    for r in train.values():
        assert r["rate"] > 0 and r["speedup_vs_torch.nn"] > 0, r
    greedy = {r["model"]: r for r in rows if r["case"] == "generate-greedy"}
    assert {"speedup_vs_no-cache", "speedup_vs_torch.nn+sdpa-cache"} <= set(greedy["causal_lm"])
    assert "speedup_vs_no-cache" in greedy["transformer"]
    assert {r["model"] for r in rows if r["case"] == "generate-beam"} == set(greedy)


def test_parity_quick_preset_times_every_module_beside_torch(tmp_path):
    """benchmarks/parity.py: each drop-in module against its torch.nn twin, and a user's model against itself
    converted, inference and training, each row with both times and the backends that served it."""
    import parity

    path = tmp_path / "parity.json"
    assert parity.main(["--preset", "quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert {(r["module"], r["mode"]) for r in rows} == {(m, mode) for m in ("LSTM", "LSTMCell", "MultiheadAttention",
                                                                         "TransformerEncoderLayer",
                                                                         "converted UserModel")
                                                        for mode in ("inference", "training")}
    for r in rows:
        assert r["torch_ms"] > 0 and r["fastseq_ms"] > 0 and r["ratio"] == r["torch_ms"] / r["fastseq_ms"], r
        functions = {"LSTM": ("lstm", "lstm_layer"), "LSTMCell": ("lstm_step", "lstm_cell"),
                     "converted UserModel": ("lstm", "lstm_layer", "attention")}.get(r["module"], ("attention",))
        assert any(s.split(":")[0] in functions for s in r["served"]), r


def test_generate_hf_times_fastseq_beside_hugging_face(tmp_path):
    """benchmarks/generate_hf.py: fastseq's generate and transformers' on models of one configuration,
    greedy and beam, every row with both rates and their ratio."""
    pytest.importorskip("transformers")
    import generate_hf

    path = tmp_path / "hf.json"
    assert generate_hf.main(["--size", "tiny", "--batches", "1", "2", "--beams", "1", "3", "--prompt", "5",
                             "--new", "4", "--repeats", "1", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert {(r["batch"], r["beams"]) for r in data["rows"]} == {(1, 1), (1, 3), (2, 1), (2, 3)}
    for r in data["rows"]:
        rate = r["tokens_per_s"]
        assert rate["fastseq"] > 0 and rate["hf-generate"] > 0 and r["ratio"] == rate["fastseq"] / rate["hf-generate"]
    assert data["meta"]["transformers"] and data["meta"]["size"] == "tiny"


def test_hf_attention_times_fastseq_beside_sdpa_on_one_model(tmp_path):
    """benchmarks/hf_attention.py: a GPT-2 on transformers' SDPA and the same weights on fastseq's attention,
    forward and generate(); every row with both times, their ratio, and the two models agreeing."""
    pytest.importorskip("transformers")
    import hf_attention

    path = tmp_path / "hf-attention.json"
    assert hf_attention.main(["--size", "tiny", "--batches", "1", "2", "--prompt", "5", "--new", "4",
                              "--repeats", "1", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    kinds = [(r["kind"], r["batch"]) for r in data["rows"]]
    assert kinds == [("forward", 1), ("forward", 3), ("generate", 1), ("generate", 2)]
    for r in data["rows"]:
        t = r["timed"]
        assert t["sdpa"]["median_ms"] > 0 and r["ratio"] == t["sdpa"]["median_ms"] / t["fastseq"]["median_ms"]
        assert r["same_tokens"] if r["kind"] == "generate" else r["max_abs_difference"] < 1e-4
    assert data["meta"]["transformers"] and data["meta"]["dtype"] == "fp32"


def test_linear_rows_times_both_forms_beside_the_copy_bandwidth(tmp_path):
    """benchmarks/bench_linear_rows.py: a decode step's linears as F.linear and batched, each row count with
    both times, their ratio and the fraction of the measured copy bandwidth."""
    import bench_linear_rows

    path = tmp_path / "rows.json"
    assert bench_linear_rows.main(["--size", "tiny", "--rows", "1", "3", "--repeats", "2", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert [r["rows"] for r in data["rows"]] == [1, 3]
    for r in data["rows"]:
        assert r["ms"]["F.linear"] > 0 and r["ms"]["batched"] > 0
        assert r["ratio"] == r["ms"]["F.linear"] / r["ms"]["batched"] and r["of_copy_bandwidth"]["batched"] > 0
    assert data["meta"]["copy_bandwidth_bytes_per_s"] > 0 and data["meta"]["weights"] == 9


def test_measure_together_takes_turns():
    """timing.measure_together: each function's warm-up, then one run of each per round, every round."""
    from fastseq.bench import timing

    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    out = timing.measure_together(fns, torch.device("cpu"), warmup=2, min_reps=4, min_seconds=0.0)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    assert calls[6:] == ["a", "b", "c"] * 4
    assert all(t["reps"] == 4 and t["p25_ms"] <= t["median_ms"] <= t["p75_ms"] for t in out.values())


def test_paired_ratio_takes_the_ratio_within_each_round():
    """timing.paired_ratio: the median (and quartiles) of the baseline's time over the other's within each
    round; a steady 2x stays 2x while the machine slows to half speed every few rounds."""
    import time as clock

    from fastseq.bench import timing

    state = {"round": 0}

    def slow_phase():
        return 2.0 if (state["round"] // 3) % 2 else 1.0

    def base():
        clock.sleep(0.004 * slow_phase())

    def ours():
        clock.sleep(0.002 * slow_phase())
        state["round"] += 1
    rounds: dict = {}
    timing.measure_together({"base": base, "ours": ours}, torch.device("cpu"), warmup=0, min_reps=12,
                            min_seconds=0.0, rounds_out=rounds)
    assert len(rounds["base"]) == len(rounds["ours"]) == 12
    paired = timing.paired_ratio(rounds, "base", "ours")
    assert paired["rounds"] == 12 and paired["p25"] <= paired["median"] <= paired["p75"]
    assert paired["median"] == pytest.approx(2.0, rel=0.25)
    assert paired["median"] == pytest.approx(statistics.median(b / o for b, o in zip(rounds["base"], rounds["ours"])))


class _SimulatedGPU:
    """A stream and a host clock in simulated milliseconds: a call costs the host `host_ms` and queues
    `device_ms` of device work; `syncs` makes the call wait for the device (as a value read does)."""

    def __init__(self, host_ms, device_ms, syncs=False):
        self.host, self.busy_until = 0.0, 0.0
        self.host_cost, self.device_cost, self.syncs = host_ms, device_ms, syncs

    def call(self):
        self.host += self.host_cost
        self.busy_until = max(self.busy_until, self.host) + self.device_cost
        if self.syncs:
            self.sync()

    def host_ms(self):
        return self.host

    def sync(self):
        self.host = max(self.host, self.busy_until)

    def event(self):
        self.busy_until = max(self.busy_until, self.host)
        return self.busy_until

    def elapsed_ms(self, begin, end):
        self.sync()
        return end - begin

    def spin(self, ms):
        self.busy_until = max(self.busy_until, self.host) + ms


@pytest.mark.parametrize("host_ms,device_ms", [(0.01, 0.5), (0.2, 0.005), (0.05, 0.05)])
def test_gpu_timer_separates_device_time_from_host_time(host_ms, device_ms):
    """timing.Timer on a simulated GPU: gpu_ms is the device's time per call whatever the host costs (the
    block is queued behind a spin), call_ms what a Python loop sees (the larger of the two)."""
    from fastseq.bench import timing

    gpu = _SimulatedGPU(host_ms, device_ms)
    timer = timing.Timer(gpu.call, torch.device("cuda"), clock=gpu)
    block = timer.block()
    assert timer.method == "queued behind a spin" and timer.calls >= 1
    assert block["gpu_ms"] == pytest.approx(device_ms, rel=1e-9)
    # the block overlaps host and device but for the first call's host time (or the last call's device time)
    assert block["call_ms"] == pytest.approx(max(host_ms, device_ms), rel=1e-9,
                                             abs=1.01 * min(host_ms, device_ms) / timer.calls)


def test_gpu_timer_names_a_call_that_synchronizes():
    """A call that waits for the device cannot be queued ahead: its gpu_ms is reported as an upper bound."""
    from fastseq.bench import timing

    gpu = _SimulatedGPU(0.1, 0.3, syncs=True)
    timer = timing.Timer(gpu.call, torch.device("cuda"), clock=gpu)
    assert "upper bound" in timer.method
    assert timer.block()["gpu_ms"] >= 0.3


def test_speedups_give_both_ratios_against_each_baseline():
    from fastseq.bench import timing

    ours = {"median_ms": 1.0, "call_median_ms": 2.0}
    out = timing.speedups(ours, {"a": {"median_ms": 3.0, "call_median_ms": 3.0}, "b": {"oom": True},
                                 "c": {"median_ms": 1.5, "call_median_ms": 4.0}})
    assert out == {"speedup_vs_a": 3.0, "speedup_vs_c": 1.5, "speedup_vs_fastest_baseline": 1.5,
                   "call_speedup_vs_a": 1.5, "call_speedup_vs_c": 2.0, "call_speedup_vs_fastest_baseline": 1.5}


def test_gpu_window_dry_run_runs_every_section_and_keeps_its_files(tmp_path):
    """benchmarks/gpu_window.py --dry-run on this CPU: every section runs (toy sizes), each step is recorded,
    and the folder holds the window's files, at most eight: what a GPU run leaves, minus the measurements."""
    out = tmp_path / "window"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_window.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["autograd.json", "generate-hf.json", "headline.json", "hf-attention.json", "log", "parity.json",
                     "tests.junit.xml", "window.json"], files
    window = json.loads((out / "window.json").read_text())
    assert window["meta"]["dry_run"] and window["meta"]["commit"]
    assert [s["step"] for s in window["steps"]] == ["build", "0", "1", "2", "3", "4:sweep", "4:parity", "4:generate",
                                                    "4:hf-attention"]
    assert all(s["status"] in ("ok", "skipped") for s in window["steps"]), window["steps"]
    assert {r["name"] for r in window["rates"]} >= {"copy", "probes"}
    assert window["new_kernels"] and all(r.get("ok") for r in window["new_kernels"])
    autograd = json.loads((out / "autograd.json").read_text())
    assert set(autograd["verdicts"]) == {"lstm", "attention"} and "cuda" not in autograd["verdicts"]["lstm"]
    headline = json.loads((out / "headline.json").read_text())["results"]
    assert all("call_median_ms" in r for rows in headline.values() for r in rows if "median_ms" in r)
    # a dry run is never adopted as evidence
    adopted = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_window.py"), "--adopt", str(out)],
                             capture_output=True, text=True, cwd=ROOT)
    assert adopted.returncode == 1 and "nothing adopted" in adopted.stdout


def test_autograd_evidence_turns_a_passed_window_into_cuda_training(tmp_path, monkeypatch):
    """fastseq.ops.evidence: a window's passed verdicts list torch for CUDA in Family.autograd, naming the
    evidence file; failed ones and CPU rows add nothing."""
    from fastseq.ops import evidence

    monkeypatch.setattr(evidence, "EVIDENCE_FILE", str(tmp_path / "evidence.json"))
    assert evidence.autograd("lstm") == {"cpu": ("torch",)} and evidence.evidence("lstm", "cuda") is None
    added = evidence.record({"lstm": {"cuda": {"ok": True, "dtypes": ["bfloat16", "float32"]}},
                             "attention": {"cuda": {"ok": False, "dtypes": ["bfloat16"]}, "cpu": {"ok": True}}},
                            "benchmarks/results/h200/w-autograd.json")
    assert added == ["lstm on cuda"]
    assert evidence.autograd("lstm") == {"cpu": ("torch",), "cuda": ("torch",)}
    assert evidence.autograd("attention") == {"cpu": ("torch",)}
    assert evidence.evidence("lstm", "cuda") == "benchmarks/results/h200/w-autograd.json (bfloat16, float32)"
