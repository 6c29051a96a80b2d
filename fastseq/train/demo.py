"""The main demo: a character-level auto-regressive Transformer (fastseq.models.CausalLM) trained on tiny
Shakespeare with nanoGPT's 90/10 split; progress, the validation loss, a curve and samples.

On a GPU: nanoGPT's "shakespeare-char" model (6 layers, 6 heads, 384 wide, context 256, ~10.7M
parameters) in bf16 for a few minutes. On a CPU: a 0.8M-parameter model for 800 steps that still visibly
learns (seen on 2 cores: the validation loss falls from ln(70) = 4.25 to 1.86 nats per character in
131 s, and the samples take the shape of a play).
"""
from __future__ import annotations

import dataclasses
import os
import time

import torch

from ..data import CharTokenizer, load, stream_windows
from ..generation import generate
from ..models import CausalLM, CausalLMConfig
from .metrics import perplexity
from .run_folder import RunFolder
from .trainer import TrainConfig, Trainer

SIZES = {  # (d_model, heads, layers, block, batch, steps, lr, dropout)
    "gpu": (384, 6, 6, 256, 64, 5000, 1e-3, 0.2),
    "cpu": (128, 4, 4, 96, 24, 800, 3e-3, 0.0),
}


def run(steps: int | None = None, device: str | None = None, out_dir: str = "runs/demo", samples: int = 2,
        seed: int = 1337, progress: bool = True) -> dict:
    """Train, print samples, return the final metrics (and write log.jsonl, curves.png, the model)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    d_model, heads, layers, block, batch, default_steps, lr, dropout = SIZES["gpu" if device.type == "cuda" else "cpu"]
    steps = steps or default_steps
    train_text, val_text = load("tinyshakespeare", "train"), load("tinyshakespeare", "val")
    tokenizer = CharTokenizer.fit(train_text + val_text)
    train_ids = torch.tensor(tokenizer.encode(train_text))
    val_ids = torch.tensor(tokenizer.encode(val_text))
    torch.manual_seed(seed)
    model = CausalLM(CausalLMConfig(tokenizer.vocab_size, d_model, heads, layers, dropout=dropout, max_len=block,
                                    pad_id=tokenizer.pad_id)).to(device)
    print(f"fastseq demo: CausalLM {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{len(train_ids):,} training characters, vocabulary {tokenizer.vocab_size}, {steps} steps on {device}")

    def batches(i: int) -> dict:
        return {"tokens": stream_windows(train_ids, batch, block, torch.Generator().manual_seed(seed * 100003 + i))}

    def evaluate(model) -> dict:
        g = torch.Generator().manual_seed(seed)
        losses = [model.loss(stream_windows(val_ids, batch, block, g).to(device)).item() for _ in range(8)]
        loss = sum(losses) / len(losses)
        return {"loss": loss, "perplexity": perplexity(loss)}

    config = TrainConfig(steps=steps, lr=lr, schedule="cosine", warmup=min(100, steps // 10), weight_decay=0.1,
                         betas=[0.9, 0.99], precision="bf16" if device.type == "cuda" else "fp32",
                         eval_every=max(1, steps // 5), log_every=max(1, steps // 50), out_dir=out_dir,
                         resume=False, seed=seed, progress=progress)
    # a run folder the other commands take (`fastseq generate runs/demo`), its config as `fastseq train` writes
    # one; an earlier demo there is moved aside, never overwritten
    recorded = {"task": "causal_lm", "out_dir": out_dir,
                "data": {"dataset": "tinyshakespeare", "train": "train", "valid": "val", "tokenizer": {"kind": "char"},
                         "block": block, "batch": batch},
                "model": {"class": "CausalLM", "d_model": d_model, "num_heads": heads, "num_layers": layers,
                          "dropout": dropout},
                "train": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out_dir", "progress")}}
    with RunFolder(out_dir) as folder:
        moved = folder.begin(recorded, fresh=True)
        if moved:
            print(f"fastseq demo: the earlier demo's files are in {moved}")
        start = time.perf_counter()
        history = Trainer(model, config, batches, lambda m, b: m.loss(b["tokens"]), evaluate).fit()
        seconds = time.perf_counter() - start
        model.save(os.path.join(out_dir, "model.pt"))
        tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    prompt = torch.tensor([tokenizer.encode("ROMEO:\n")] * samples, device=device)
    out = generate(model, prompt, max_new_tokens=min(300, block - prompt.shape[1]), method="sample", temperature=0.8,
                   top_k=40, seed=seed, eos_id=None)
    for i in range(samples):
        print(f"--- sample {i + 1}\nROMEO:\n{tokenizer.decode(out.tokens[i])}")
    final = [r for r in history if "eval_loss" in r][-1]
    curve = os.path.join(out_dir, "curves.png")
    print(f"validation loss {final['eval_loss']:.3f} nats/char after {steps} steps, {seconds:.0f} s; "
          + (f"curve: {curve}" if os.path.exists(curve) else "no curve (matplotlib is not installed)"))
    return {"eval_loss": final["eval_loss"], "seconds": seconds, "steps": steps}
