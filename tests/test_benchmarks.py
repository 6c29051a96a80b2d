"""The one benchmark harness (benchmarks/sweep.py over bench_<op>.py, cases declared with each op) runs end
to end on its quick preset here: every op case declared for it on every fused backend this machine has,
against its baseline; every model trains on fastseq and on torch.nn layers and every decoder generates;
the sweep writes JSON rows with the ratios to the baselines."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import sweep  # noqa: E402

from fastseq.ops.registry import declared  # noqa: E402


def test_lstm_sweep_runs_every_declared_quick_case(tmp_path):
    path = tmp_path / "results.json"
    assert sweep.main(["--ops", "lstm", "--preset", "quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]["lstm"]
    fused = sweep.fused_backends("lstm", torch.device("cpu"))
    cases = [(mode, layers, hidden, seq, batch) for mode, layers, hidden, seq, batches, _ in declared()["lstm"].cases["quick"]
             for batch in batches]
    # each backend that serves the case (the torch LSTM: inference only), and the default choice
    able = {mode: [b for b in fused if declared()["lstm"].provides(b, needs)]
            for mode, needs in (("inference", ("lstm_layer",)), ("training", ("lstm_layer", "lstm_layer_backward")))}
    assert able["inference"] == fused and "torch" not in able["training"]
    assert len(rows) == sum(len(able[mode]) + 1 for mode, *_ in cases)
    assert {(r["mode"], r["sizes"]["layers"], r["sizes"]["hidden"], r["sizes"]["seq"], r["sizes"]["batch"])
            for r in rows} == set(cases)
    for r in rows:
        assert r["median_ms"] > 0 and r["baseline_median_ms"] > 0 and r["speedup"] > 0, r


@pytest.mark.parametrize("op", ["additive_attention", "attention"])
def test_attention_sweeps_say_when_no_fused_backend_runs_here(tmp_path, capsys, op):
    """On a CPU the attention ops' fused backends (CUDA, compiled Triton) do not run: the sweep says so."""
    path = tmp_path / "results.json"
    assert not sweep.fused_backends(op, torch.device("cpu"))
    assert sweep.main(["--ops", op, "--preset", "quick", "--json", str(path)]) == 0
    assert f"{op}: no fused backend runs on cpu" in capsys.readouterr().out


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
    assert {r["model"] for r in rows if r["case"] == "generate-beam"} == set(greedy)
