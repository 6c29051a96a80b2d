"""How many of torch's intra-op threads an LSTM runs on, on a CPU: the caller's ("all") or one, measured as a
backend is (family `lstm_threads`), whichever backend serves it. With another process busy on a core, each
time step's parallel region waits for its descheduled thread and one thread runs many times faster; on a
quiet machine all threads win. The calls' mean decides (a busy core stalls some calls and not others), and
the chooser's probes notice when the load comes or goes; a call on all threads that stalls (SLOWER times its
record) brings the next probe forward, so a load that comes is seen within a few calls.

With a gradient the backward runs on one thread too: torch's autograd runs a CPU graph on the thread that
called backward, so a hook on the LSTM's output and final hidden state sets one thread when the backward
reaches them, and a hook on a view of its input gives the caller's count back once the backward has passed
it. The end of the backward gives it back in any case, and so does the next call after a backward that
raised.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterable, Iterator, TypeVar

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from .. import tuning
from ..registry import trials

FAMILY, CHOICES = "lstm_threads", ("all", "one")
Out = TypeVar("Out")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op threads set to one for the block, the caller's count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Kept:
    """A bucket's thread choice as this module keeps it between calls, until its probe is due."""

    __slots__ = ("choice", "bucket", "due", "stall_ms", "generation")

    def __init__(self, choice: str, bucket: str, due: float, stall_ms: float, generation: int):
        self.choice, self.bucket, self.due, self.stall_ms, self.generation = choice, bucket, due, stall_ms, generation


_kept: dict[tuple, _Kept] = {}


def run(fn: Callable[..., Out], args: tuple, x: Tensor, params: Callable[[], Iterable[Tensor]], sizes: tuple,
        flags: tuple) -> Out:
    """fn(*args) on the thread count chosen for its bucket (sizes, flags). args: the input (a tensor or a
    PackedSequence) first, then tensors, tuples of them, or anything else (passed as is); x: the input tensor (a
    PackedSequence's data); params(): the module's parameters, which fn reads itself. Off a CPU, on one thread
    already, with measuring off, or while torch.compile traces, fn(*args) as it is."""
    if torch.compiler.is_compiling():
        return fn(*args)
    if _state.depth:
        settle()
    threads = torch.get_num_threads()
    if threads == 1 or x.device.type != "cpu" or not tuning.enabled():
        return fn(*args)
    grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params())
                                        or any(t.requires_grad for t in _tensors(args[1:])))
    key = (sizes, flags, grad, x.dtype, threads)
    kept = _kept.get(key)
    if kept is None or time.perf_counter() >= kept.due or kept.generation != tuning.generation():
        kept = _choose(key, fn, args, x, params, sizes, flags, grad)
    start = time.perf_counter()
    out = _serve(kept.choice, fn, args, grad)
    if kept.choice == "all" and (time.perf_counter() - start) * 1e3 > kept.stall_ms:
        tuning.probe_now(kept.bucket)  # a stall on all threads, what a load brings: the bucket's probe at once
    return out


def _choose(key: tuple, fn: Callable, args: tuple, x: Tensor, params: Callable[[], Iterable[Tensor]], sizes: tuple,
            flags: tuple, grad: bool) -> _Kept:
    """The bucket's choice from the chooser (measured, kept, or probed when due), kept here until the next
    probe is due; "all" where nothing can be measured now."""
    call = tuning.Call(x.device, x.dtype, grad, sizes, flags, lambda choice: _trial(choice, fn, args, params, grad))
    with trials():  # the chooser's runs are not the caller's call
        choice = tuning.pick(FAMILY, CHOICES, call, by="mean") or "all"
    state = tuning.kept(FAMILY, CHOICES, call)
    if state is None:  # not measured (nothing kept and measuring impossible now): ask again next call
        return _Kept(choice, "", 0.0, float("inf"), tuning.generation())
    if len(_kept) >= 4096:  # a model whose shapes never repeat: keep the table bounded
        _kept.clear()
    _, bucket, due, recorded = state
    kept = _kept[key] = _Kept(choice, bucket, due, tuning.SLOWER * recorded, tuning.generation())
    return kept


def _serve(choice: str, fn: Callable[..., Out], args: tuple, grad: bool) -> Out:
    """fn(*args) on `choice`'s threads; with a gradient on one thread, the backward too (its hooks)."""
    if choice == "all":
        return fn(*args)
    if grad:  # the input as this call's own node, where the backward leaves the LSTM
        args = (_map(args[0], lambda t: t.view_as(t) if t.requires_grad else t), *args[1:])
    with one_thread():
        out = fn(*args)
    if grad:
        _backward_on_one_thread(out, args[0])
    return out


def _trial(choice: str, fn: Callable, args: tuple, params: Callable[[], Iterable[Tensor]], grad: bool) -> None:
    """The call served as `choice` serves it (its hooks' cost included) on detached copies of args, and, with
    a gradient, backward to them and to the parameters (torch.autograd.grad: nothing reaches .grad)."""
    args = _map(args, lambda t: t.detach().requires_grad_(t.requires_grad))
    with torch.set_grad_enabled(grad):
        outs = [o for o in _tensors(_serve(choice, fn, args, grad)) if o.requires_grad]
        if grad and outs:
            needs = [t for t in [*_tensors(args), *params()] if t.requires_grad]
            torch.autograd.grad(outs, needs, [torch.ones_like(o) for o in outs], allow_unused=True)


def _tensors(obj) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, PackedSequence):
        yield obj.data
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)


def _map(obj, f: Callable[[Tensor], Tensor]):
    if isinstance(obj, Tensor):
        return f(obj)
    if isinstance(obj, PackedSequence):
        return obj._replace(data=f(obj.data))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map(o, f) for o in obj)
    return obj


class _State(threading.local):
    depth = 0  # LSTMs whose backward is under way on this thread
    saved = 0  # the caller's thread count, given back when depth returns to 0


_state = _State()


class _Backward:
    """One call's hooks: `enter` on its output and final hidden state (what a loss reads), `leave` on the view
    of its input; each acts once per backward (graph task)."""

    __slots__ = ("entered",)

    def __init__(self):
        self.entered = -1  # the graph task whose backward set one thread for this call

    def enter(self, _grad: Tensor) -> None:
        task = torch._C._current_graph_task_id()
        if self.entered == task:
            return
        self.entered = task
        if _state.depth == 0:
            _state.saved = torch.get_num_threads()
            torch.set_num_threads(1)
            torch.autograd.Variable._execution_engine.queue_callback(_give_back)  # when every node has run
        _state.depth += 1

    def leave(self, _grad: Tensor) -> None:
        if self.entered != torch._C._current_graph_task_id() or not _state.depth:
            return
        self.entered = -1
        _state.depth -= 1
        if not _state.depth:
            torch.set_num_threads(_state.saved)


def _backward_on_one_thread(out, x) -> None:
    """Hooks that run the backward from `out` (the output, (h_n, c_n)) back to `x` (this call's view of its
    input, a tensor or a PackedSequence) on one thread; without a gradient to x, until the backward ends."""
    hooks = _Backward()
    for o in list(_tensors(out))[:2]:
        if o.requires_grad:
            o.register_hook(hooks.enter)
    x = x.data if isinstance(x, PackedSequence) else x
    if isinstance(x, Tensor) and x.requires_grad:
        x.register_hook(hooks.leave)


def settle() -> None:
    """The caller's thread count back where an LSTM's backward set one thread and then raised (outside a
    backward; a no-op otherwise)."""
    if _state.depth and torch._C._current_graph_task_id() == -1:
        _give_back()


def _give_back() -> None:
    if _state.depth:
        _state.depth = 0
        torch.set_num_threads(_state.saved)
