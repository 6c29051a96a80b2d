"""The model benchmark runs end to end on its quick preset (CPU): every model trains on fastseq and on
torch.nn layers, every decoder generates, and the sweep writes JSON rows with the ratios to the baselines."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import sweep  # noqa: E402


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
