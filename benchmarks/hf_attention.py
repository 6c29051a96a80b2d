"""Hugging Face models on fastseq's attention against the same models on transformers' own SDPA path: one
GPT-2 (GPT-2 small by default, random weights) loaded once, a copy switched to
`set_attn_implementation("fastseq")`, then side by side in one run (the two taking turns, median of the
runs): the forward (no cache, every batch and length of the grid) and greedy `generate()` (its own KV cache,
each batch size). Each row has the device's time and the per-call time (host included, as a user's loop
sees it) with the ratio sdpa / fastseq for both, and the check that the two agree (logits' largest
difference, generated tokens equal). `transformers` is a benchmark extra (pip install fastseq[bench]).

    python benchmarks/hf_attention.py --json benchmarks/results/hf-attention-cpu.json
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastseq  # noqa: E402
from fastseq.bench import timing  # noqa: E402

from generate_hf import SIZES  # noqa: E402  (GPT-2 small and a toy, as generate_hf.py sizes them)

# (batch, tokens) of the forward rows
FORWARDS = {"gpu": [(1, 1024), (8, 512), (32, 128)], "cpu": [(1, 128), (8, 128)], "tiny": [(1, 16), (3, 9)]}


def models(size: str, device: torch.device, dtype: torch.dtype):
    """(GPT2LMHeadModel on "sdpa", the same weights on "fastseq"), eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    import fastseq.integrations.transformers  # noqa: F401  (registers "fastseq")

    vocab, d, heads, layers, positions = SIZES[size]
    config = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=d, n_layer=layers, n_head=heads,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa")
    sdpa = GPT2LMHeadModel(config).to(device, dtype).eval()
    ours = copy.deepcopy(sdpa)
    ours.set_attn_implementation("fastseq")
    return sdpa, ours


def _row(kind: str, sizes: dict, timed: dict, check: dict) -> dict:
    row = {"kind": kind, **sizes, "timed": timed, **check}
    for key, name in (("median_ms", "ratio"), ("call_median_ms", "call_ratio")):
        if all(key in t for t in timed.values()):
            row[name] = timed["sdpa"][key] / timed["fastseq"][key]
    return row


def forward_rows(sdpa, ours, shapes, vocab: int, device, repeats: int):
    for batch, tokens in shapes:
        ids = torch.randint(0, vocab, (batch, tokens), device=device)

        def run(model):
            with torch.no_grad():
                return model(ids, use_cache=False).logits
        difference = (run(sdpa).float() - run(ours).float()).abs().max().item()
        timed = timing.measure_together({"sdpa": lambda: run(sdpa), "fastseq": lambda: run(ours)}, device,
                                        warmup=2, min_reps=repeats)
        yield _row("forward", {"batch": batch, "tokens": tokens}, timed, {"max_abs_difference": difference})


def generate_rows(sdpa, ours, batches, vocab: int, prompt: int, new: int, device, repeats: int):
    for batch in batches:
        ids = torch.randint(1, vocab, (batch, prompt), device=device)

        def run(model):
            with torch.no_grad():
                return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                      min_new_tokens=new, do_sample=False, pad_token_id=0)
        same = torch.equal(run(sdpa), run(ours))
        timed = timing.measure_together({"sdpa": lambda: run(sdpa), "fastseq": lambda: run(ours)}, device,
                                        warmup=1, min_reps=repeats, min_seconds=0.0)
        yield _row("generate", {"batch": batch, "prompt": prompt, "new": new}, timed, {"same_tokens": same})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2-small")
    parser.add_argument("--grid", choices=sorted(FORWARDS), default=None,
                        help="the forward rows' shapes (default: gpu on a GPU, else cpu; tiny with --size tiny)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="generate()'s batch sizes")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(timing.DTYPES), default=None, help="default: bf16 on a GPU, fp32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    try:
        import transformers
    except ImportError:
        print("hf_attention: transformers is not installed (pip install fastseq[bench]); nothing measured")
        return 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    grid = args.grid or ("tiny" if args.size == "tiny" else "gpu" if device.type == "cuda" else "cpu")
    torch.manual_seed(0)
    sdpa, ours = models(args.size, device, timing.DTYPES[dtype_name])
    vocab = SIZES[args.size][0]
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": os.environ.get("FASTSEQ_COMMIT") or timing.commit(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
            "torch": torch.__version__, "transformers": transformers.__version__, "fastseq": fastseq.__version__,
            "torch_threads": torch.get_num_threads(), "size": args.size, "dtype": dtype_name,
            "baseline": "the same model with attn_implementation='sdpa'",
            "timing": f"median of >= {args.repeats} runs after a warm-up, the two taking turns; ratio = sdpa / "
                      "fastseq (device time), call_ratio the same per call with the host"}
    rows = []
    for row in [*forward_rows(sdpa, ours, FORWARDS[grid], vocab, device, args.repeats),
                *generate_rows(sdpa, ours, args.batches, vocab, args.prompt, args.new, device, args.repeats)]:
        rows.append(row)
        shape = (f"B{row['batch']} T{row['tokens']}" if row["kind"] == "forward"
                 else f"B{row['batch']} +{row['new']} tokens")
        agree = (f"max diff {row['max_abs_difference']:.2g}" if row["kind"] == "forward"
                 else f"same tokens {row['same_tokens']}")
        call = f", per call x{row['call_ratio']:.2f}" if "call_ratio" in row else ""
        print(f"{row['kind']:<8} {shape:<16} sdpa {row['timed']['sdpa']['median_ms']:9.3f} ms  fastseq "
              f"{row['timed']['fastseq']['median_ms']:9.3f} ms  x{row['ratio']:.2f}{call}  ({agree})", flush=True)
        timing.write_rows(args.json, meta, rows)  # after each row: a timeout keeps the rows measured
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
