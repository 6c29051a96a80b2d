"""The `fastseq` command on tiny settings: every example config trains (a few steps, shrunken models), the
run folder reopens for `eval` and `generate`/`translate`, and bad configs fail naming what is wrong. The
commands run in this process (fastseq.cli.main), except under torchrun."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from fastseq import cli

# configs, BPE, BLEU: installed by make test, not on every GPU image
for _module in ("yaml", "tokenizers", "sacrebleu"):
    pytest.importorskip(_module)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".yaml") and "ulmfit" not in f)
ULMFIT = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.startswith("ulmfit"))
SHRINK = {  # per model class: settings that make a run take seconds
    "CausalLM": ["model.d_model=32", "model.num_heads=2", "model.num_layers=1", "data.block=32", "data.batch=4"],
    "LSTMLM": ["model.embed_dim=16", "model.hidden_size=32", "model.num_layers=2", "data.block=32", "data.batch=4"],
    "MaskedLM": ["model.d_model=32", "model.num_heads=2", "model.num_layers=1", "data.block=32", "data.batch=4"],
    "Transformer": ["model.d_model=32", "model.num_heads=2", "model.num_encoder_layers=1", "model.num_decoder_layers=1",
                    "model.dim_feedforward=64", "data.tokenizer.vocab_size=500", "data.max_tokens=512",
                    "data.eval_sentences=4", "generate.max_new_tokens=6", "generate.beams=2"],
    "Seq2Seq": ["model.embed_dim=16", "model.hidden_size=32", "data.tokenizer.vocab_size=500", "data.max_tokens=512",
                "data.eval_sentences=4", "generate.max_new_tokens=6", "generate.beams=2"],
    "classify": ["model.body.embed_dim=16", "model.body.hidden_size=32", "data.max_tokens=512"],
}


def fastseq(*args):
    """`fastseq ARGS`, in this process -> returncode, stdout, stderr (an error's message in stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli.main([a.replace("configs/", f"{ROOT}/configs/", 1) if a.startswith("configs/") else a
                             for a in args])
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # what `python -m fastseq` would print in its traceback's last line
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
            code = 1
    return SimpleNamespace(returncode=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def _kind(config_name):
    import yaml

    config = yaml.safe_load(open(os.path.join(ROOT, "configs", config_name)))
    return "classify" if config["task"] == "classify" else config["model"]["class"], config["task"]


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_trains_evaluates_and_generates(config, tmp_path):
    kind, task = _kind(config)
    sets = [f"--set={s}" for s in SHRINK[kind] + ["train.steps=3", "train.eval_every=0", "train.log_every=1",
                                                   "train.precision=fp32", "train.progress=false"]]
    out = fastseq("train", "--config", f"configs/{config}", "--out", str(tmp_path), "--device", "cpu", *sets)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final: eval_" in out.stdout
    assert {"model.pt", "tokenizer.json", "config.json", "log.jsonl", "checkpoint.pt"} <= set(os.listdir(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in rows if "loss" in r and "eval_loss" not in r] == [1, 2, 3]
    split = "valid" if task != "seq2seq" else "val"
    out = fastseq("eval", str(tmp_path), "--split", {"masked_lm": "test", "classify": "test"}.get(task, split),
                  "--limit", "16")
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"causal_lm": "perplexity", "masked_lm": "masked_accuracy", "seq2seq": "bleu",
            "classify": "accuracy"}[task] in metrics
    if task == "seq2seq":  # the hypotheses written, the signature reported, generation overridable
        out = fastseq("eval", str(tmp_path), "--split", split, "--limit", "5", "--hypotheses", str(tmp_path / "h.txt"),
                      "--method", "greedy", "--max-new-tokens", "3")
        assert out.returncode == 0, out.stderr[-3000:]
        metrics = json.loads(out.stdout.strip().splitlines()[-1])
        assert metrics["signature"].startswith("nrefs:1") and metrics["generation"]["method"] == "greedy"
        assert len((tmp_path / "h.txt").read_text().splitlines()) == 5
    if task in ("causal_lm", "seq2seq"):
        out = fastseq("generate" if task == "causal_lm" else "translate", str(tmp_path), "A man is",
                      "--max-new-tokens", "5", "--seed", "0")
        assert out.returncode == 0 and out.stdout.count("\n") == 1, out.stderr[-3000:]  # one line (maybe empty)
        # a file in, batched by length, outputs in input order: as one at a time (greedy), and fairseq's lines
        sources = tmp_path / "in.txt"
        sources.write_text("A man is\nTwo dogs run in the park\nA\nThe woman is\n")
        command = "generate" if task == "causal_lm" else "translate"
        outputs = {}
        for size in ("1", "3"):
            out = fastseq(command, str(tmp_path), "--input", str(sources), "--output", str(tmp_path / f"out{size}.txt"),
                          "--batch-size", size, "--method", "greedy", "--max-new-tokens", "4")
            assert out.returncode == 0, out.stderr[-3000:]
            outputs[size] = (tmp_path / f"out{size}.txt").read_text().splitlines()
        assert len(outputs["3"]) == 4 and outputs["3"] == outputs["1"]
        out = fastseq(command, str(tmp_path), "A man is", "--print-scores", "--method", "greedy",
                      "--max-new-tokens", "4")
        assert out.stdout.startswith("S-0\tA man is\nH-0\t"), out.stdout
        # the n best, each an H- line (score = its tokens' log-probabilities / length ** penalty) and a P- line
        out = fastseq(command, str(tmp_path), "A man is", "Two dogs", "--print-scores", "--method", "beam", "--beams",
                      "3", "--n-best", "2", "--max-new-tokens", "4", "--length-penalty", "0.5", "--early-stopping",
                      "false")
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.splitlines()
        assert [line.split("\t")[0] for line in lines] == ["S-0", "H-0", "P-0", "H-0", "P-0", "S-1", "H-1", "P-1",
                                                           "H-1", "P-1"], lines
        for h, p in ((lines[1], lines[2]), (lines[3], lines[4]), (lines[6], lines[7])):
            token_scores = [float(x) for x in p.split("\t")[1].split()]
            assert float(h.split("\t")[1]) == pytest.approx(sum(token_scores) / len(token_scores) ** 0.5, abs=2e-3)
        out = fastseq(command, str(tmp_path), "A man is", "--method", "beam", "--n-best", "3", "--max-new-tokens", "4")
        assert out.returncode == 0 and out.stdout.count("\n") == 3, out.stderr[-3000:]
        out = fastseq(command, str(tmp_path), "A", "--method", "beam", "--beams", "2", "--n-best", "3")
        assert out.returncode == 2 and "num_return_sequences must be <= beams (2)" in out.stderr, out.stderr[-3000:]


def test_an_override_that_changes_nothing_says_why(tmp_path):
    sets = [f"--set={s}" for s in SHRINK["LSTMLM"] + ["train.steps=1", "train.eval_every=0", "train.precision=fp32",
                                                      "train.progress=false", "model.num_layers=1",
                                                      "model.tie_weights=true", "model.hidden_size=77"]]
    with pytest.warns(UserWarning, match="hidden_size=77 changes nothing"):
        out = fastseq("train", "--config", "configs/char_lstm_shakespeare.yaml", "--out", str(tmp_path), "--device",
                      "cpu", *sets)
    assert out.returncode == 0, out.stderr[-2000:]


def test_bad_configs_fail_clearly(tmp_path):
    cases = {"task: translate\n": "task must be one of",
             "task: causal_lm\ndata: {dataset: tinyshakespeare, train: train, valid: val}\nmodel: {class: Seq2Seq}\n":
                 "model.class for causal_lm must be one of",
             "task: causal_lm\ndata: {dataset: tinyshakespeare, train: train, valid: val}\nmodel: {depth: 3}\n":
                 r"CausalLM has no settings \['depth'\]",
             "task: causal_lm\ndata: {dataset: tinyshakespeare, train: train, valid: val}\nmodel: {}\n"
             "train: {steps: 0}\n": "steps must be an int >= 1",
             "task: causal_lm\nmodel: {}\ndata: {files: {train: /nonexistent.txt, valid: /nonexistent.txt}}\n":
                 "no such data file: /nonexistent.txt",
             "task: [unclosed\n": "not valid YAML"}
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text)
        out = fastseq("train", "--config", str(path), "--out", str(tmp_path / f"run{i}"))
        assert out.returncode != 0, text
        assert message.replace("\\", "") in out.stderr.replace("\\", ""), (text, out.stderr[-500:])
    out = fastseq("eval", str(tmp_path / "nothing"))
    assert out.returncode != 0 and "is not a finished fastseq run" in out.stderr


@pytest.mark.parametrize("config", ULMFIT)
def test_ulmfit_runs_three_stages(config, tmp_path):
    sets = [f"--set={s}" for s in ("model.embed_dim=16", "model.hidden_size=32", "pretrain.steps=3", "finetune.steps=3",
                                   "classify.steps_per_stage=2", "pretrain.precision=fp32", "finetune.precision=fp32",
                                   "progress=false",  # a small general corpus: pairs and labelled text
                                   "general=[{dataset: multi30k, split: val, side: 0}, {dataset: trec, split: test}]")]
    out = fastseq("ulmfit", "--config", f"configs/{config}", "--out", str(tmp_path), "--device", "cpu", *sets)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "classify stage 5/5" in out.stdout and "eval_accuracy=" in out.stdout
    assert {"pretrain", "finetune", "classify", "model.pt", "tokenizer.json"} <= set(os.listdir(tmp_path))
    out = fastseq("eval", str(tmp_path), "--split", "test", "--limit", "50")
    assert out.returncode == 0, out.stderr[-3000:]
    assert 0 <= json.loads(out.stdout.strip().splitlines()[-1])["accuracy"] <= 1


def test_ulmfit_pretrains_once_and_reuses_the_lm(tmp_path):
    """stages: [pretrain] leaves the general LM (model.pt, tokenizer.json) in out/pretrain; a later run with
    pretrained: that folder skips stage 1 and adds the task's new words to the LM's vocabulary."""
    from fastseq import data

    tiny = [f"--set={s}" for s in ("model.embed_dim=16", "model.hidden_size=32", "pretrain.steps=3", "finetune.steps=3",
                                   "classify.steps_per_stage=2", "pretrain.precision=fp32", "finetune.precision=fp32",
                                   "progress=false", "general=[{dataset: multi30k, split: val, side: 0}]")]
    lm_dir = tmp_path / "lm"
    out = fastseq("ulmfit", "--config", "configs/ulmfit_trec.yaml", "--out", str(lm_dir), "--device", "cpu", *tiny,
                  "--set=stages=[pretrain]")
    assert out.returncode == 0, out.stderr[-3000:]
    assert {"model.pt", "tokenizer.json"} <= set(os.listdir(lm_dir / "pretrain"))
    assert "classify" not in os.listdir(lm_dir)
    general = data.load_tokenizer(lm_dir / "pretrain" / "tokenizer.json")
    out = fastseq("ulmfit", "--config", "configs/ulmfit_trec.yaml", "--out", str(tmp_path / "trec"), "--device", "cpu",
                  *tiny, f"--set=pretrained={lm_dir / 'pretrain'}", "--set=stages=[finetune, classify]")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ulmfit pretrain" not in out.stdout and "classify stage" in out.stdout
    task = data.load_tokenizer(tmp_path / "trec" / "tokenizer.json")
    assert task.words[:len(general.words)] == general.words and task.vocab_size > general.vocab_size
    out = fastseq("eval", str(tmp_path / "trec"), "--split", "test", "--limit", "50")
    assert out.returncode == 0, out.stderr[-3000:]
    out = fastseq("ulmfit", "--config", "configs/ulmfit_trec.yaml", "--out", str(tmp_path / "bad"), "--device", "cpu",
                  *tiny, f"--set=pretrained={tmp_path / 'nowhere'}", "--set=stages=[finetune, classify]")
    assert out.returncode == 2 and "has no model.pt" in out.stderr, out.stderr[-2000:]


def test_baseline_and_bench_commands(tmp_path):
    out = fastseq("ngram", "--train", "trec:train", "--test", "trec:test", "--order", "2")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["order"] == 2 and 1 < result["perplexity"] < result["vocab"]
    out = fastseq("word2vec", "--data", "trec:train", "--steps", "20", "--dim", "16", "--query", "what", "zzzz",
                  "--save", str(tmp_path / "w2v.pt"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "what: " in out.stdout and "zzzz: not in the vocabulary" in out.stdout
    assert (tmp_path / "w2v.pt").exists() and (tmp_path / "w2v.tokenizer.json").exists()
    # the sweep runs from the package, wherever the command is: its files land in the current folder, named
    # with the date, the commit of the package's checkout and the preset
    (tmp_path / "bench").mkdir()
    out = subprocess.run([sys.executable, "-m", "fastseq", "bench", "--ops", "models", "--preset", "quick"],
                         capture_output=True, text=True, cwd=tmp_path / "bench", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (name,) = [f for f in os.listdir(tmp_path / "bench") if f.endswith(".json")]
    meta = json.loads((tmp_path / "bench" / name).read_text())["meta"]
    assert name.startswith("models-cpu-quick-") and meta["commit"] in name and meta["commit"] != "unknown"


def test_train_under_torchrun_two_processes(tmp_path):
    sets = [f"--set={s}" for s in SHRINK["CausalLM"] + ["train.steps=4", "train.eval_every=0", "train.log_every=1",
                                                        "train.precision=fp32",
                                                        "train.progress=false"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "fastseq",
                          "train", "--config", "configs/char_transformer_shakespeare.yaml", "--out", str(tmp_path),
                          "--device", "cpu", *sets], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("fastseq train:") == 1 and out.stdout.count("final: eval_") == 1  # rank 0 speaks
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in rows if "loss" in r and "eval_loss" not in r] == [1, 2, 3, 4]


def test_tune_measures_a_configs_shapes_and_info_lists_them(tmp_path, monkeypatch):
    """`fastseq tune` runs a config's first batches, forward and backward: the LSTM LM's layer calls are
    measured (torch's kernel and the C++ one) and kept; `fastseq info` then lists the bucket."""
    from fastseq.ops import tuning

    monkeypatch.setenv("FASTSEQ_CACHE", str(tmp_path / "choices.json"))
    monkeypatch.setenv("FASTSEQ_AUTOTUNE", "1")
    tuning.forget()
    sets = [f"--set={s}" for s in SHRINK["LSTMLM"] + ["train.precision=fp32"]]
    out = fastseq("tune", "--config", "configs/char_lstm_shakespeare.yaml", "--batches", "1", "--device", "cpu", *sets)
    assert out.returncode == 0, out.stderr
    assert "new shape bucket(s)" in out.stdout and re.search(r"lstm\|cpu/\d+t\|float32\|grad\|32x4x", out.stdout)
    (bucket, measured), *_ = tuning.choices().items()
    assert set(measured.times_ms) == {"torch", "cpu"}
    listed = fastseq("info")
    assert bucket in listed.stdout and f"-> {measured.backend}" in listed.stdout
    monkeypatch.setenv("FASTSEQ_AUTOTUNE", "0")
    off = fastseq("tune", "--config", "configs/char_lstm_shakespeare.yaml", "--device", "cpu", *sets)
    assert off.returncode != 0 and "FASTSEQ_AUTOTUNE=0" in off.stderr
    tuning.forget()


def test_version_and_a_help_that_imports_no_torch():
    import subprocess
    import time

    out = subprocess.run([sys.executable, "-m", "fastseq", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip().startswith("fastseq ")
    probe = ("import sys, fastseq.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print('torch' in sys.modules)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "False", out.stderr
    assert elapsed < 3.0  # a loaded machine's bound; the point is above: torch is not imported


def test_usage_errors_exit_2_and_failures_while_running_exit_1(monkeypatch, tmp_path):
    out = fastseq("train", "--config", "configs/char_transformer_shakespeare.yaml", "--set=train.steps=-1",
                  "--device=cpu", "--out", str(tmp_path))
    assert out.returncode == 2 and "steps" in out.stderr
    from fastseq.train import tasks

    def broken(*args, **kwargs):
        raise RuntimeError("the device went away")

    monkeypatch.setattr(tasks, "build_run", broken)
    out = fastseq("train", "--config", "configs/char_transformer_shakespeare.yaml", "--device=cpu", "--out",
                  str(tmp_path))
    assert out.returncode == 1 and "RuntimeError: the device went away" in out.stderr


def test_a_missing_optional_package_is_named_before_training(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sacrebleu" else real(name, *a))
    out = fastseq("train", "--config", "configs/seq2seq_multi30k.yaml", "--out", str(tmp_path), "--device=cpu")
    assert out.returncode == 2 and "needs sacrebleu" in out.stderr and "fastseq[text]" in out.stderr, out.stderr
    assert set(os.listdir(tmp_path)) <= {".lock"}  # nothing written but the lock


def test_every_option_has_help():
    import argparse

    parser_actions = []
    original = argparse.ArgumentParser.add_argument

    def record(self, *args, **kwargs):
        action = original(self, *args, **kwargs)
        parser_actions.append(action)
        return action

    argparse.ArgumentParser.add_argument = record
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.main(["--help"])
            except SystemExit:
                pass
    finally:
        argparse.ArgumentParser.add_argument = original
    missing = [a.option_strings or a.dest for a in parser_actions if not a.help and a.dest != "version"]
    assert parser_actions and not missing, missing


def test_train_writes_the_loggers_a_config_names(tmp_path):
    sets = [f"--set={s}" for s in SHRINK["CausalLM"] + ["train.steps=4", "train.eval_every=2", "train.log_every=1",
                                                        "train.precision=fp32", "train.progress=false",
                                                        "train.loggers=[jsonl, csv, tensorboard]"]]
    out = subprocess.run([sys.executable, "-m", "fastseq", "train", "--config",
                          "configs/char_transformer_shakespeare.yaml", "--out", str(tmp_path), "--device", "cpu",
                          *sets], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    files = os.listdir(tmp_path)
    assert {"log.jsonl", "log.csv"} <= set(files) and any(f.startswith("events.out.tfevents.") for f in files)
    header = open(tmp_path / "log.csv").readline().strip().split(",")
    assert header[:2] == ["step", "loss"] and "eval_loss" in header
    bad = fastseq("train", "--config", "configs/char_transformer_shakespeare.yaml", "--out", str(tmp_path / "b"),
                  "--set=train.loggers=[mlflow]")
    assert bad.returncode == 2 and "unknown logger 'mlflow'" in bad.stderr
