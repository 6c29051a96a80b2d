"""Generation against the generator users already have: fastseq.generation.generate on a CausalLM against
Hugging Face transformers' generate() on a GPT-2 of the same configuration (GPT-2 small by default, random
weights: speed, not text, is compared), greedy and beam search, each batch size, the same prompt length
and number of new tokens, side by side in one run (the two alternate, median of the runs), as new tokens
per second. On a GPU fastseq also runs with its decode step captured in a CUDA graph ("fastseq-graph",
generate(cuda_graph=True)). `transformers` is a benchmark extra (pip install fastseq[bench]), not a
dependency.

    python benchmarks/generate_hf.py --batches 1 8 --json benchmarks/results/generate-hf-cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import fastseq  # noqa: E402
from fastseq.bench import timing  # noqa: E402
from fastseq.generation import generate  # noqa: E402
from fastseq.models import CausalLM, CausalLMConfig  # noqa: E402

# (vocab, d_model, heads, layers, positions): GPT-2 small, and a toy for the test suite
SIZES = {"gpt2-small": (50257, 768, 12, 12, 1024), "tiny": (101, 32, 4, 2, 128)}


def models(size: str, device: torch.device, dtype: torch.dtype):
    """(fastseq's CausalLM, transformers' GPT2LMHeadModel) of the same configuration, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab, d, heads, layers, positions = SIZES[size]
    ours = CausalLM(CausalLMConfig(vocab, d, heads, layers, dropout=0.0, max_len=positions))
    config = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=d, n_layer=layers, n_head=heads,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    theirs = GPT2LMHeadModel(config)
    return ours.to(device, dtype).eval(), theirs.to(device, dtype).eval()


def runners(ours, theirs, prompt: torch.Tensor, new: int, beams: int):
    """Callables generating exactly `new` tokens per row (no end-of-sequence stop): fastseq, on CUDA also
    through a CUDA graph, and HF generate()."""
    method = "greedy" if beams == 1 else "beam"

    def fastseq_run(cuda_graph=False):
        generate(ours, prompt, max_new_tokens=new, method=method, beams=beams, eos_id=None, cuda_graph=cuda_graph)

    def hf_run():
        with torch.no_grad():
            theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new,
                            do_sample=False, num_beams=beams, pad_token_id=0)
    runs = {"fastseq": fastseq_run, "hf-generate": hf_run}
    if prompt.is_cuda:
        runs["fastseq-graph"] = lambda: fastseq_run(cuda_graph=True)
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2-small")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5], help="1: greedy")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(timing.DTYPES), default=None, help="default: bf16 on a GPU, fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    try:
        import transformers
    except ImportError:
        print("generate_hf: transformers is not installed (pip install fastseq[bench]); nothing measured")
        return 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    torch.manual_seed(0)
    ours, theirs = models(args.size, device, timing.DTYPES[dtype_name])
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": os.environ.get("FASTSEQ_COMMIT") or timing.commit(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "transformers": transformers.__version__, "fastseq": fastseq.__version__,
            "torch_threads": torch.get_num_threads(), "size": args.size, "dtype": dtype_name,
            "timing": f"median of {args.repeats} runs after one warm-up each, fastseq and HF taking turns"}
    rows = []
    for batch in args.batches:
        prompt = torch.randint(1, SIZES[args.size][0], (batch, args.prompt), device=device)
        for beams in args.beams:
            timed = timing.measure_together(runners(ours, theirs, prompt, args.new, beams), device, warmup=1,
                                            min_reps=args.repeats, min_seconds=0.0)
            seconds = {name: t["call_median_ms"] * 1e-3 for name, t in timed.items()}  # a whole generate(), host in
            rate = {name: batch * args.new / s for name, s in seconds.items()}
            row = {"batch": batch, "beams": beams, "prompt": args.prompt, "new": args.new,
                   "seconds": seconds, "tokens_per_s": rate, "ratio": rate["fastseq"] / rate["hf-generate"],
                   "timed": timed}
            if "fastseq-graph" in rate:
                row["ratio_graph"] = rate["fastseq-graph"] / rate["hf-generate"]
            rows.append(row)
            graph = (f"  graph {rate['fastseq-graph']:8.1f} tok/s  x{row['ratio_graph']:.2f}" if "ratio_graph" in row
                     else "")
            print(f"B{batch:<3} {'greedy' if beams == 1 else f'beam {beams}':<7} fastseq {rate['fastseq']:8.1f} tok/s  "
                  f"HF generate {rate['hf-generate']:8.1f} tok/s  x{row['ratio']:.2f}{graph}", flush=True)
            # after each row: a timeout keeps the rows measured
            timing.write_rows(args.json, meta, rows)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
