"""A character-level LSTM language model on tiny Shakespeare, trained for a short while with fastseq.nn.LSTM.

    FASTSEQ_DATA=../shared/data python examples/lstm_char_lm.py [--steps 150] [--device cpu|cuda]

Shows the loss falling and prints a sample. (The package's data registry and trainer, and the
Transformer demo, come later; this example reads the text file directly.)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import fastseq
import fastseq.nn


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, dim: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = fastseq.nn.LSTM(dim, hidden, layers, batch_first=True, dropout=0.1 if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):
        y, state = self.lstm(self.embed(tokens), state)
        return self.head(y), state


def load_text() -> str:
    root = os.environ.get("FASTSEQ_DATA")
    path = os.path.join(root, "tinyshakespeare", "input.txt") if root else None
    if not path or not os.path.exists(path):
        sys.exit(f"tiny Shakespeare not found at {path!r}: set FASTSEQ_DATA to the folder holding "
                 "tinyshakespeare/input.txt (in this repository's checkout: ../shared/data)")
    with open(path, encoding="utf-8") as f:
        return f.read()


@torch.no_grad()
def sample(model, stoi, itos, device, prompt="ROMEO:", length=200, temperature=0.8):
    model.eval()
    tokens = torch.tensor([[stoi[c] for c in prompt]], device=device)
    logits, state = model(tokens)
    out = list(prompt)
    for _ in range(length):
        probs = F.softmax(logits[:, -1] / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1)
        out.append(itos[nxt.item()])
        logits, state = model(nxt, state)
    model.train()
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    text = load_text()
    chars = sorted(set(text))
    stoi, itos = {c: i for i, c in enumerate(chars)}, dict(enumerate(chars))
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    device = torch.device(args.device)
    model = CharLSTM(len(chars), 64, args.hidden, args.layers).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    print(f"{len(text):,} characters, vocabulary {len(chars)}, {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, LSTM on backend: {fastseq.diagnostics.collect()['ops']['lstm'][device.type]['backend']}")

    def batch(source):
        idx = torch.randint(len(source) - args.seq - 1, (args.batch,))
        x = torch.stack([source[i:i + args.seq] for i in idx])
        y = torch.stack([source[i + 1:i + args.seq + 1] for i in idx])
        return x.to(device), y.to(device)

    @torch.no_grad()
    def val_loss(n=8):
        model.eval()
        losses = [F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item() for x, y in (batch(val) for _ in range(n))]
        model.train()
        return sum(losses) / len(losses)

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = batch(train)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step == 1 or step % 25 == 0 or step == args.steps:
            elapsed = time.perf_counter() - start
            print(f"step {step:4d}  train loss {loss.item():.3f}  val loss {val_loss():.3f}  "
                  f"{step * args.batch * args.seq / elapsed:,.0f} tokens/s", flush=True)
    print("\n" + sample(model, stoi, itos, device))


if __name__ == "__main__":
    main()
