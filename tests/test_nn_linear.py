"""fastseq.nn.Linear and its function `linear`: within batched_rows(), few rows on a CPU are computed as one
batched product over blocks of the weight's rows; against F.linear in float64 over row counts, odd sizes,
input ranks and biases, and every case that must stay F.linear."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastseq.nn import Linear
from fastseq.nn import linear as fl


def _bmm_calls(fn):
    with mock.patch.object(fl.torch, "bmm", wraps=torch.bmm) as bmm:
        out = fn()
    return out, bmm.call_count


@pytest.mark.parametrize("shape", [(1,), (1, 1), (1, 1, 1), (3,), (2, 5), (fl.MAX_ROWS,)])
@pytest.mark.parametrize("sizes", [(37, 101), (64, 64), (5, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_batched_rows_equal_f_linear(shape, sizes, bias):
    torch.manual_seed(sum(shape) + sizes[0])
    features, out_features = sizes
    weight = torch.randn(out_features, features, dtype=torch.float64)
    b = torch.randn(out_features, dtype=torch.float64) if bias else None
    x = torch.randn(*shape, features, dtype=torch.float64)
    x = x[..., 0, :] if len(shape) == 1 and shape[0] == 1 else x  # a 1-D input too
    with mock.patch.object(fl, "MIN_WEIGHT", 1), torch.no_grad(), fl.batched_rows():
        out, calls = _bmm_calls(lambda: fl.linear(x, weight, b))
    torch.testing.assert_close(out, F.linear(x, weight, b))
    assert calls == 1  # 2 threads or more give at most 2·threads blocks, and every weight here has as many rows


def test_batched_rows_split_the_rows_into_twice_the_threads():
    torch.manual_seed(1)
    weight, x = torch.randn(53, 16, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    threads = torch.get_num_threads()
    with mock.patch.object(fl, "MIN_WEIGHT", 1), torch.no_grad(), fl.batched_rows(), \
            mock.patch.object(fl.torch, "bmm", wraps=torch.bmm) as bmm:
        out = fl.linear(x, weight)
    assert bmm.call_args[0][0].shape == (2 * threads, 53 // (2 * threads), 16)
    torch.testing.assert_close(out, x @ weight.t())


def test_what_stays_f_linear():
    """Outside batched_rows, with autograd recording, more than MAX_ROWS rows, a small weight, a weight
    that is not row-major, or on a different dtype: F.linear (no batched product)."""
    torch.manual_seed(2)
    weight = torch.randn(80, 64)
    x = torch.randn(1, 64)
    cases = {
        "outside": lambda: fl.linear(x, weight),
        "disabled": lambda: _within(lambda: fl.linear(x, weight), enabled=False),
        "many rows": lambda: _within(lambda: fl.linear(torch.randn(fl.MAX_ROWS + 1, 64), weight)),
        "transposed weight": lambda: _within(lambda: fl.linear(x, weight.t().contiguous().t())),
        "small weight": lambda: _within(lambda: fl.linear(x, weight), small=True),
        "too few rows to split": lambda: _within(lambda: fl.linear(x, weight[:1])),
    }
    for name, case in cases.items():
        out, calls = _bmm_calls(case)
        assert calls == 0, name
    with mock.patch.object(fl, "MIN_WEIGHT", 1), fl.batched_rows():
        w = weight.clone().requires_grad_()
        out, calls = _bmm_calls(lambda: fl.linear(x, w))
        out.sum().backward()
    assert calls == 0 and torch.equal(w.grad, x.expand(80, 64))


def _within(fn, enabled=True, small=False):
    with mock.patch.object(fl, "MIN_WEIGHT", 10**9 if small else 1), torch.no_grad(), fl.batched_rows(enabled):
        return fn()


def test_linear_module_is_torch_linear():
    """The same parameters, state_dict and initialization as torch.nn.Linear; hooks run around it."""
    torch.manual_seed(3)
    ours = Linear(12, 7)
    torch.manual_seed(3)
    theirs = nn.Linear(12, 7)
    assert isinstance(ours, nn.Linear) and list(ours.state_dict()) == list(theirs.state_dict())
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)
    seen = []
    ours.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    x = torch.randn(4, 3, 12)
    with mock.patch.object(fl, "MIN_WEIGHT", 1), torch.no_grad(), fl.batched_rows():
        torch.testing.assert_close(ours(x[:1, :1]), theirs(x[:1, :1]))
    torch.testing.assert_close(ours(x), theirs(x))
    assert seen == [(1, 1, 7), (4, 3, 7)]


def test_torch_compile_traces_linear_whole():
    """torch.compile sees F.linear (it is asked first whether it traces: Dynamo cannot trace the ContextVar)."""
    torch.manual_seed(4)
    layer, x = Linear(16, 9), torch.randn(2, 16)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), layer(x))
    with torch.no_grad(), fl.batched_rows():
        torch.testing.assert_close(compiled(x[:1]), layer(x[:1]))
