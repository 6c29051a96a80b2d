"""The trainer's loggers and callbacks: log.jsonl, log.csv (its header grown by evaluation rows) and
TensorBoard events hold every logged row; a resumed run's files hold no row twice; callbacks see every
step, evaluation and checkpoint; bad names and callbacks are refused naming what is wrong."""
import csv
import json
import logging

import pytest
import torch

from fastseq.models import CausalLM, CausalLMConfig
from fastseq.train import TrainConfig, Trainer

V = 19


def _model():
    torch.manual_seed(0)
    return CausalLM(CausalLMConfig(V, 16, 2, 1, max_len=16))


def _batches(i):
    return {"tokens": torch.randint(0, V, (4, 9), generator=torch.Generator().manual_seed(i))}


def _loss(model, batch):
    return model.loss(batch["tokens"])


def _evaluate(model):
    return {"loss": model.loss(_batches(-1)["tokens"]).item()}


def _config(folder, **kw):
    return TrainConfig(**{**dict(steps=6, lr=1e-2, log_every=2, eval_every=3, out_dir=str(folder), progress=False,
                                 loggers=["jsonl", "csv"]), **kw})


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_jsonl_and_csv_hold_every_row_and_a_resume_writes_none_twice(tmp_path):
    history = Trainer(_model(), _config(tmp_path / "a"), _batches, _loss, _evaluate).fit()
    rows = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl")]
    assert rows == json.loads(json.dumps(history))
    table = _csv(tmp_path / "a" / "log.csv")
    assert [int(r["step"]) for r in table] == [r["step"] for r in history]
    assert set(table[0]) == {k for r in history for k in r}  # evaluation's keys joined the header
    for row, written in zip(history, table):
        for k, v in row.items():
            assert float(written[k]) == pytest.approx(v, rel=1e-12)

    def crashing(i):
        if i == 4:
            raise KeyboardInterrupt
        return _batches(i)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_model(), _config(tmp_path / "b", checkpoint_every=3), crashing, _loss, _evaluate).fit()
    Trainer(_model(), _config(tmp_path / "b", checkpoint_every=3), _batches, _loss, _evaluate).fit()
    steps = [int(r["step"]) for r in _csv(tmp_path / "b" / "log.csv")]
    assert steps == [r["step"] for r in history]  # the rows after the checkpoint once, not twice
    assert [json.loads(x)["step"] for x in open(tmp_path / "b" / "log.jsonl")] == steps


def test_tensorboard_events_hold_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = Trainer(_model(), _config(tmp_path, loggers=["tensorboard"]), _batches, _loss, _evaluate).fit()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in history if "loss" in r]
    assert [e.step for e in events.Scalars("eval_loss")] == [3, 6]
    assert not (tmp_path / "log.jsonl").exists()


class Recorder:
    def __init__(self):
        self.seen = []

    def on_step(self, trainer, row):
        assert trainer.step == row["step"]
        self.seen.append(("step", row["step"], row["loss"] > 0, row["lr"]))

    def on_eval(self, trainer, metrics):
        self.seen.append(("eval", trainer.step, "eval_loss" in metrics))

    def on_checkpoint(self, trainer, path):
        self.seen.append(("checkpoint", trainer.step, path.endswith("checkpoint.pt")))


def test_callbacks_see_every_step_evaluation_and_checkpoint(tmp_path, caplog):
    recorder = Recorder()
    with caplog.at_level(logging.INFO, logger="fastseq.train"):
        Trainer(_model(), _config(tmp_path, checkpoint_every=4, lr=1e-3), _batches, _loss, _evaluate,
                callbacks=[recorder]).fit()
    kinds = [(s[0], s[1]) for s in recorder.seen]
    assert [s for k, s in kinds if k == "step"] == [1, 2, 3, 4, 5, 6]
    assert [s for k, s in kinds if k == "eval"] == [3, 6]
    assert [s for k, s in kinds if k == "checkpoint"] == [4, 6, 6]  # the final one again with the final metrics
    assert all(s[2] for s in recorder.seen) and {s[3] for s in recorder.seen if s[0] == "step"} == {1e-3}
    assert kinds.index(("checkpoint", 6)) < kinds.index(("eval", 6))  # the checkpoint before the evaluation
    lines = [r.getMessage() for r in caplog.records if r.name == "fastseq.train"]
    assert any(line.startswith("step=2  loss=") for line in lines) and any("eval_loss=" in line for line in lines)


def test_a_callback_stops_the_fit_early(tmp_path):
    """trainer.stop set by a callback (early stopping) ends the fit after that step: no later step runs or
    is logged."""
    class StopAtFirstEval:
        def on_eval(self, trainer, metrics):
            trainer.stop = True

    recorder = Recorder()
    trainer = Trainer(_model(), _config(tmp_path), _batches, _loss, _evaluate, callbacks=[StopAtFirstEval(), recorder])
    history = trainer.fit()
    assert trainer.step == 3 and [s[1] for s in recorder.seen if s[0] == "step"] == [1, 2, 3]
    assert max(r["step"] for r in history) == 3


def test_bad_loggers_and_callbacks_are_refused_by_name(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown logger 'wandb'"):
        _config(tmp_path, loggers=["jsonl", "wandb"])
    with pytest.raises(ValueError, match="names one twice"):
        _config(tmp_path, loggers=["csv", "csv"])
    with pytest.raises(ValueError, match="loggers must be a list"):
        _config(tmp_path, loggers=[1])
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'fastseq\[tensorboard\]'"):
        _config(tmp_path, loggers=["tensorboard"])
    monkeypatch.undo()
    with pytest.raises(TypeError, match=r"callbacks\[0\] \(object\) has none of"):
        Trainer(_model(), _config(tmp_path), _batches, _loss, callbacks=[object()])
    bad = type("Bad", (), {"on_step": 3})()
    with pytest.raises(TypeError, match=r"callbacks\[0\].on_step is not callable"):
        Trainer(_model(), _config(tmp_path), _batches, _loss, callbacks=[bad])


def test_a_callback_can_end_the_run_early(tmp_path):
    class StopAtStep4:  # the README's pattern: shorten config.steps from a hook
        def on_step(self, trainer, row):
            if row["step"] == 4:
                trainer.config.steps = trainer.step

    history = Trainer(_model(), _config(tmp_path, eval_every=0), _batches, _loss, _evaluate,
                      callbacks=[StopAtStep4()]).fit()
    assert [r["step"] for r in history if "loss" in r and "eval_loss" not in r] == [2, 4]
    assert history[-1] == {"step": 4, **{k: history[-1][k] for k in history[-1] if k != "step"}}
    assert "eval_loss" in history[-1]  # the last step's evaluation and checkpoint still come
    assert (tmp_path / "checkpoint.pt").exists()
