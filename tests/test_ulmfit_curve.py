"""The ULMFiT curve (experiments/ulmfit_curve.py) end to end at tiny scale: a tiny general LM pretrained once,
then the curve from it, two sizes and two seeds; every method and size has its points, scratch its step
count chosen on validation, and the JSON, table and PNG."""
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
                "tokenizer": {"kind": "word", "min_freq": 2, "lowercase": True, "bos": True},
                "model": {"embed_dim": 16, "hidden_size": 24, "num_layers": 2},
                "pretrain": {"steps": 3, "block": 16, "batch": 4, "progress": False},
                "stages": ["pretrain"], "progress": False, "out_dir": str(run)}, __import__("torch").device("cpu"))
    tiny = ["--set", "finetune.steps=2", "--set", "finetune.block=16", "--set", "finetune.batch=4",
            "--set", "classify.steps_per_stage=1", "--set", "classify.max_tokens=512", "--set", "classify.max_len=24"]
    assert ulmfit_curve.main(["--from", str(run / "pretrain"), "--sizes", "50", "all", "--seeds", "0", "1",
                              "--lm-steps", "2", "--semi-steps", "2", "--scratch-steps", "4",
                              "--scratch-eval-every", "2", "--out", str(tmp_path), *tiny]) == 0
    (report,) = tmp_path.glob("ulmfit-curve-*.json")
    result = json.loads(report.read_text())
    assert len(result["points"]) == 3 * 2 * 2
    assert all(p["steps"] in (2, 4) for p in result["points"] if p["method"] == "scratch")  # chosen on validation
    everything = str(4906)  # TREC-6's training questions outside its validation split
    for method in ulmfit_curve.METHODS:
        for n in ("50", everything):
            s = result["summary"][method][n]
            assert 0 <= s["min"] <= s["mean"] <= s["max"] <= 1
    assert report.with_suffix(".png").stat().st_size > 0
    assert f"| {everything} |" in report.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="--sizes"):
        ulmfit_curve.main(["--from", str(run / "pretrain"), "--sizes", "0", "--out", str(tmp_path), *tiny])
