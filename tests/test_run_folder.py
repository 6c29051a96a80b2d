"""A run never loses work: the checkpoint comes before the evaluation that may fail, a resumed run's log
holds each row once, a run folder has one owner at a time and resumes only under its own config (or
--fresh / --allow-change), identical runs give identical models, files share one mode, and every bad
config value is one line naming its key."""
import json
import multiprocessing
import os
import stat

import pytest
import torch
from test_cli import fastseq
from test_train import _batches, _config, _loss, _model

from fastseq import cli, models
from fastseq.train import TrainConfig, Trainer
from fastseq.train.run_folder import RunFolder, RunFolderBusy

TINY = ["--set=model.d_model=16", "--set=model.num_heads=2", "--set=model.num_layers=1", "--set=data.block=16",
        "--set=data.batch=4", "--set=data.eval_batches=1", "--set=train.steps=3", "--set=train.log_every=1",
        "--set=train.progress=false", "--set=train.eval_every=0", "--device=cpu"]
CONFIG = "configs/char_transformer_shakespeare.yaml"


def test_a_failing_final_evaluation_keeps_the_checkpoint_and_the_model(tmp_path):
    saved = []

    def failing(model):
        raise RuntimeError("evaluation broke")

    trainer = Trainer(_model(), _config(tmp_path, eval_every=0), _batches, _loss, failing,
                      on_save=lambda: saved.append(trainer.step))
    with pytest.raises(RuntimeError, match="evaluation broke"):
        trainer.fit()
    assert saved == [8]  # the checkpoint of the last step, written (and the run's model with it) before
    assert Trainer(_model(seed=3), _config(tmp_path), _batches, _loss).step == 8


def test_kill_and_resume_logs_every_row_once(tmp_path):
    def crashing(i):
        if i == 5:
            raise KeyboardInterrupt
        return _batches(i)

    config = _config(tmp_path, log_every=1, checkpoint_every=3, eval_every=0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_model(), config, crashing, _loss).fit()
    steps = [json.loads(line)["step"] for line in open(tmp_path / "log.jsonl")]
    assert steps == [1, 2, 3, 4, 5]  # rows 4 and 5 were logged after the last checkpoint
    Trainer(_model(), config, _batches, _loss).fit()
    steps = [json.loads(line)["step"] for line in open(tmp_path / "log.jsonl")]
    assert steps == list(range(1, 9))


def test_checkpoints_are_written_by_default_during_long_runs():
    assert TrainConfig().checkpoint_every > 0


def _hold(path, ready, release):
    with RunFolder(path):
        ready.set()
        release.wait(30)


def test_a_run_folder_has_one_owner_and_a_killed_owner_frees_it(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(60)
    with pytest.raises(RunFolderBusy, match=rf"in use by another fastseq process \(pid {holder.pid}\)"):
        with RunFolder(str(tmp_path)):
            pass
    holder.kill()  # killed, not released: the kernel drops its lock
    holder.join()
    with RunFolder(str(tmp_path)):
        pass


def _train_steps(folder):
    """The steps of the training rows of a run's log."""
    return [row["step"] for row in map(json.loads, open(folder / "log.jsonl")) if "loss" in row]


def test_resume_refuses_another_config_unless_fresh_or_allowed(tmp_path):
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY)
    assert out.returncode == 0, out.stderr[-2000:]
    before = (tmp_path / "model.pt").read_bytes()
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY, "--set=train.lr=0.5")
    assert out.returncode == 2 and "train.lr: 0.001 -> 0.5" in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1  # one line, no traceback
    assert (tmp_path / "model.pt").read_bytes() == before  # nothing rewritten around the old weights
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY, "--set=train.steps=4",
                  "--allow-change=train.steps")
    assert out.returncode == 0, out.stderr[-2000:]
    assert _train_steps(tmp_path)[-1] == 4
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY, "--set=train.lr=0.5", "--fresh")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.load(open(tmp_path / "config.json"))["train"]["lr"] == 0.5
    assert _train_steps(tmp_path) == [1, 2, 3]


def test_two_identical_runs_give_identical_models_and_logs(tmp_path):
    for name in ("a", "b"):
        out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path / name), *TINY)
        assert out.returncode == 0, out.stderr[-2000:]
    a, b = (models.load(tmp_path / name / "model.pt") for name in ("a", "b"))
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), key
    strip = lambda name: [{k: v for k, v in json.loads(r).items() if k not in ("tokens_per_s", "elapsed_s")}  # noqa
                          for r in open(tmp_path / name / "log.jsonl")]
    assert strip("a") == strip("b")


def test_run_files_share_one_mode(tmp_path):
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY)
    assert out.returncode == 0, out.stderr[-2000:]
    modes = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in
             ("log.jsonl", "checkpoint.pt", "model.pt", "tokenizer.json", "config.json")}
    assert len(set(modes.values())) == 1, modes


@pytest.mark.parametrize("setting,message", [
    ("train.lr=3e-4", None),  # YAML reads 3e-4 as a string: taken as the number
    ("train.lr=fast", "TrainConfig: lr must be a number >= 0, got 'fast'"),
    ("train.steps=true", "TrainConfig: steps must be an int >= 1, got True"),
    ("train.betas=[0.9]", "TrainConfig: betas must be two numbers in [0, 1)"),
    ("train.weight_decay=-1", "TrainConfig: weight_decay must be a number >= 0, got -1"),
    ("train.grad_clip=[1]", "TrainConfig: grad_clip must be a number >= 0"),
    ("train.stpes=3", "config: train: unknown key 'stpes'; did you mean 'steps'?"),
    ("data.blok=8", "config: data: unknown key 'blok'; did you mean 'block'?"),
    ("data.block=-4", "config: data.block must be an int >= 1, got -4"),
    ("data.batch=2.5", "config: data.batch must be an int >= 1, got 2.5"),
    ("data.block=5000000", "the training text holds"),
    ("data.tokenizer.kind=bpe", None),
    ("data.tokenizer.vocab=40", "config: data.tokenizer (char): unknown key 'vocab'"),
    ("generate.beam=3", "config: generate: unknown key 'beam'; did you mean 'beams'?"),
    ("generate.top_p=2", "config: generate.top_p must lie in (0, 1], got 2"),
    ("model.d_modle=16", "CausalLM has no settings ['d_modle']; did you mean 'd_model'?"),
    ("evaluate=1", "config: the top level: unknown key 'evaluate'"),
])
def test_config_errors_are_one_line_naming_the_key_before_any_work(tmp_path, setting, message):
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY, f"--set={setting}")
    if message is None:
        assert out.returncode == 0, out.stderr[-2000:]
        return
    assert out.returncode == 2, out.stdout[-500:]
    assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "config.json").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="unknown key 'stpes'"):
        cli.main(["train", "--config", os.path.join(os.path.dirname(__file__), "..", CONFIG), "--out",
                  str(tmp_path), *TINY, "--set=train.stpes=3", "--debug"])


@pytest.mark.parametrize("content,message", [(b"\xff\xfe not text", "not UTF-8 text"), (b"PK\x03\x04trunc", None)])
def test_broken_files_name_themselves(tmp_path, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    if message:
        out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path / "run"), *TINY,
                      f"--set=data={{files: {{train: {bad}, valid: {bad}}}, block: 16, batch: 4}}")
        assert out.returncode == 2 and f"{bad}: {message}" in out.stderr, out.stderr
    else:
        with pytest.raises(ValueError, match=f"{bad}: not a readable fastseq model file"):
            models.load(bad)


def test_labels_outside_the_classes_are_refused_before_training(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("0 a good film\n1 a bad film\n-1 an odd film\n1 so bad\n")
    out = fastseq("train", "--config", "configs/classify_trec.yaml", "--out", str(tmp_path / "run"), "--device=cpu",
                  f"--set=data={{files: {{train: {train}, valid: {train}}}, labelled: true}}")
    assert out.returncode == 2 and "hold label -1, outside [0, num_classes = 2)" in out.stderr, out.stderr


def test_a_tokenizer_from_another_run_is_refused(tmp_path):
    for name, width in (("a", "--set=data.tokenizer.kind=char"), ("b", "--set=data.dataset=wikitext-2")):
        sets = [width] if name == "a" else [width, "--set=data.train=valid", "--set=data.valid=test"]
        out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path / name), *TINY, *sets)
        assert out.returncode == 0, out.stderr[-2000:]
    (tmp_path / "a" / "tokenizer.json").write_bytes((tmp_path / "b" / "tokenizer.json").read_bytes())
    out = fastseq("generate", str(tmp_path / "a"), "ROMEO:", "--max-new-tokens", "3")
    assert out.returncode == 2 and "the two files are not from one run" in out.stderr, out.stderr


# ----------------------------------------------------------------- nothing lost before every check

def _files(path):
    return {name: (path / name).read_bytes() for name in ("checkpoint.pt", "model.pt", "tokenizer.json",
                                                          "config.json", "log.jsonl") if (path / name).exists()}


def _text_run(tmp_path, text, *extra):
    train = tmp_path / "train.txt"
    train.write_text(text)
    return fastseq("train", "--config", CONFIG, "--out", str(tmp_path / "run"),
                   f"--set=data={{files: {{train: {train}, valid: {train}}}, tokenizer: {{kind: char}}}}", *TINY,
                   *extra)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a device this machine lacks")
def test_fresh_on_a_missing_device_touches_nothing(tmp_path):
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY)
    assert out.returncode == 0, out.stderr[-2000:]
    before = _files(tmp_path)
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY, "--fresh", "--device=cuda")
    assert out.returncode == 2 and "--device cuda: this machine has no CUDA device" in out.stderr, out.stderr
    assert _files(tmp_path) == before
    assert not list(tmp_path.glob("previous-*"))


def test_fresh_moves_the_earlier_run_aside(tmp_path):
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY)
    assert out.returncode == 0, out.stderr[-2000:]
    before = _files(tmp_path)
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY, "--fresh", "--set=train.lr=0.01")
    assert out.returncode == 0, out.stderr[-2000:]
    (aside,) = tmp_path.glob("previous-*")
    assert _files(aside) == before  # every file of the earlier run, byte for byte
    assert json.load(open(tmp_path / "config.json"))["train"]["lr"] == 0.01


def test_a_failed_allow_change_writes_nothing_and_the_original_command_still_resumes(tmp_path):
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY)
    assert out.returncode == 0, out.stderr[-2000:]
    before = _files(tmp_path)
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY, "--set=model.d_model=32",
                  "--allow-change=model.d_model")
    assert out.returncode == 2 and "does not match this one" in out.stderr, out.stderr
    assert _files(tmp_path) == before
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY, "--set=train.steps=4",
                  "--allow-change=train.steps")
    assert out.returncode == 0, out.stderr[-2000:]
    assert _train_steps(tmp_path)[-1] == 4


def test_an_allowed_lr_change_is_applied_on_resume(tmp_path):
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY, "--set=train.schedule=constant",
                  "--set=train.warmup=0")
    assert out.returncode == 0, out.stderr[-2000:]
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY, "--set=train.schedule=constant",
                  "--set=train.warmup=0", "--set=train.steps=5", "--set=train.lr=0.0123",
                  "--set=train.weight_decay=0.2",
                  "--allow-change=train.steps", "--allow-change=train.lr", "--allow-change=train.weight_decay")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    lrs = {r["step"]: r["lr"] for r in rows if "lr" in r}
    assert lrs[4] == pytest.approx(0.0123) and lrs[5] == pytest.approx(0.0123) and lrs[3] != pytest.approx(0.0123)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    decays = [g["weight_decay"] for g in state["optimizer"]["param_groups"]]  # biases, norms, embeddings: none
    assert 0.2 in decays and set(decays) <= {0.2, 0.0}, decays


def test_configs_are_compared_as_values(tmp_path):
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY, "--set=train.lr=1e-3")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.load(open(tmp_path / "config.json"))["train"]["lr"] == 0.001  # a number, as YAML 1.2 reads it
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY, "--set=train.lr=1.0e-3",
                  "--set=train.steps=4", "--allow-change=train.steps")
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_run_that_failed_before_its_first_checkpoint_binds_no_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"task": "causal_lm", "train": {"lr": 9.0}}))
    (tmp_path / "log.jsonl").write_text("")
    out = fastseq("train", "--config", CONFIG, "--out", str(tmp_path), *TINY)
    assert out.returncode == 0, out.stderr[-2000:]
    (aside,) = tmp_path.glob("previous-*")
    assert json.load(open(aside / "config.json"))["train"]["lr"] == 9.0  # kept, not overwritten
    assert _train_steps(tmp_path) == [1, 2, 3]


def test_resuming_after_the_data_changed_is_refused_naming_both_tokenizers(tmp_path):
    text = "abcdefgh " * 400
    out = _text_run(tmp_path, text)
    assert out.returncode == 0, out.stderr[-2000:]
    before = _files(tmp_path / "run")
    out = _text_run(tmp_path, "stuvwxyz " * 400, "--set=train.steps=4", "--allow-change=train.steps")  # same size
    assert out.returncode == 2 and "is not the checkpoint's" in out.stderr and "char, 9 entries" in out.stderr, \
        out.stderr
    assert _files(tmp_path / "run") == before
    out = _text_run(tmp_path, text, "--set=train.steps=4", "--allow-change=train.steps")
    assert out.returncode == 0, out.stderr[-2000:]


def test_set_into_a_setting_names_it():
    out = fastseq("train", "--config", CONFIG, "--set=train.steps.x=1", "--device=cpu")
    assert out.returncode == 2 and "train.steps is a setting (5000), not a section" in out.stderr, out.stderr
