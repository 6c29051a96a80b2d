"""experiments/ulmfit_ablation.py --merge: variants run in separate processes merged into one results file, in
the script's order, each row keeping its part's date and commit; a variant twice, or parts run under other
settings, refused by name."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import ulmfit_ablation  # noqa: E402


def _part(path, date, commit, variants, seeds=(0, 1, 2)):
    rows = [{"variant": v, "undone_by": [], "lm": {"variant": "recipe", "held_out_loss": 3.0 + i},
             "runs": [{"seed": s, "valid_error": 0.1 + 0.01 * s} for s in seeds], "mean": 0.11, "std": 0.008}
            for i, v in enumerate(variants)]
    meta = {"date": date, "commit": commit, "device": "CPU (2 cores)", "torch": "2.x", "config": "ulmfit_trec.yaml",
            "overrides": ["a=1"], "seeds": list(seeds)}
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    return str(path)


def test_merge_orders_variants_and_keeps_each_parts_stamp(tmp_path):
    late = _part(tmp_path / "b.json", "2026-12-07T02:00:00+00:00", "bbbbbbb",
                 ["one rate for every stage", "no <bos>"])
    early = _part(tmp_path / "a.json", "2026-12-06T23:00:00+00:00", "aaaaaaa", ["recipe"])
    assert ulmfit_ablation.main(["--merge", late, early, "--out", str(tmp_path)]) == 0
    (merged,) = tmp_path.glob("ulmfit-ablation-cpu-2026-12-07-bbbbbbb.json")
    data = json.loads(merged.read_text())
    assert [r["variant"] for r in data["rows"]] == ["recipe", "no <bos>", "one rate for every stage"]
    assert [r["commit"] for r in data["rows"]] == ["aaaaaaa", "bbbbbbb", "bbbbbbb"]
    assert {p["file"] for p in data["meta"]["parts"]} == {"a.json", "b.json"}
    assert "| no <bos> |" in merged.with_suffix(".md").read_text()


def test_merge_refuses_a_variant_twice_and_other_settings(tmp_path):
    a = _part(tmp_path / "a.json", "2026-12-07T01:00:00+00:00", "aaaaaaa", ["recipe"])
    b = _part(tmp_path / "b.json", "2026-12-07T02:00:00+00:00", "bbbbbbb", ["recipe"])
    with pytest.raises(SystemExit, match="'recipe' is in more than one file"):
        ulmfit_ablation.merge([a, b], str(tmp_path))
    c = _part(tmp_path / "c.json", "2026-12-07T02:00:00+00:00", "ccccccc", ["no <bos>"], seeds=(0, 1))
    with pytest.raises(SystemExit, match="differs from .* in seeds"):
        ulmfit_ablation.merge([a, c], str(tmp_path))
