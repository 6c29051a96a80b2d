"""pytest-benchmark suite: fastseq.nn.LSTM against torch.nn.LSTM, same weights, side by side.

    pytest benchmarks/ --benchmark-group-by=param:case
"""
import pytest
import torch

import fastseq.nn
from fastseq import backends

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = {  # name: (layers, hidden, seq, batch)
    "infer-H256-T64-B8": (1, 256, 64, 8),
    "train-L2-H256-T32-B16": (2, 256, 32, 16),
}
IMPLS = ["torch"] + [b for b in ("cuda", "cpu", "triton") if backends.availability(b, DEVICE)[0]
                     and not (b == "triton" and DEVICE == "cpu")]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_lstm(benchmark, case, impl):
    layers, hidden, seq, batch = CASES[case]
    torch.manual_seed(0)
    base = torch.nn.LSTM(hidden, hidden, layers).to(DEVICE)
    module = base if impl == "torch" else fastseq.nn.LSTM(hidden, hidden, layers).to(DEVICE)
    if impl != "torch":
        module.load_state_dict(base.state_dict())
    x = torch.randn(seq, batch, hidden, device=DEVICE, requires_grad=case.startswith("train"))

    def run():
        with backends.use(impl if impl != "torch" else "reference"):
            if case.startswith("train"):
                y, (h, c) = module(x)
                (y.sum() + h.sum() + c.sum()).backward()
            else:
                with torch.inference_mode():
                    module(x)
        _sync()

    benchmark.group = case
    benchmark(run)
