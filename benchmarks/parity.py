"""Drop-in parity: fastseq.nn's LSTM, LSTMCell, MultiheadAttention and TransformerEncoderLayer against
the torch.nn modules they replace, and a user's model of torch.nn modules against the same model after
fastseq.nn.convert, over the shapes of the never-slower-than-torch targets, as a user gets them (the
default backends, chosen by measurement). Each fastseq time is taken just after torch's for the same case
(on a CPU a measurement slows the one after it), median of several runs after warm-up; each row names the
backends that served it (fastseq.ops.registry.served).

    python benchmarks/parity.py [--preset quick|cpu|gpu|headline] [--only lstm cell mha encoder converted]
                                [--json PATH]

Writes one JSON file (device, versions, commit, every row; default benchmarks/results/parity-<device>-
<preset>-<date>-<commit>.json) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastseq  # noqa: E402
from fastseq.bench import timing  # noqa: E402
from fastseq.ops.registry import served  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("inference", "training")
# lstm: (layers, hidden, seq, batch) with input = hidden; cell: (hidden, batch), 16 steps; mha: (batch, seq,
# embed, causal), a head per 64 channels; encoder: (batch, seq, embed), feed-forward 4x, a head per 64;
# converted: (batch, seq, hidden), UserModel at that width.
GRIDS = {
    "quick": {"lstm": [(1, 32, 8, 2), (2, 32, 8, 2)], "cell": [(32, 2)], "mha": [(2, 16, 64, False), (2, 16, 64, True)],
              "encoder": [(2, 16, 64)], "converted": [(2, 12, 32)]},
    "cpu": {"lstm": [(layers, h, t, b) for layers, h, b in itertools.product((1, 2), (256, 512, 1024), (1, 8, 32, 64))
                     for t in ((32, 256) if h == 256 else (64,))],
            "cell": list(itertools.product((256, 512, 1024), (1, 8, 32, 64))),
            "mha": [(4, t, e, causal) for t in (64, 256, 1024) for e in (256, 512, 1024) for causal in (False, True)],
            "encoder": [(4, t, e) for t in (64, 256) for e in (256, 512)],
            "converted": [(b, t, h) for b, t in ((1, 64), (8, 64), (32, 128)) for h in (128, 256)]},
    "headline": {"lstm": [(1, 512, 256, 1), (1, 512, 256, 64), (2, 512, 128, 64)], "cell": [(512, 64)],
                 "mha": [(8, 1024, 1024, False), (8, 1024, 1024, True)], "encoder": [(8, 1024, 1024)]},
    "gpu": {"lstm": [(layers, h, t, b) for layers, h, b in itertools.product((1, 2), (256, 512, 1024), (1, 8, 64, 256))
                     for t in (64, 256)],
            "cell": list(itertools.product((256, 512, 1024), (1, 64, 256))),
            "mha": [(8, t, e, causal) for t in (256, 1024, 4096) for e in (512, 1024) for causal in (False, True)],
            "encoder": [(8, t, e) for t in (256, 1024) for e in (512, 1024)],
            "converted": [(b, t, h) for b, t in ((1, 128), (32, 256)) for h in (256, 512)]},
}


class UserModel(torch.nn.Module):
    """A model as users write it from torch.nn: a packed bidirectional LSTM, self-attention over its states,
    a two-layer Transformer encoder, a classifier head."""

    def __init__(self, hidden: int):
        super().__init__()
        self.rnn = torch.nn.LSTM(hidden, hidden // 2, num_layers=2, batch_first=True, bidirectional=True)
        self.attn = torch.nn.MultiheadAttention(hidden, max(1, hidden // 64), batch_first=True)
        layer = torch.nn.TransformerEncoderLayer(hidden, max(1, hidden // 64), 4 * hidden, dropout=0.0,
                                                 batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(hidden, 10)

    def forward(self, x, lengths):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths.to(x.device)[:, None]
        a, _ = self.attn(y, y, y, key_padding_mask=pad, need_weights=False)
        return self.head(self.encoder(a, src_key_padding_mask=pad).mean(1))


def _pair(make, inputs, mode):
    """(torch's module, fastseq's with the same weights) and a call of each running one step of `mode`."""
    base, ours = make()
    ours.load_state_dict(base.state_dict())
    if mode == "inference":
        base.eval(), ours.eval()

    def step(module):
        def fn():
            if mode == "inference":
                with torch.no_grad():
                    module(*inputs)
            else:
                out = module(*inputs)
                out = out[0] if isinstance(out, tuple) else out
                out.float().sum().backward()
        return fn
    return step(base), step(ours)


def _cases(grid, device, dtype):
    """(module name, sizes, factory of the two modules, inputs) per case."""
    for layers, h, t, b in grid.get("lstm", ()):
        x = torch.randn(t, b, h, device=device, dtype=dtype)
        yield ("LSTM", {"layers": layers, "hidden": h, "seq": t, "batch": b},
               lambda layers=layers, h=h: (torch.nn.LSTM(h, h, layers).to(device, dtype),
                                           fastseq.nn.LSTM(h, h, layers).to(device, dtype)), (x,))
    for h, b in grid.get("cell", ()):
        xs = torch.randn(16, b, h, device=device, dtype=dtype)

        class Loop(torch.nn.Module):  # a cell run over 16 steps, as a decoder runs it
            def __init__(self, cell):
                super().__init__()
                self.cell = cell

            def forward(self, xs):
                state, outs = None, []
                for x in xs:
                    state = self.cell(x, state)
                    outs.append(state[0])
                return torch.stack(outs)
        yield ("LSTMCell", {"hidden": h, "batch": b, "steps": 16},
               lambda h=h: (Loop(torch.nn.LSTMCell(h, h)).to(device, dtype),
                            Loop(fastseq.nn.LSTMCell(h, h)).to(device, dtype)), (xs,))
    for b, t, e, causal in grid.get("mha", ()):
        x = torch.randn(b, t, e, device=device, dtype=dtype, requires_grad=True)
        mask = torch.nn.Transformer.generate_square_subsequent_mask(t, device=device, dtype=dtype) if causal else None

        class Self(torch.nn.Module):  # self-attention, as a Transformer layer calls it
            def __init__(self, attn):
                super().__init__()
                self.attn = attn

            def forward(self, x):
                return self.attn(x, x, x, attn_mask=mask, is_causal=causal, need_weights=False)[0]
        yield ("MultiheadAttention", {"batch": b, "seq": t, "embed": e, "heads": e // 64, "causal": causal},
               lambda e=e: (Self(torch.nn.MultiheadAttention(e, e // 64, batch_first=True)).to(device, dtype),
                            Self(fastseq.nn.MultiheadAttention(e, e // 64, batch_first=True)).to(device, dtype)), (x,))
    for b, t, e in grid.get("encoder", ()):
        x = torch.randn(b, t, e, device=device, dtype=dtype, requires_grad=True)
        kwargs = dict(d_model=e, nhead=e // 64, dim_feedforward=4 * e, dropout=0.0, batch_first=True)
        yield ("TransformerEncoderLayer", {"batch": b, "seq": t, "embed": e},
               lambda kwargs=kwargs: (torch.nn.TransformerEncoderLayer(**kwargs).to(device, dtype),
                                      fastseq.nn.TransformerEncoderLayer(**kwargs).to(device, dtype)), (x,))
    for b, t, h in grid.get("converted", ()):
        x = torch.randn(b, t, h, device=device, dtype=dtype, requires_grad=True)
        lengths = torch.linspace(t, max(1, t // 2), b).long()  # ragged, on the host as packing takes them

        def make(h=h):
            base = UserModel(h).to(device, dtype)
            return base, fastseq.nn.convert(copy.deepcopy(base))
        yield "converted UserModel", {"batch": b, "seq": t, "hidden": h}, make, (x, lengths)


def run(preset: str, device: torch.device, dtype: torch.dtype, save=lambda rows: None, only=None) -> list[dict]:
    """Every case of the preset (of its grids named in `only`), `save(rows)` after each (a timeout keeps what
    was measured)."""
    rows = []
    grid = {name: cases for name, cases in GRIDS[preset].items() if not only or name in only}
    for module, sizes, make, inputs in _cases(grid, device, dtype):
        for mode in MODES:
            torch.manual_seed(0)
            base, ours = _pair(make, inputs, mode)
            rounds: dict = {}
            timed = timing.measure_together({"torch": base, "fastseq": ours}, device, min_reps=5, min_seconds=0.2,
                                            rounds_out=rounds)
            t_base, t_ours = timed["torch"], timed["fastseq"]
            with served() as record:
                ours()
            backends = sorted({f"{function}:{backend}" for _, function, backend in record})
            row = {"module": module, "mode": mode, "sizes": sizes, "torch_ms": t_base["median_ms"],
                   "fastseq_ms": t_ours["median_ms"], "ratio": t_base["median_ms"] / t_ours["median_ms"],
                   "call_ratio": t_base["call_median_ms"] / t_ours["call_median_ms"],
                   "paired_ratio": timing.paired_ratio(rounds, "torch", "fastseq"),
                   "torch": t_base, "fastseq": t_ours, "served": backends}
            rows.append(row)
            save(rows)
            print(f"{module:<24} {mode:<9} {json.dumps(sizes):<70} torch {row['torch_ms']:9.3f} ms  fastseq "
                  f"{row['fastseq_ms']:9.3f} ms  x{row['ratio']:.2f} "
                  f"(within rounds x{row['paired_ratio']['median']:.2f}, per call x{row['call_ratio']:.2f})  "
                  f"{', '.join(backends) or 'torch ops only'}",
                  flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| module | mode | sizes | torch.nn | fastseq | ratio | per call: torch.nn | fastseq | ratio "
             "| served by |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        sizes = " ".join(f"{k}={v}" for k, v in r["sizes"].items())
        lines.append(f"| {r['module']} | {r['mode']} | {sizes} | {r['torch_ms']:.3f} ms | {r['fastseq_ms']:.3f} ms | "
                     f"{r['ratio']:.2f}× | {r['torch']['call_median_ms']:.3f} ms | "
                     f"{r['fastseq']['call_median_ms']:.3f} ms | "
                     f"{r['call_ratio']:.2f}× | {', '.join(r['served']) or 'torch ops'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(GRIDS), default=None, help="default: gpu on a GPU, else cpu")
    parser.add_argument("--dtype", choices=sorted(timing.DTYPES), default=None,
                        help="default: bf16 on a GPU, else fp32")
    parser.add_argument("--only", nargs="+", choices=sorted(GRIDS["cpu"]), default=None,
                        help="these grids of the preset (default: all)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = args.preset or ("gpu" if device.type == "cuda" else "cpu")
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    commit = os.environ.get("FASTSEQ_COMMIT") or timing.commit()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
            "preset": preset, "dtype": dtype_name, "device": torch.cuda.get_device_name() if device.type == "cuda"
            else "cpu", "torch": torch.__version__, "fastseq": fastseq.__version__,
            "torch_threads": torch.get_num_threads(), "timing": "median of >= 5 runs and >= 0.2 s after 3 warm-up "
            "runs, the two taking turns; on a GPU the device's time and the per-call time (timing.py)"}
    part = "-" + "+".join(args.only) if args.only else ""
    meta["grids"] = args.only or sorted(GRIDS[preset])
    path = args.json or os.path.join(HERE, "results", f"parity-{device.type}-{preset}{part}-{datetime.date.today()}-"
                                                      f"{commit[:7]}.json")

    rows = run(preset, device, timing.DTYPES[dtype_name], lambda rows: timing.write_rows(path, meta, rows), args.only)
    print(table(rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
