"""The persistent LSTM layer: its plan (from the C++ that launches it, kernels/lstm_persistent_plan.h) and
its algorithm written as a PyTorch model, step by step as the CUDA kernel (kernels/lstm_persistent.cu) runs
it, so that the partition, what each block reads every step and the order of the exchange are checked
against the float64 reference here (tests/test_lstm_persistent.py), gradients included, with no GPU.

The partition: a group of `ctas` blocks holds W_hh (4H x H) for the whole sequence; block c owns hidden
units [c*u, (c+1)*u) and their four gate rows, ordered by 16-row tensor-core tile: tile m holds units
4m..4m+3 of the block, rows [i x4 | f x4 | g x4 | o x4] (`block_rows`), so that one warp's accumulators hold
every gate of its four units. A group carries one batch tile of `batch_tile` rows (padding rows are never
active); replicas of the group carry the other tiles.

Forward, step s (t = s, or T-1-s in reverse): each block multiplies its rows by h_{t-1} from its own buffer
hbuf[(s-1) % 2] ([H][tile]; h0 loaded there by each block itself), adds the input projection zx[t] (one
GEMM before the loop), updates the cells of its units (a row inactive at t, t >= lengths[b], keeps h and c
and outputs zeros), and sends its slice of h_t into hbuf[s % 2] of every block of the group. A block waits
only for the slices it reads next; two buffers suffice, since no block can send h_{t+1} before every block
has read h_{t-1}.

Backward, iteration k (the forward's step s = T-1-k, back in time): each block adds, for its units, the
gradient of y, the partial sums every block sent it last iteration (in block order: deterministic) and what
an inactive row passes through (its dh unchanged, the gradient of its zero output ignored); runs the cell
backward; multiplies its rows' dz by its W_hh rows (a partial sum over its rows of dh_{t-1} for every unit)
and sends each block the part for that block's units. The weight gradients are GEMMs after the loop, as
every backend computes them.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from ...numerics import acc_dtype


def block_rows(hidden: int, units: int, block: int) -> list[int]:
    """W_hh's rows block `block` holds, in the order of its tensor-core tiles (see the module docstring)."""
    first = block * units
    return [gate * hidden + first + 4 * tile + q for tile in range(units // 4) for gate in range(4) for q in range(4)]


def _time(s: int, T: int, reverse: bool) -> int:
    return T - 1 - s if reverse else s


def _tile(t: Tensor, b0: int, tile: int, dim: int) -> Tensor:
    """Rows [b0, b0 + tile) of `t` along `dim`, zero-padded past its end."""
    part = t.narrow(dim, b0, min(tile, t.shape[dim] - b0))
    if part.shape[dim] == tile:
        return part
    pad = list(part.shape)
    pad[dim] = tile - part.shape[dim]
    return torch.cat([part, part.new_zeros(pad)], dim=dim)


def _activity(lengths: Optional[Tensor], T: int, B: int, b0: int, tile: int) -> Tensor:
    """(T, tile) bool: row b0 + i of the tile is active at time t (padding rows never are)."""
    full = torch.full((B,), T, dtype=torch.long) if lengths is None else lengths.long().cpu()
    rows = _tile(full, b0, tile, 0)
    rows[max(0, B - b0):] = 0
    return torch.arange(T)[:, None] < rows[None, :]


def model_forward(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor],
                  lengths: Optional[Tensor], reverse: bool, ctas: int, units: int,
                  batch_tile: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The kernel's forward -> (y, h_n, c_n, gates_ws, c_ws) as lstm_layer returns them (training)."""
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    assert ctas * units == H and units % 4 == 0, (ctas, units, H)
    acc = acc_dtype(x.dtype)
    zx = (x.to(acc) @ w_ih.to(acc).T + (0 if bias is None else bias.to(acc))).to(x.dtype)  # the launcher's GEMM
    rows = [block_rows(H, units, c) for c in range(ctas)]
    weights = [w_hh[r].to(acc) for r in rows]  # x's dtype, kept on chip; products accumulate in acc
    y = x.new_zeros(T, B, H)
    gates_ws, c_ws = x.new_zeros(T, B, 4 * H), torch.zeros(T, B, H, dtype=acc)
    h_n, c_n = h0.clone(), c0.clone()
    for b0 in range(0, B, batch_tile):  # one group per batch tile
        n = min(batch_tile, B - b0)
        active = _activity(lengths, T, B, b0, batch_tile)
        h0_tile = _tile(h0, b0, batch_tile, 0).T  # [H][tile]
        hbuf = [[torch.zeros_like(h0_tile), h0_tile.clone()] for _ in range(ctas)]  # each block loads h0 itself
        cell = [_tile(c0, b0, batch_tile, 0).T[c * units:(c + 1) * units].to(acc) for c in range(ctas)]
        own = [h0_tile[c * units:(c + 1) * units].clone() for c in range(ctas)]
        for s in range(T):
            t = _time(s, T, reverse)
            on = active[t]
            for c in range(ctas):
                z = weights[c] @ hbuf[c][(s - 1) % 2].to(acc) + _tile(zx[t], b0, batch_tile, 0).T[rows[c]].to(acc)
                zi, zf, zg, zo = (z.view(units // 4, 4, 4, batch_tile)[:, g].reshape(units, batch_tile)
                                  for g in range(4))
                c_new = torch.sigmoid(zf) * cell[c] + torch.sigmoid(zi) * torch.tanh(zg)
                h_new = (torch.sigmoid(zo) * torch.tanh(c_new)).to(x.dtype)
                cell[c] = torch.where(on, c_new, cell[c])
                own[c] = torch.where(on, h_new, own[c])
                units_of = slice(c * units, (c + 1) * units)
                y[t, b0:b0 + n, units_of] = torch.where(on, h_new, torch.zeros_like(h_new)).T[:n]
                ws = z.to(x.dtype).T[:n]
                for local, row in enumerate(rows[c]):  # the pre-activations, in W_hh's row order
                    gates_ws[t, b0:b0 + n, row] = ws[:, local]
                c_ws[t, b0:b0 + n, units_of] = cell[c].T[:n]
            for src in range(ctas):  # the exchange: every block's slice of h_t into every block's next buffer
                for dst in range(ctas):
                    hbuf[dst][s % 2][src * units:(src + 1) * units] = own[src]
        for c in range(ctas):
            h_n[b0:b0 + n, c * units:(c + 1) * units] = own[c].T[:n]
            c_n[b0:b0 + n, c * units:(c + 1) * units] = cell[c].T[:n].to(c0.dtype)
    return y, h_n, c_n, gates_ws, c_ws


def model_backward(grad_y: Tensor, grad_h_n: Tensor, grad_c_n: Tensor, x: Tensor, h0: Tensor, c0: Tensor,
                   w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
                   y: Tensor, gates_ws: Tensor, c_ws: Tensor, ctas: int, units: int, batch_tile: int):
    """The kernel's backward -> (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias), as
    lstm_layer_backward returns them."""
    T, B, I = x.shape
    H = w_hh.shape[0] // 4
    acc = acc_dtype(x.dtype)
    rows = [block_rows(H, units, c) for c in range(ctas)]
    weights = [w_hh[r].to(acc) for r in rows]
    dz_ws = x.new_zeros(T, B, 4 * H)
    grad_h0, grad_c0 = torch.zeros_like(h0), torch.zeros_like(c0)
    for b0 in range(0, B, batch_tile):
        n = min(batch_tile, B - b0)
        active = _activity(lengths, T, B, b0, batch_tile)
        recv = [[torch.zeros(ctas, units, batch_tile, dtype=acc) for _ in range(2)] for _ in range(ctas)]
        carry = [_tile(grad_h_n, b0, batch_tile, 0).T[c * units:(c + 1) * units].to(acc) for c in range(ctas)]
        dc = [_tile(grad_c_n, b0, batch_tile, 0).T[c * units:(c + 1) * units].to(acc) for c in range(ctas)]
        for k in range(T):
            s = T - 1 - k
            t, p = _time(s, T, reverse), _time(s - 1, T, reverse)
            on = active[t]
            partials = []
            for c in range(ctas):
                units_of = slice(c * units, (c + 1) * units)
                grad = _tile(grad_y[t], b0, batch_tile, 0).T[units_of].to(acc)
                passed = sum(recv[c][k % 2][src] for src in range(ctas)) + carry[c]  # in block order
                dh = grad + passed
                z = _tile(gates_ws[t], b0, batch_tile, 0).T[rows[c]].to(acc)
                zi, zf, zg, zo = (z.view(units // 4, 4, 4, batch_tile)[:, g].reshape(units, batch_tile)
                                  for g in range(4))
                i, f, g, o = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg), torch.sigmoid(zo)
                c_now = _tile(c_ws[t], b0, batch_tile, 0).T[units_of].to(acc)
                c_prev = (_tile(c0, b0, batch_tile, 0).T[units_of].to(acc) if s == 0 else
                          _tile(c_ws[p], b0, batch_tile, 0).T[units_of].to(acc))
                tc = torch.tanh(c_now)
                dcell = dc[c] + dh * o * (1 - tc * tc)
                gates = [dcell * g * i * (1 - i), dcell * c_prev * f * (1 - f), dcell * i * (1 - g * g),
                         dh * tc * o * (1 - o)]
                dz = torch.stack(gates).view(4, units // 4, 4, batch_tile).transpose(0, 1).reshape(4 * units, -1)
                dz = torch.where(on, dz, torch.zeros_like(dz)).to(x.dtype)  # the local dz: x's dtype
                for local, row in enumerate(rows[c]):
                    dz_ws[t, b0:b0 + n, row] = dz[local, :n]
                dc[c] = torch.where(on, dcell * f, dc[c])
                carry[c] = torch.where(on, torch.zeros_like(dh), passed)  # an inactive row passes dh_t on
                partials.append(weights[c].T @ dz.to(acc))  # [H][tile]: this block's rows' share of dh_{t-1}
            for src in range(ctas):  # the exchange: each block's partial sums for every block's units
                for dst in range(ctas):
                    recv[dst][(k + 1) % 2][src] = partials[src][dst * units:(dst + 1) * units]
        for c in range(ctas):
            dh = sum(recv[c][T % 2][src] for src in range(ctas)) + carry[c]
            grad_h0[b0:b0 + n, c * units:(c + 1) * units] = dh.T[:n].to(h0.dtype)
            grad_c0[b0:b0 + n, c * units:(c + 1) * units] = dc[c].T[:n].to(c0.dtype)
    return _weight_gradients(dz_ws, x, h0, w_ih, bias, lengths, reverse, y, grad_h0, grad_c0)


def previous_outputs(y: Tensor, h0: Tensor, lengths: Optional[Tensor], reverse: bool) -> Tensor:
    """(T, B, P): the h each step consumed (the previous step's output, h0 at a row's first step)."""
    T, B, _ = y.shape
    h_prev = torch.cat([y[1:], h0[None]]) if reverse else torch.cat([h0[None], y[:-1]])
    if lengths is not None and reverse:  # a row starts at its own last position, from h0
        last = (lengths.long().cpu() - 1).clamp(min=0)
        h_prev[last.to(y.device), torch.arange(B, device=y.device)] = h0
    return h_prev


def _weight_gradients(dz_ws, x, h0, w_ih, bias, lengths, reverse, y, grad_h0, grad_c0):
    acc = acc_dtype(x.dtype)
    T, B, I = x.shape
    dz = dz_ws.to(acc).flatten(0, 1)
    h_prev = previous_outputs(y, h0, lengths, reverse).to(acc).flatten(0, 1)
    grad_x = (dz @ w_ih.to(acc)).view(T, B, I).to(x.dtype)
    grad_w_ih = (dz.T @ x.to(acc).flatten(0, 1)).to(w_ih.dtype)
    grad_w_hh = (dz.T @ h_prev).to(w_ih.dtype)
    grad_bias = x.new_empty(0) if bias is None else dz.sum(0).to(bias.dtype)
    return grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias


@functools.lru_cache(maxsize=None)
def _device_limits(index: int) -> tuple[int, int, int, int]:
    p = torch.cuda.get_device_properties(index)
    return p.multi_processor_count, p.major, 16 if p.major >= 9 else 1, int(p.shared_memory_per_block_optin)


# An H200's limits: the plan the GPU window will run, shown where no GPU is (tests, `fastseq info`).
H200 = (132, 9, 16, 227 * 1024)


@functools.lru_cache(maxsize=4096)
def plan(hidden: int, proj: int, batch: int, element_bytes: int, backward: bool,
         limits: tuple[int, int, int, int] = H200) -> dict:
    """The C++ plan (kernels/lstm_persistent_plan.h) for these sizes on a device of `limits` (multiprocessors,
    major, largest cluster, shared bytes a block may take): {"refusal": str | None, ...}."""
    from ... import backends

    ext = backends.extension()
    if ext is None:
        return {"refusal": f"fastseq._C is unavailable: {backends.extension_error()}"}
    return dict(ext.lstm_persistent_plan(hidden, proj, batch, element_bytes, backward, *limits))


def refusal(x: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], training: bool,
            limits: Optional[tuple[int, int, int, int]] = None) -> Optional[str]:
    """Why the persistent kernel cannot serve this layer call (its forward, and its backward when training)
    on x's device, or on a device of `limits` (None: it can)."""
    if limits is None:
        if x.device.type != "cuda":
            return None
        limits = _device_limits(x.device.index if x.device.index is not None else torch.cuda.current_device())
    H = w_hh.shape[0] // 4
    P = H if w_hr is None else w_hr.shape[0]
    for backward in (False, True) if training else (False,):
        found = plan(H, P, x.shape[1], x.element_size(), backward, limits)["refusal"]
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------------------------------ the exchange
#
# The kernel's exchange protocol, step for step, as coroutines a random scheduler interleaves: every wait,
# barrier arrival, transaction and flag of lstm_persistent.cu with the same parity and count expressions,
# checked for what a GPU would show as a hang or a wrong value: a wait that never completes, a parity wait
# more than one phase behind its barrier (try_wait.parity cannot tell those apart), a buffer read before all
# of it arrived, a buffer overwritten before its owner read it.


class _Barrier:
    """An mbarrier of one expected arrival per phase and a transaction count (which may go below zero)."""

    def __init__(self):
        self.phase, self.pending, self.tx = 0, 1, 0

    def expect(self, units: int) -> None:
        self.tx += units
        self.pending -= 1
        self._settle()

    def complete(self, units: int) -> None:
        self.tx -= units
        self._settle()

    def _settle(self) -> None:
        if self.pending == 0 and self.tx == 0:
            self.phase, self.pending = self.phase + 1, 1

    def done(self, parity: int, fill: int) -> bool:
        """try_wait.parity(parity) for the barrier's `fill`-th phase (0-based)."""
        assert self.phase <= fill + 1, f"a parity wait {self.phase - fill} phases behind its barrier"
        return (self.phase & 1) != parity


class _Block:
    def __init__(self, rank: int):
        self.rank, self.bars, self.read = rank, [_Barrier(), _Barrier()], -1
        self.buffers: list[dict] = [{}, {}]  # buffer parity -> {source block: the step its data is from}


def _forward_cluster(me: _Block, blocks: list[_Block], steps: int):
    """lstm_persistent_forward_kernel's cluster exchange (s, prev and parities as there)."""
    n = len(blocks)
    for s in range(steps):
        prev = (s + 1) % 2
        if s > 0:
            parity = ((s - 1) // 2) & 1
            yield lambda: me.bars[prev].done(parity, (s - 1) // 2)
            assert all(me.buffers[prev].get(src) == s - 1 for src in range(n)), ("read before arrival", me.rank, s)
        me.read = s
        if s + 1 < steps:
            me.bars[s % 2].expect(n)
            yield None
            for dst in blocks:  # st.async of this block's slice, completing on dst's barrier
                assert s == 0 or dst.read >= s - 1, ("overwritten before read", dst.rank, s)
                dst.buffers[s % 2][me.rank] = s
                dst.bars[s % 2].complete(1)
                yield None


def _backward_cluster(me: _Block, blocks: list[_Block], steps: int):
    """lstm_persistent_backward_kernel's cluster exchange (k, par, next and parities as there)."""
    n = len(blocks)
    for k in range(steps + 1):
        par = k % 2
        if k > 0:
            parity = ((k - 1) // 2) & 1
            yield lambda: me.bars[par].done(parity, (k - 1) // 2)
            assert all(me.buffers[par].get(src) == k - 1 for src in range(n)), ("read before arrival", me.rank, k)
        me.read = k
        if k == steps:
            return
        me.bars[(k + 1) % 2].expect(n)
        yield None
        nxt = (k + 1) % 2
        for owner in blocks:  # each owner's units' partial sums
            assert k == 0 or owner.read >= k - 1, ("overwritten before read", owner.rank, k)
            owner.buffers[nxt][me.rank] = k
            owner.bars[nxt].complete(1)
            yield None


def _forward_grid(me: _Block, blocks: list[_Block], steps: int, rounds: int, flags: list[int], store: list[dict]):
    """lstm_persistent_forward_kernel's grid exchange, over rounds of batch tiles (counts as there). Each slot
    of the two global buffers keeps the step it holds and the blocks that have yet to read it."""
    n = len(blocks)
    for r in range(rounds):
        if r > 0:
            yield lambda: all(f >= r * steps for f in flags)
        for s in range(steps):
            count = r * steps + s + 1
            prev = (s + 1) % 2
            if s > 0:
                yield lambda: all(f >= count - 1 for f in flags)
                for src in range(n):
                    tag, readers = store[prev].get(src, (None, set()))
                    assert tag == (r, s - 1), ("read before arrival", me.rank, r, s, src, tag)
                    readers.discard(me.rank)
            slot = store[s % 2].get(me.rank, (None, set()))
            assert not slot[1], ("overwritten before read", me.rank, r, s, sorted(slot[1]))
            store[s % 2][me.rank] = ((r, s), set(range(n)) if s + 1 < steps else set())
            yield None
            flags[me.rank] = count
            yield None


def simulate_exchange(kind: str, ctas: int, steps: int, seed: int, rounds: int = 1) -> int:
    """Runs the exchange of `kind` ("forward", "backward": the cluster protocol; "grid": the forward's
    global-memory protocol over `rounds`) for `ctas` blocks and `steps` steps, interleaved at random by `seed`;
    raises AssertionError on a hang, an ambiguous wait, an early read or an early overwrite. Returns the
    number of actions run."""
    import random

    rng = random.Random(seed)
    blocks = [_Block(r) for r in range(ctas)]
    if kind == "grid":
        flags, store = [0] * ctas, [{}, {}]
        programs = [_forward_grid(b, blocks, steps, rounds, flags, store) for b in blocks]
    else:
        step = _forward_cluster if kind == "forward" else _backward_cluster
        programs = [step(b, blocks, steps) for b in blocks]
    waiting: list = [None] * ctas  # each program's pending wait condition
    live, actions = set(range(ctas)), 0
    while live:
        ready = [i for i in live if waiting[i] is None or waiting[i]()]
        assert ready, f"{kind}: every block waits and none can proceed (a hang) after {actions} actions"
        i = rng.choice(ready)
        waiting[i] = None
        try:
            waiting[i] = next(programs[i])
        except StopIteration:
            live.discard(i)
        actions += 1
    return actions
