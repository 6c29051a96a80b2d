"""The reproduction runner (experiments/reproduce.py) end to end at tiny scale on the CPU: a training row on
fastseq's layers and on torch.nn's (and the two timed side by side), a baseline row; JSON and the Markdown
table are written, and a later run of one row keeps the others."""
import dataclasses
import json
import os
import sys

import pytest

pytest.importorskip("yaml")  # configs: installed by make test, not on every GPU image
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import reproduce  # noqa: E402


def test_reproduce_tiny_rows(tmp_path):
    assert reproduce.main(["--rows", "char_lstm", "wikitext_kn", "--scale", "tiny", "--limit", "4",
                           "--layers", "fastseq", "torch.nn", "--twin-steps", "2", "--out", str(tmp_path)]) == 0
    (report,) = [p for p in tmp_path.iterdir() if p.suffix == ".json"]
    rows = {r["row"]: r for r in json.loads(report.read_text())["rows"]}
    lstm = rows["char_lstm"]["results"]
    assert set(lstm) == {"fastseq", "torch.nn"}
    for result in lstm.values():
        assert result["steps"] == 3 and result["train_seconds"] > 0 and 0 < result["loss"] < 10
    assert set(lstm["fastseq"]["step_ms"]) == {"fastseq", "torch.nn"}
    assert all(ms > 0 for ms in lstm["fastseq"]["step_ms"].values())
    orders = rows["wikitext_kn"]["results"]["fastseq"]["orders"]
    assert orders["order2"]["perplexity"] < orders["order1"]["perplexity"]
    table = report.with_suffix(".md").read_text()
    assert "| char_lstm |" in table and "| wikitext_kn |" in table

    assert reproduce.main(["--rows", "wikitext_kn", "--scale", "tiny", "--out", str(tmp_path)]) == 0
    rows = [r["row"] for r in json.loads(report.read_text())["rows"]]
    assert rows == ["char_lstm", "wikitext_kn"]


def test_twin_only_times_the_training_rows_alone(tmp_path):
    assert reproduce.main(["--rows", "mt_attention", "wikitext_kn", "--scale", "tiny", "--twin-only",
                           "--twin-steps", "1", "--out", str(tmp_path)]) == 0
    (report,) = tmp_path.iterdir()
    assert report.name == "reproduction-cpu-tiny-steps.json"
    (row,) = json.loads(report.read_text())["rows"]  # the n-gram row has no training steps
    assert row["row"] == "mt_attention" and row["twin_steps"] == 1
    assert set(row["step_ms"]) == {"fastseq", "torch.nn"} and all(ms > 0 for ms in row["step_ms"].values())


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_scale_overrides_are_valid_settings(scale):
    """Every row's overrides at the CPU and GPU-window scales name settings its config has, with values its
    TrainConfig and model config accept (checked without training: those runs take minutes)."""
    from fastseq import models
    from fastseq.models import LSTMLMConfig
    from fastseq.train import TrainConfig
    from fastseq.train import settings as S
    from fastseq.train.tasks import apply_overrides, load_config

    for name, (kind, config_name, *_) in reproduce.ROWS.items():
        if kind not in ("train", "ulmfit"):
            continue
        config = load_config(os.path.join(reproduce.CONFIGS, config_name))
        updated = apply_overrides(config, reproduce.overrides(name, kind, config.get("model", {}).get("class"), scale))
        assert set(updated) == set(config), name  # no misspelled section
        if kind == "train":
            TrainConfig(**updated["train"])
            S.check_data(dict(updated["data"]))
            model = dict(updated["model"])
            if config["task"] != "classify":
                cls = getattr(models, model.pop("class"))
                assert set(model) <= {f.name for f in dataclasses.fields(cls.config_class)}, name
        else:
            LSTMLMConfig(100, **updated["model"])
            for stage in ("pretrain", "finetune"):
                TrainConfig(**{k: v for k, v in updated[stage].items() if k not in ("block", "batch")})


def test_ulmfit_rows_fine_tune_the_general_lm_row(tmp_path):
    """general_lm pretrains the LM alone and reports its held-out loss; trec_ulmfit fine-tunes that LM (and
    says which row to run when it is missing)."""
    assert reproduce.main(["--rows", "general_lm", "trec_ulmfit", "--scale", "tiny", "--limit", "20",
                           "--out", str(tmp_path)]) == 0
    rows = {r["row"]: r for r in json.loads((tmp_path / "reproduction-cpu-tiny.json").read_text())["rows"]}
    assert rows["general_lm"]["results"]["fastseq"]["held_out_loss"] > 0
    assert "pretrained=" + str(tmp_path / "reproduce-runs-tiny" / "general_lm-fastseq" / "pretrain") in \
        rows["trec_ulmfit"]["results"]["fastseq"]["overrides"]
    with pytest.raises(FileNotFoundError, match="run --rows general_lm sst2_ulmfit"):
        reproduce.main(["--rows", "sst2_ulmfit", "--scale", "tiny", "--out", str(tmp_path / "other")])
