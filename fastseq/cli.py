"""The `fastseq` command."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from typing import Optional


def _info(args: argparse.Namespace) -> int:
    from .diagnostics import collect, info

    if args.json:
        print(json.dumps(collect(), indent=2))
    else:
        info()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .train import demo

    demo.run(steps=args.steps, device=args.device, out_dir=args.out)
    return 0


# What the user asked wrongly (an argument, a config value, a file to read): exit 2, as argparse's own errors;
# anything else that fails while a command runs exits 1.
USAGE_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


EARLY_STOPPING_HELP = ("beam search: when a sentence stops: never (exact: as a search that never stops early), "
                       "false (Hugging Face's default: live beams bounded at their present length), true (at "
                       "beams finished hypotheses, as fairseq)")


def _early_stopping(text: str):
    """An argparse type: never, true or false, as generate()'s early_stopping."""
    value = {"never": "never", "true": True, "false": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected never, true or false, got {text!r}")
    return value


def _positive(text: str) -> int:
    """An argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _device(name):
    """The --device asked for, checked to exist here (before any run folder is touched)."""
    import torch

    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise ValueError(f"--device: {name!r} is not a device ({str(e).splitlines()[0]})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__}, "
                             f"CUDA {torch.version.cuda or 'not built'}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"--device: fastseq runs on cpu or cuda, got {name!r}")
    return device


def _owned(out_dir: str, rank0: bool):
    """The run folder's lock, held by rank 0 (every rank of a torchrun job writes through rank 0)."""
    from .train.run_folder import RunFolder

    return RunFolder(out_dir) if rank0 else contextlib.nullcontext()


def _train(args: argparse.Namespace) -> int:
    from .train import Trainer, init_distributed
    from .train.tasks import apply_overrides, build_run, load_config, save_run

    config = apply_overrides(load_config(args.config), args.set or [])
    if args.out:
        config["out_dir"] = args.out
    config.setdefault("out_dir", os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0]))
    distributed = init_distributed()
    device = _device(args.device)
    if distributed and device.type == "cuda":
        import torch

        device = torch.device("cuda", torch.cuda.current_device())
    rank0 = int(os.environ.get("RANK", 0)) == 0
    with _owned(config["out_dir"], rank0) as folder:
        # every check before the folder is touched: the config, the folder's own against it, the tokenizer
        # against the checkpoint's, the checkpoint loaded into this model; then the run begins
        run = build_run(config, device)
        if rank0:
            folder.check(config, fresh=args.fresh, allow=args.allow_change or ())
            folder.check_tokenizer(run.tokenizer.state(), fresh=args.fresh)
        train = dataclasses.replace(run.train, resume=False) if args.fresh else run.train
        trainer = Trainer(run.model.to(device), train, run.batches, run.loss, run.evaluate, device=device,
                          on_save=lambda: save_run(run, config["out_dir"]))
        if rank0:
            moved = folder.begin(config, fresh=args.fresh)
            if moved:
                print(f"fastseq train: the earlier run's files are in {moved}")
            print(f"fastseq train: {run.task}, {type(run.model).__name__} "
                  f"({sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M parameters), vocabulary "
                  f"{run.tokenizer.vocab_size}, {run.train.steps} steps on {device}; run folder {config['out_dir']}")
        history = trainer.fit()
    final = [r for r in history if any(k.startswith("eval_") for k in r)]
    if final and rank0:
        print("final: " + "  ".join(f"{k}={v:.4g}" for k, v in final[-1].items() if k.startswith("eval_")))
    return 0


def _ulmfit(args: argparse.Namespace) -> int:
    from .train import ulmfit
    from .train.tasks import apply_overrides, load_config

    config = apply_overrides(load_config(args.config), args.set or [])
    if args.out:
        config["out_dir"] = args.out
    config.setdefault("out_dir", "runs/ulmfit")
    with _owned(config["out_dir"], True):
        ulmfit.run(config, _device(args.device))
    return 0


def _text_of(spec: str):
    """'dataset:split' -> the split's text (labelled or parallel records joined by lines)."""
    from . import data

    name, _, split = spec.partition(":")
    records = data.load(name, split)
    if isinstance(records, str):
        return records
    return "\n".join(r[1] if isinstance(r[0], int) else r[0] for r in records)


def _ngram(args: argparse.Namespace) -> int:
    from .models import NGramLM

    def sentences(text):
        words = [line.split() for line in text.splitlines() if line.strip()]
        return [[w.lower() for w in s] for s in words] if args.lowercase else words

    model = NGramLM(args.order, args.discount).fit(sentences(_text_of(args.train)), min_count=args.min_count)
    held_out = sentences(_text_of(args.test))
    result = {"order": args.order, "vocab": len(model.vocab), "perplexity": model.perplexity(held_out)}
    print(json.dumps(result))
    return 0


def _word2vec(args: argparse.Namespace) -> int:
    import torch

    from . import data
    from .models import Word2Vec, Word2VecConfig, Word2VecData

    text = _text_of(args.data)
    tokenizer = data.WordTokenizer.fit([text], min_freq=args.min_count, lowercase=True)
    ids = torch.tensor(tokenizer.encode(text))
    torch.manual_seed(args.seed)
    model = Word2Vec(Word2VecConfig(tokenizer.vocab_size, args.dim, args.mode, args.window, args.negative))
    pairs, generator = Word2VecData(ids, model.config), torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    for step in range(args.steps):
        optimizer.zero_grad()
        loss = model.loss(**pairs.batch(args.batch, generator))
        loss.backward()
        optimizer.step()
    print(f"word2vec {args.mode}: {len(ids):,} tokens, vocabulary {tokenizer.vocab_size}, final loss {loss.item():.3f}")
    words = tokenizer.words
    for query in args.query:
        if query.lower() not in tokenizer.index:
            print(f"{query}: not in the vocabulary")
            continue
        near = model.most_similar(tokenizer.index[query.lower()], args.k)
        print(f"{query}: " + ", ".join(f"{words[i - len(data.SPECIALS)]} ({s:.2f})" for i, s in near))
    if args.save:
        model.save(args.save)
        tokenizer.save(os.path.splitext(args.save)[0] + ".tokenizer.json")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .train.tasks import evaluate_run

    generation = {k: v for k, v in (("method", args.method), ("beams", args.beams),
                                    ("max_new_tokens", args.max_new_tokens), ("length_penalty", args.length_penalty),
                                    ("early_stopping", args.early_stopping)) if v is not None}
    metrics = evaluate_run(args.run, args.split, _device(args.device), args.limit, generation, args.hypotheses)
    print(json.dumps({"run": args.run, "split": args.split, **metrics}))
    return 0


def _batches(lengths: list[int], batch_size: int, max_tokens: Optional[int]) -> list[list[int]]:
    """Indices by length, longest first, cut into batches of at most batch_size rows (and max_tokens padded
    tokens when given); every index in one batch."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < batch_size and (max_tokens is None
                                                  or lengths[out[-1][0]] * (len(out[-1]) + 1) <= max_tokens):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _generate(args: argparse.Namespace) -> int:

    from . import atomic
    from .data import pad
    from .generation import generate
    from .train.tasks import open_run

    device = _device(args.device)
    model, tokenizer, _ = open_run(args.run, device)
    if args.text and args.input:
        raise ValueError("give the texts as arguments or --input, not both")
    if args.input:
        with open(args.input, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f]
    else:
        texts = args.text or [line.rstrip("\n") for line in sys.stdin]
    encoder_decoder = "src_vocab_size" in model.config.__dataclass_fields__
    ids = [tokenizer.encode(text) or [tokenizer.unk_id] for text in texts]
    n = args.n_best
    results: list[list[tuple[str, float, list[float]]]] = [[] for _ in texts]
    for batch in _batches([len(i) for i in ids], args.batch_size, args.max_tokens):  # sorted by length
        tokens, lengths = pad([ids[i] for i in batch], tokenizer.pad_id)
        out = generate(model, tokens.to(device), lengths.to(device), max_new_tokens=args.max_new_tokens,
                       method=args.method, beams=args.beams, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, seed=args.seed, no_repeat_ngram_size=args.no_repeat_ngram_size,
                       length_penalty=args.length_penalty, early_stopping=args.early_stopping, num_return_sequences=n)
        rows, counts, scores = out.tokens.tolist(), out.lengths.tolist(), out.scores.tolist()
        positional = out.token_scores.tolist()
        for j, i in enumerate(batch):  # back in input order
            for r in range(j * n, j * n + n):
                new = tokenizer.decode(rows[r][:counts[r]])
                results[i].append((new if encoder_decoder else texts[i] + new, scores[r], positional[r][:counts[r]]))
    lines = []
    for i, (text, hypotheses) in enumerate(zip(texts, results)):
        if args.print_scores:  # fairseq's lines: the source, then each hypothesis with its score and its tokens'
            lines.append(f"S-{i}\t{text}")
            for hypothesis, score, token_scores in hypotheses:
                lines += [f"H-{i}\t{score:.4f}\t{hypothesis}", f"P-{i}\t" + " ".join(f"{p:.4f}" for p in token_scores)]
        else:
            lines += [hypothesis for hypothesis, _, _ in hypotheses]
    if args.output:
        atomic.write(args.output, lambda f: f.writelines(line + "\n" for line in lines), mode="w")
    else:
        for line in lines:
            print(line)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import sweep

    return sweep.main(args.sweep_args)


def _tune(args: argparse.Namespace) -> int:
    """A config's model on its first batches, forward and backward as training runs them: each op's
    backend measured for those shapes and kept (fastseq.ops.tuning); the choices made printed."""
    import time

    import torch

    from .ops import tuning
    from .train.tasks import apply_overrides, build_run, load_config
    from .train.trainer import to_device

    if not tuning.enabled():
        raise ValueError(f"{tuning.ENV_VAR}=0 turns measurement off: unset it to tune")
    config = apply_overrides(load_config(args.config), args.set or [])
    device = _device(args.device)
    run = build_run(config, device)
    model = run.model.to(device).train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.train.precision)
    before, start = set(tuning.choices()), time.perf_counter()
    for i in range(args.batches):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = run.loss(model, to_device(run.batches(i), device))
        loss.backward()
        model.zero_grad(set_to_none=True)
    made = {b: m for b, m in tuning.choices().items() if b not in before}
    print(f"fastseq tune: {len(made)} new shape bucket(s) from {args.batches} batch(es) of {args.config} on "
          f"{device} in {time.perf_counter() - start:.1f} s; kept in {tuning.cache_path()}")
    for bucket, m in sorted(made.items()):
        print(f"  {tuning.describe(bucket, m)}")
    return 0


def _parser() -> argparse.ArgumentParser:
    """The `fastseq` command's parser: a subcommand each, --debug on every one."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="fastseq", description="Fast sequence-model kernels and models.")
    parser.add_argument("--version", action="version", version=f"fastseq {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="on an error, the whole traceback (default: one line)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:  # --debug on every command
        return sub.add_parser(name, parents=[common], **kwargs)

    for add in (_setup_commands, _run_commands, _inference_commands, _baseline_commands):
        add(command)
    return parser


def _setup_commands(command) -> None:
    """info, tune and demo."""
    p = command("info", help="versions, device, what was built, and the backend of each op")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_info)
    p = command("tune", help="measure each op's backend at a config's training shapes ahead of training")
    p.add_argument("--config", required=True, help="YAML: as for train")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. data.max_tokens=2048")
    p.add_argument("--batches", type=_positive, default=4, help="batches to run (their shapes are the ones measured)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present)")
    p.set_defaults(func=_tune)
    p = command("demo", help="train a character-level Transformer on tiny Shakespeare and print samples")
    p.add_argument("--steps", type=_positive, default=None,
                   help="training steps (default: 5000 on a GPU, 800 on a CPU)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--out", default="runs/demo", help="folder for the log, the curve, the model and tokenizer")
    p.set_defaults(func=_demo)


def _run_commands(command) -> None:
    """train and ulmfit: a run folder from a config."""
    p = command("train", help="train a model from a YAML config (see configs/); resumes a stopped run")
    p.add_argument("--config", required=True, help="YAML: task, data, model, train, generate, out_dir")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. train.steps=100")
    p.add_argument("--out", default=None, help="the run folder (default: out_dir, else runs/<config name>)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present)")
    p.add_argument("--fresh", action="store_true",
                   help="start the run folder's run afresh (its earlier files move into previous-<date>/)")
    p.add_argument("--allow-change", action="append", metavar="KEY", help="resume although KEY (e.g. train.steps) "
                                                                           "differs from the folder's config")
    p.set_defaults(func=_train)
    p = command("ulmfit", help="ULMFiT: pretrain an LSTM LM, fine-tune it on the task's text, train the "
                                      "classifier with gradual unfreezing (one config, see configs/ulmfit_*.yaml)")
    p.add_argument("--config", required=True, help="YAML: task, data, model, train (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting, e.g. train.lr=1e-3 (repeatable)")
    p.add_argument("--out", default=None, help="the run folder (default: the config's out_dir)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present)")
    p.set_defaults(func=_ulmfit)


def _inference_commands(command) -> None:
    """eval, generate and translate: a finished run folder."""
    p = command("eval", help="metrics of a finished run on a split (perplexity, BLEU, accuracy)")
    p.add_argument("run", help="the run folder")
    p.add_argument("--split", default="test", help="the data split to evaluate on")
    p.add_argument("--limit", type=_positive, default=None,
                   help="only the first N examples (sentences, texts, windows)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present)")
    p.add_argument("--hypotheses", default=None, help="seq2seq: write the outputs to this file, one a line")
    p.add_argument("--method", choices=("greedy", "sample", "beam"), default=None,
                   help="seq2seq: the search (default: the run's generate settings, else beam)")
    p.add_argument("--beams", type=_positive, default=None, help="seq2seq: beams of beam search")
    p.add_argument("--max-new-tokens", type=_positive, default=None, help="seq2seq: tokens to generate at most")
    p.add_argument("--length-penalty", type=float, default=None, help="seq2seq: beam scores / length ** this")
    p.add_argument("--early-stopping", type=_early_stopping, default=None, help=EARLY_STOPPING_HELP)
    p.set_defaults(func=_eval)
    for name in ("generate", "translate"):
        p = command(name, help="continue prompts (language models) or translate (encoder-decoders)")
        p.add_argument("run", help="the run folder")
        p.add_argument("text", nargs="*", help="prompts or sources (default: one per line on stdin)")
        p.add_argument("--method", choices=("greedy", "sample", "beam"), default="beam" if name == "translate"
                       else "sample", help="the search (default: beam for translate, sample for generate)")
        p.add_argument("--beams", type=_positive, default=5, help="beams of beam search")
        p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: scores / length ** this")
        p.add_argument("--early-stopping", type=_early_stopping, default="never", help=EARLY_STOPPING_HELP)
        p.add_argument("--max-new-tokens", type=_positive, default=100, help="tokens to generate at most per input")
        p.add_argument("--temperature", type=float, default=0.8, help="sampling: divide the logits by this")
        p.add_argument("--top-k", type=int, default=0, help="sampling: keep the k most likely tokens (0: all)")
        p.add_argument("--top-p", type=float, default=1.0,
                       help="sampling: keep the smallest set of tokens holding this probability")
        p.add_argument("--no-repeat-ngram-size", type=int, default=0,
                       help="never repeat an n-gram of this size (0: off)")
        p.add_argument("--seed", type=int, default=None, help="the sampling seed (default: random)")
        p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present)")
        p.add_argument("--input", default=None, help="a file of texts, one per line (default: the arguments, or stdin)")
        p.add_argument("--output", default=None, help="write the outputs here, one per line (default: stdout)")
        p.add_argument("--batch-size", type=_positive, default=32, help="texts generated together (sorted by length)")
        p.add_argument("--max-tokens", type=_positive, default=None,
                       help="at most this many padded input tokens a batch (with --batch-size)")
        p.add_argument("--n-best", type=_positive, default=1,
                       help="outputs per input: beam search's n best (n <= --beams) or n samples; one a line")
        p.add_argument("--print-scores", action="store_true",
                       help="fairseq-style lines: S-i (the input), then for each output H-i (its score and text) "
                            "and P-i (each token's log-probability); natural logs, where fairseq prints base 2")
        p.set_defaults(func=_generate)


def _baseline_commands(command) -> None:
    """ngram and word2vec, the baselines, and bench."""
    p = command("ngram", help="an interpolated Kneser-Ney n-gram LM: perplexity on held-out text")
    p.add_argument("--train", default="wikitext-2:valid", help="dataset:split to count")
    p.add_argument("--test", default="wikitext-2:test", help="dataset:split to score")
    p.add_argument("--order", type=_positive, default=3, help="n of the n-gram model")
    p.add_argument("--discount", type=float, default=0.75, help="Kneser-Ney absolute discount")
    p.add_argument("--min-count", type=_positive, default=1, help="words seen fewer times become <unk>")
    p.add_argument("--lowercase", action="store_true", help="lowercase the text first")
    p.set_defaults(func=_ngram)
    p = command("word2vec", help="word2vec on a data set, then nearest words to queries")
    p.add_argument("--data", default="wikitext-2:valid", help="dataset:split")
    p.add_argument("--mode", choices=("skipgram", "cbow"), default="skipgram", help="word2vec's objective")
    p.add_argument("--dim", type=_positive, default=100, help="embedding size")
    p.add_argument("--window", type=_positive, default=5, help="context words on each side")
    p.add_argument("--negative", type=int, default=5, help="negative samples (0: full softmax)")
    p.add_argument("--min-count", type=_positive, default=5, help="words seen fewer times are dropped")
    p.add_argument("--steps", type=_positive, default=2000, help="training steps")
    p.add_argument("--batch", type=_positive, default=2048, help="(center, context) pairs per step")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    p.add_argument("--seed", type=int, default=0, help="the random seed")
    p.add_argument("--query", nargs="*", default=["january", "he", "war"],
                   help="words whose nearest neighbours are printed")
    p.add_argument("-k", type=_positive, default=8, help="neighbours per query word")
    p.add_argument("--save", default=None, help="write the model (and its tokenizer beside it)")
    p.set_defaults(func=_word2vec)
    p = command("bench", help="the benchmark sweep (fastseq.bench.sweep), results in the current folder; its "
                              "arguments follow, e.g. --ops models --preset quick (fastseq bench -- --help)")
    p.set_defaults(func=_bench)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.sweep_args = extra
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"fastseq {args.command}: interrupted", file=sys.stderr)
        return 130
    except USAGE_ERRORS as e:  # one line naming the key, file or argument; --debug for the traceback
        print(f"fastseq {args.command}: error: {e}  (--debug for the traceback)", file=sys.stderr)
        return 2
    except Exception as e:  # a failure while running: exit 1, as distinct from a usage error's 2
        print(f"fastseq {args.command}: error: {type(e).__name__}: {e}  (--debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
