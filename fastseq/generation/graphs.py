"""The decode step the search calls: the model's own, or the same step captured once in a CUDA graph and
replayed for every token after (one launch a token instead of one per kernel: at small batch a decode
step is launch-bound).

A graph replays fixed kernels on fixed addresses, so the state is first made static (its KV caches read
whole and masked by their device-side lengths, every update in place; `make_static` on the state). The
first step runs eagerly on a side stream (the backend chooser times its candidates there, and lazy
initialisations happen), the second is captured; from then on each step copies its tokens into the
graph's input and replays it. A state without `make_static` (a decoder of the protocol that does not
offer it) decodes eagerly.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..nn.linear import OneRowCopies
from .protocol import Decoder, DecodingState

# One row on a CPU: the linear layers read (in, out) copies of their weights (fastseq.nn.linear), made at
# the first step; GPT-2 small's copies cost about as much as COPY steps save, so shorter generations read
# the weights as they lie.
ONE_ROW_COPY_TOKENS = 16


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


def decode_steps(model: Decoder, state: DecodingState, cuda_graph: bool, device: torch.device, rows: int,
                 steps: int) -> Callable[[Tensor], Tensor]:
    """The function each search step calls with its tokens (rows of them, for up to `steps` steps): the
    CUDA-graph step when asked for (on a CUDA device it captures; on the CPU it runs the same static steps
    eagerly), else the model's decode_step; one row on a CPU, long enough, within a OneRowCopies store."""
    if not cuda_graph:
        if device.type == "cpu" and rows == 1 and steps >= ONE_ROW_COPY_TOKENS:
            copies = OneRowCopies()

            def one_row_step(tokens: Tensor) -> Tensor:
                with copies:
                    return model.decode_step(tokens, state)
            return one_row_step
        return lambda tokens: model.decode_step(tokens, state)
    if not graphable(state):
        raise ValueError(f"generate: cuda_graph=True: {type(model).__name__}'s decoding state "
                         f"({type(state).__name__}) offers no make_static, so its steps cannot be replayed")
    return GraphedStep(model, state, capture=device.type == "cuda")
