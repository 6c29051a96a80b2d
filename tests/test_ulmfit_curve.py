"""The ULMFiT curve (experiments/ulmfit_curve.py) end to end at tiny scale: a tiny ulmfit run on TREC, then
the curve from it, two sizes and two seeds; every method and size has its points, JSON, table and PNG."""
import json
import os
import sys

import pytest

pytest.importorskip("matplotlib")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
from fastseq.train import ulmfit  # noqa: E402

import ulmfit_curve  # noqa: E402


def test_ulmfit_curve_tiny(tmp_path):
    run = tmp_path / "run"
    ulmfit.run({"general": [{"dataset": "multi30k", "split": "val", "side": 0}],
                "target": {"dataset": "trec", "train": "train", "valid_fraction": 0.1},
                "tokenizer": {"kind": "word", "min_freq": 2, "lowercase": True},
                "model": {"embed_dim": 16, "hidden_size": 24, "num_layers": 2},
                "pretrain": {"steps": 3, "block": 16, "batch": 4, "progress": False},
                "finetune": {"steps": 2, "block": 16, "batch": 4, "progress": False},
                "classify": {"steps_per_stage": 1, "max_tokens": 512, "max_len": 24},
                "progress": False, "out_dir": str(run)}, __import__("torch").device("cpu"))
    assert ulmfit_curve.main(["--from", str(run), "--sizes", "50", "all", "--seeds", "0", "1",
                              "--steps-per-stage", "2", "--lm-steps", "2", "--semi-steps", "2",
                              "--out", str(tmp_path)]) == 0
    (report,) = tmp_path.glob("ulmfit-curve-*.json")
    result = json.loads(report.read_text())
    assert len(result["points"]) == 3 * 2 * 2
    for method in ulmfit_curve.METHODS:
        for n in ("50", "5452"):
            s = result["summary"][method][n]
            assert 0 <= s["min"] <= s["mean"] <= s["max"] <= 1
    assert report.with_suffix(".png").stat().st_size > 0 and "| 5452 |" in report.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="--sizes"):
        ulmfit_curve.main(["--from", str(run), "--sizes", "0", "--out", str(tmp_path)])
