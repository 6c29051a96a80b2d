"""The keys and values an attention layer has seen, kept across generation steps so that each new token
attends to them without recomputing them: preallocated buffers, per-sequence lengths, beam reordering."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..ops.attention import attention_decode_cached
from ..ops.checks import check_index, integers, trusted


class KVCache:
    """Keys (B, Hkv, capacity, D) and values (B, Hkv, capacity, Dv) of one attention layer, with the
    number of positions each sequence holds (`lengths`, (B,) int32).

    `append(k, v)` writes the new positions of every row after that row's last one; rows may hold
    different lengths (prompts of different lengths; beams that ended). `keys()` and `values()` are
    views of the first `max_length` positions, read in place by `fastseq.ops.attention_decode`.
    `reorder(index)` selects rows, as beam search does after each step.

    The buffers are allocated once, at `capacity` positions; appending past it raises. The largest
    length is tracked on the host, so no step needs a device synchronization.

    `make_static()` readies the cache for a CUDA graph: from then on every shape and address a decode step
    touches stays fixed. keys() and values() are the whole buffers, attention masks each row past its
    `lengths`, an append (one position) writes at each row's length on the device, and reorder works in
    place; the host no longer tracks lengths (generation sizes the cache for every step it runs).
    """

    def __init__(self, batch: int, kv_heads: int, head_dim: int, capacity: int, value_dim: Optional[int] = None,
                 dtype: torch.dtype = torch.float32, device: Union[torch.device, str, None] = None):
        for name, value in (("batch", batch), ("kv_heads", kv_heads), ("head_dim", head_dim),
                            ("capacity", capacity)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"KVCache: {name} must be a positive int, got {value!r}")
        value_dim = head_dim if value_dim is None else value_dim
        self.k = torch.zeros(batch, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros(batch, kv_heads, capacity, value_dim, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.int32, device=self.k.device)
        self.max_length = 0  # an upper bound of lengths, known on the host
        self.uniform = True  # every row holds max_length positions
        self.static = False  # see make_static

    def make_static(self) -> None:
        """Fixed shapes and addresses from now on (see the class's docstring): for CUDA-graph decoding."""
        self.static, self.uniform, self.max_length = True, False, self.capacity

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def batch(self) -> int:
        return self.k.shape[0]

    def append(self, k: Tensor, v: Tensor, counts: Union[Tensor, Sequence[int], None] = None) -> None:
        """Write k (B, Hkv, T, D), v (B, Hkv, T, Dv) after each row's last position. counts (B,): how many
        of the T new positions row b keeps (the rest are padding, overwritten by the next append); all
        T when None."""
        B, H, T, D = self.k.shape[0], self.k.shape[1], k.shape[2] if k.dim() == 4 else -1, self.k.shape[3]
        for name, t, last in (("k", k, D), ("v", v, self.v.shape[3])):
            if t.dim() != 4 or (t.shape[0], t.shape[1], t.shape[3]) != (B, H, last) or t.shape[2] != T:
                raise ValueError(f"KVCache.append: {name} must have shape (B={B}, Hkv={H}, T, {last}) with the T "
                                 f"of k, got {tuple(t.shape)}")
            if t.dtype != self.k.dtype or t.device != self.k.device:
                raise ValueError(f"KVCache.append: {name} must be {self.k.dtype} on {self.k.device}, got "
                                 f"{t.dtype} on {t.device}")
        if self.static:
            if T != 1 or counts is not None:
                raise ValueError(f"KVCache.append: a static cache takes one position per row at a time, got T={T}"
                                 + (" with counts" if counts is not None else ""))
            self._check_room()
            index = self.lengths.long().clamp_max(self.capacity - 1)[:, None, None, None]  # the check names it
            self.k.scatter_(2, index.expand(B, H, 1, D), k)
            self.v.scatter_(2, index.expand(B, H, 1, self.v.shape[3]), v)
            self.lengths += 1
            return
        if self.max_length + T > self.capacity:
            raise ValueError(f"KVCache.append: {T} new positions after {self.max_length} exceed the capacity "
                             f"{self.capacity}; allocate a larger cache")
        if counts is None:
            counts_t = torch.full((B,), T, dtype=torch.int32, device=self.k.device)
        else:
            host = integers("KVCache.append", "counts", counts).cpu()
            if host.shape != (B,) or (B and (int(host.min()) < 0 or int(host.max()) > T)):
                raise ValueError(f"KVCache.append: counts must be {B} integers in [0, T={T}], got {counts!r}")
            self.uniform = self.uniform and bool((host == T).all())
            counts_t = host.to(device=self.k.device, dtype=torch.int32, non_blocking=True)
        if self.uniform:
            self.k[:, :, self.max_length:self.max_length + T] = k
            self.v[:, :, self.max_length:self.max_length + T] = v
        else:
            index = (self.lengths[:, None] + torch.arange(T, device=self.k.device)[None, :]).long()
            self.k.scatter_(2, index[:, None, :, None].expand(B, H, T, D), k)
            self.v.scatter_(2, index[:, None, :, None].expand(B, H, T, self.v.shape[3]), v)
        self.lengths += counts_t
        self.max_length += T

    def _check_room(self) -> None:
        """A static append past the capacity raises naming it: on the host for a CPU cache, on a GPU by an
        asynchronous device assertion (no synchronization; the step's writes are clamped in bounds)."""
        message = (f"KVCache.append: a row of this static cache already holds its capacity of {self.capacity} "
                   f"positions; allocate a larger cache")
        if self.lengths.device.type == "cpu":
            if self.batch and int(self.lengths.max()) >= self.capacity:
                raise ValueError(message)
        else:
            torch._assert_async((self.lengths < self.capacity).all(), message)

    def attend(self, q: Tensor, scale: Optional[float] = None) -> Tensor:
        """One new query per row, q (B, Hq, D), against what the cache holds -> (B, Hq, Dv): the decode
        step of `fastseq.ops.attention_decode`, with only q checked (the cache keeps its own layout and
        lengths valid, and its padding holds zeros or the model's own values, so no backend reads them to
        check: the step runs as a generation step does, under checks.trusted)."""
        args = (q, self.keys(), self.values(), None if self.uniform else self.lengths, scale)
        if torch.compiler.is_compiling():
            return attention_decode_cached(*args)
        with trusted():
            return attention_decode_cached(*args)

    def keys(self) -> Tensor:
        """(B, Hkv, max_length, D), a view of the buffer (the buffer itself once static)."""
        return self.k if self.static else self.k[:, :, :self.max_length]

    def values(self) -> Tensor:
        """(B, Hkv, max_length, Dv), a view of the buffer (the buffer itself once static)."""
        return self.v if self.static else self.v[:, :, :self.max_length]

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` (B',) of the cache, in that order (beam search: each beam's parent). With as many
        rows as before (every step of beam search) only the positions in use move, within the buffers (and
        lengths in place); else (the first step's B -> B·K) new buffers of B' rows are made."""
        check_index("KVCache.reorder", index, self.k.shape[0])
        index = index.to(self.k.device)
        if index.shape[0] == self.k.shape[0]:
            used = self.max_length
            for buffer in (self.k, self.v):
                buffer[:, :, :used] = buffer[:, :, :used].index_select(0, index)
            self.lengths.copy_(self.lengths.index_select(0, index))
        else:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)
            self.lengths = self.lengths.index_select(0, index)
