"""experiments/ulmfit_recipe.py: variants of a row's recipe scored on validation from one tiny general LM (the
test split never read), and --merge gathering seeds and variants from separate processes, refusing a seed
twice or other settings by name."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import ulmfit_recipe  # noqa: E402

from fastseq import data as D  # noqa: E402
from fastseq.train import ulmfit  # noqa: E402

TINY = "finetune.steps=2;finetune.block=16;finetune.batch=4;classify.steps_per_stage=1;classify.max_tokens=512;" \
       "classify.max_len=24;classify.eval_every=0"


def test_variants_scored_on_validation_from_one_lm(tmp_path, monkeypatch):
    run = tmp_path / "run"
    ulmfit.run({"general": [{"dataset": "multi30k", "split": "val", "side": 0}],
                "tokenizer": {"kind": "word", "min_freq": 2, "lowercase": True, "bos": True},
                "model": {"embed_dim": 16, "hidden_size": 24, "num_layers": 2},
                "pretrain": {"steps": 3, "block": 16, "batch": 4, "progress": False},
                "stages": ["pretrain"], "progress": False, "out_dir": str(run)}, torch.device("cpu"))
    load = D.load

    def no_test(name, split, *args, **kwargs):
        assert split != "test", "the recipe is chosen on validation: the test split must not be read"
        return load(name, split, *args, **kwargs)
    monkeypatch.setattr(D, "load", no_test)
    out = tmp_path / "s0.json"
    assert ulmfit_recipe.main(["--pretrained", str(run / "pretrain"), "--seeds", "0", "--json", str(out),
                               "--variant", f"a={TINY}", "--variant", f"b={TINY};classify.lr=1.0e-3"]) == 0
    data = json.loads(out.read_text())
    assert [r["variant"] for r in data["rows"]] == ["a", "b"]
    assert data["rows"][1]["overrides"][-1] == "classify.lr=1.0e-3"
    assert all(0 <= r["runs"][0]["valid_error"] <= 1 and r["mean"] == r["runs"][0]["valid_error"]
               for r in data["rows"])
    assert "| b |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="NAME=OVERRIDES"):
        ulmfit_recipe.parse_variant("no equals sign")


def _part(path, date, commit, variants, seeds, overrides=("a=1",)):
    rows = [{"variant": v, "overrides": [f"x={v}"], "runs": [{"seed": s, "valid_error": 0.1 + 0.01 * s} for s in seeds]}
            for v in variants]
    meta = {"date": date, "commit": commit, "device": "CPU (2 cores)", "torch": "2.x", "row": "sst2_ulmfit",
            "config": "ulmfit_sst2.yaml", "overrides": list(overrides), "seeds": list(seeds), "threads": 1}
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    return str(path)


def test_merge_gathers_seeds_and_variants(tmp_path):
    a = _part(tmp_path / "a.json", "2026-12-07T01:00:00+00:00", "aaaaaaa", ["recipe", "v1"], [0])
    b = _part(tmp_path / "b.json", "2026-12-07T01:00:00+00:00", "aaaaaaa", ["recipe", "v1"], [1])
    c = _part(tmp_path / "c.json", "2026-12-07T02:00:00+00:00", "bbbbbbb", ["v2"], [0, 1])
    assert ulmfit_recipe.main(["--merge", a, b, c, "--out", str(tmp_path)]) == 0
    (merged,) = tmp_path.glob("ulmfit-recipe-sst2_ulmfit-cpu-2026-12-07-bbbbbbb.json")
    data = json.loads(merged.read_text())
    assert [r["variant"] for r in data["rows"]] == ["recipe", "v1", "v2"]
    assert [[run["seed"] for run in r["runs"]] for r in data["rows"]] == [[0, 1], [0, 1], [0, 1]]
    assert data["rows"][0]["mean"] == pytest.approx(0.105) and data["rows"][0]["std"] == pytest.approx(0.005)
    assert data["meta"]["seeds"] == [0, 1] and len(data["meta"]["parts"]) == 3


def test_merge_refuses_a_seed_twice_and_other_settings(tmp_path):
    a = _part(tmp_path / "a.json", "2026-12-07T01:00:00+00:00", "aaaaaaa", ["recipe"], [0])
    b = _part(tmp_path / "b.json", "2026-12-07T01:00:00+00:00", "aaaaaaa", ["recipe"], [0])
    with pytest.raises(SystemExit, match="'recipe' has a seed in more than one file"):
        ulmfit_recipe.merge([a, b], str(tmp_path))
    c = _part(tmp_path / "c.json", "2026-12-07T01:00:00+00:00", "aaaaaaa", ["recipe"], [1], overrides=("a=2",))
    with pytest.raises(SystemExit, match="differs from .* in overrides"):
        ulmfit_recipe.merge([a, c], str(tmp_path))
