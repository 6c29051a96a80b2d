"""The decode step the search calls: the model's own; on a CPU, its linear layers in whichever of two forms
its first steps timed faster (TimedForms, fastseq.nn.linear); or the same step captured once in a CUDA
graph and replayed for every token after (one launch a token instead of one per kernel: at small batch a
decode step is launch-bound).

A graph replays fixed kernels on fixed addresses, so the state is first made static (its KV caches read
whole and masked by their device-side lengths, every update in place; `make_static` on the state). The
first step runs eagerly on a side stream (the backend chooser times its candidates there, and lazy
initialisations happen), the second is captured; from then on each step copies its tokens into the
graph's input and replays it. A state without `make_static` (a decoder of the protocol that does not
offer it) decodes eagerly.
"""
from __future__ import annotations

import statistics
from time import perf_counter
from typing import Callable, Optional

import torch
from torch import Tensor

from ..nn.linear import MAX_ROWS, batched_rows
from .protocol import Decoder, DecodingState


def graphable(state: DecodingState) -> bool:
    """Whether the state offers static decoding (a CUDA graph can replay its steps)."""
    return callable(getattr(state, "make_static", None))


class GraphedStep:
    """step(tokens (N,)) -> logits (N, V): model.decode_step on a static state, from its second call on
    replayed from a CUDA graph captured for this batch and cache capacity. Beam search's reorder between
    steps works in place on the same state, outside the graph. Without CUDA (capture=False, the CPU) it
    runs the static steps eagerly: the graph's shapes, without the graph."""

    def __init__(self, model: Decoder, state: DecodingState, capture: bool) -> None:
        state.make_static()
        self.model, self.state, self.capture = model, state, capture
        self.calls, self.graph = 0, None
        self.tokens: Tensor | None = None
        self.logits: Tensor | None = None

    def __call__(self, tokens: Tensor) -> Tensor:
        self.calls += 1
        if not self.capture:
            return self.model.decode_step(tokens, self.state)
        if self.graph is None:
            return self._first(tokens) if self.calls == 1 else self._record(tokens)
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits

    def _first(self, tokens: Tensor) -> Tensor:
        """The first step, eagerly on a side stream (warm-up, as capture requires), really advancing the state."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            logits = self.model.decode_step(tokens, self.state)
        torch.cuda.current_stream().wait_stream(side)
        return logits

    def _record(self, tokens: Tensor) -> Tensor:
        """Capture the step on the graph's own input buffer (capture runs nothing), then replay it once."""
        self.tokens = tokens.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.model.decode_step(self.tokens, self.state)
        self.graph.replay()
        return self.logits


class TimedForms:
    """step(tokens) -> logits: model.decode_step on a CPU, its linear layers computed by F.linear or as
    batched products (fastseq.nn.linear.batched_rows), whichever these very steps timed faster. After one
    untimed step (first-call costs), TRIALS steps run in each form, alternating so that the machine's drift
    falls on both; the form of the lower median serves every step after. The trials are real steps: a
    generation that ends before the choice has lost at most TRIALS steps in the slower form."""

    TRIALS = 3

    def __init__(self, model: Decoder, state: DecodingState) -> None:
        self.model, self.state = model, state
        self.times: dict[bool, list[float]] = {False: [], True: []}
        self.calls = 0
        self.batched: Optional[bool] = None  # the chosen form, once both have been timed

    def __call__(self, tokens: Tensor) -> Tensor:
        self.calls += 1
        if self.batched is not None or self.calls == 1:
            with batched_rows(bool(self.batched)):
                return self.model.decode_step(tokens, self.state)
        batched = self.calls % 2 == 1
        start = perf_counter()
        with batched_rows(batched):
            logits = self.model.decode_step(tokens, self.state)
        self.times[batched].append(perf_counter() - start)
        if len(self.times[True]) == self.TRIALS:
            self.batched = statistics.median(self.times[True]) < statistics.median(self.times[False])
        return logits


def decode_steps(model: Decoder, state: DecodingState, cuda_graph: bool, device: torch.device,
                 rows: int) -> Callable[[Tensor], Tensor]:
    """The function each search step calls with its tokens (`rows` of them): the CUDA-graph step when asked
    for (on a CUDA device it captures; on the CPU it runs the same static steps eagerly); else on a CPU,
    for at most MAX_ROWS rows, the step in the linear layers' faster form (TimedForms); else the model's
    decode_step."""
    if not cuda_graph:
        if device.type == "cpu" and rows <= MAX_ROWS:
            return TimedForms(model, state)
        return lambda tokens: model.decode_step(tokens, state)
    if not graphable(state):
        raise ValueError(f"generate: cuda_graph=True: {type(model).__name__}'s decoding state "
                         f"({type(state).__name__}) offers no make_static, so its steps cannot be replayed")
    return GraphedStep(model, state, capture=device.type == "cuda")
