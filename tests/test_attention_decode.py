"""The balanced split-KV decode: its plan (fastseq/ops/attention/decode_plan.py) and the Triton kernels that
derive it on the device, against the float64 reference at sizes where units cross rows."""
import itertools

import pytest
import torch

from fastseq.ops.attention import decode_plan
from fastseq.ops.attention.reference import attention_decode as reference_decode

LENGTHS = {
    "zeros": lambda B, T: torch.zeros(B, dtype=torch.int32),
    "ones": lambda B, T: torch.ones(B, dtype=torch.int32),
    "ragged": lambda B, T: torch.randint(0, T + 1, (B,), dtype=torch.int32),
    "full": lambda B, T: None,
    "one long": lambda B, T: torch.tensor([T] + [1] * (B - 1), dtype=torch.int32),
    "past Tk and negative": lambda B, T: torch.randint(-3, 2 * T, (B,), dtype=torch.int32),
}


def _keys(lengths, B, Tk):
    return [Tk] * B if lengths is None else lengths.clamp(0, Tk).tolist()


@pytest.mark.parametrize("kind", LENGTHS)
@pytest.mark.parametrize("B,Tk,sms,kv_heads", [(1, 16384, 132, 8), (64, 2048, 132, 8), (8, 512, 108, 4),
                                               (3, 1_000_000, 132, 1), (5000, 7, 132, 2), (2, 65, 4, 1)])
def test_plan_covers_every_key_once_in_balanced_units(kind, B, Tk, sms, kv_heads):
    torch.manual_seed(B + Tk)
    lengths = LENGTHS[kind](B, Tk)
    chunk = decode_plan.chunk_size(B, Tk, sms, kv_heads)
    n_units = decode_plan.units(sms, kv_heads, decode_plan.workspace_slots(B, Tk, chunk))
    units = decode_plan.plan(lengths, B, Tk, chunk, n_units)
    keys = _keys(lengths, B, Tk)
    covered = {}
    for segs in units:
        for row, lo, hi, slot in segs:
            assert 0 <= lo < hi <= keys[row]
            covered.setdefault(row, []).append((lo, hi))
            assert slot < decode_plan.workspace_slots(B, Tk, chunk)
    for row in range(B):  # each row's keys exactly once, in order, no gaps
        spans = sorted(covered.get(row, []))
        assert sum(hi - lo for lo, hi in spans) == keys[row]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    work = [sum(-(-(hi - lo) // chunk) for _, lo, hi, _ in segs) for segs in units]
    assert max(work) - min(work) <= 1  # within one chunk of each other
    slots = [s.slot for segs in units for s in segs]
    assert len(slots) == len(set(slots))


@pytest.mark.parametrize("kind", LENGTHS)
def test_merge_reads_exactly_the_segments_slots(kind):
    B, Tk, chunk, n_units = 37, 300, 64, 23
    torch.manual_seed(1)
    lengths = LENGTHS[kind](B, Tk)
    n = decode_plan.chunks(lengths, B, Tk, chunk)
    first = torch.cumsum(n, 0) - n
    total = int(n.sum())
    written = {s.slot for segs in decode_plan.plan(lengths, B, Tk, chunk, n_units) for s in segs}
    starts = set()
    for row in range(B):
        slot = torch.arange(int(first[row]), int(first[row] + n[row]))
        starts |= set(slot[decode_plan.is_start(slot, first[row], total, n_units)].tolist())
    assert starts == written


def test_chunk_keeps_the_workspace_near_the_units():
    for B, Tk in [(1, 16384), (64, 2048), (8, 512), (256, 32768)]:
        chunk = decode_plan.chunk_size(B, Tk, 132, 8)
        assert chunk >= decode_plan.MIN_CHUNK and chunk & (chunk - 1) == 0
        assert decode_plan.workspace_slots(B, Tk, chunk) <= decode_plan.CHUNKS_PER_UNIT * 33


# ------------------------------------------------------------------------------ the Triton kernels

triton = pytest.importorskip("triton")


@pytest.fixture
def interpreted(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from fastseq.ops.attention import triton_decode
    from fastseq.triton.common import Target
    monkeypatch.setattr(triton_decode, "target", lambda device: Target(90, 132))  # units cross rows
    return triton_decode


CASES = [(3, 4, 2, 70, 16, 8), (1, 2, 1, 300, 32, 32), (6, 6, 3, 33, 8, 16), (9, 2, 2, 5, 16, 16)]


KERNEL_RUNS = ([(case, kind, torch.float32) for case, kind in itertools.product(CASES, ["full", "ragged", "zeros",
                                                                                   "mask", "both"])]
               + [(CASES[i], kind, dtype) for i, kind, dtype in (
                   (0, "both", torch.float16), (1, "ragged", torch.float16), (0, "both", torch.float64),
                   (2, "mask", torch.float64))])


@pytest.mark.parametrize("case,kind,dtype", KERNEL_RUNS)
def test_kernels_match_float64(interpreted, case, kind, dtype):
    B, Hq, Hkv, T, D, Dv = case
    torch.manual_seed(hash((case, kind)) % 2**31)
    q, k, v = torch.randn(B, Hq, D), torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, Dv)
    lengths = {"ragged": LENGTHS["ragged"], "both": LENGTHS["ragged"], "zeros": LENGTHS["zeros"]}.get(kind)
    lengths = None if lengths is None else lengths(B, T)
    mask = torch.rand(B, T) < 0.3 if kind in ("mask", "both") else None
    out = interpreted.attention_decode(q.to(dtype), k.to(dtype), v.to(dtype), lengths, mask, D ** -0.5)
    expected = reference_decode(q.double(), k.double(), v.double(), lengths, mask, D ** -0.5)
    bound = {torch.float16: 2e-3, torch.float32: 2e-6, torch.float64: 1e-12}[dtype]
    assert out.dtype == dtype and out.shape == (B, Hq, Dv)
    torch.testing.assert_close(out.double(), expected, atol=bound, rtol=bound)


def test_kernels_read_the_plan_in_several_row_blocks(interpreted, monkeypatch):
    monkeypatch.setattr(interpreted, "MAX_BLOCK_B", 4)  # the plan's row loops take several blocks
    B, Hq, Hkv, T, D = 11, 2, 1, 40, 16
    torch.manual_seed(3)
    q, k, v = torch.randn(B, Hq, D), torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D)
    lengths = LENGTHS["ragged"](B, T)
    out = interpreted.attention_decode(q, k, v, lengths, None, 0.3)
    torch.testing.assert_close(out.double(), reference_decode(q.double(), k.double(), v.double(), lengths, None, 0.3),
                               atol=2e-6, rtol=2e-6)


def test_cache_views_are_read_in_place(interpreted):
    B, Hq, Hkv, cap, T, D = 3, 4, 2, 50, 37, 16
    torch.manual_seed(4)
    q = torch.randn(B, Hq, D)
    k_cache, v_cache = torch.randn(B, Hkv, cap, D), torch.randn(B, Hkv, cap, D)
    k, v = k_cache[:, :, :T], v_cache[:, :, :T]  # a KVCache's view of its first T positions
    lengths = torch.tensor([37, 0, 12], dtype=torch.int32)
    out = interpreted.attention_decode(q, k, v, lengths, None, 0.25)
    torch.testing.assert_close(out.double(), reference_decode(q.double(), k.double(), v.double(), lengths, None, 0.25),
                               atol=2e-6, rtol=2e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("B,T", [(1, 16384), (64, 2048), (1100, 40)])
def test_balanced_decode_on_a_gpu_matches_float64_and_replays_in_a_graph(B, T):
    from fastseq import backends
    from fastseq.nn import KVCache

    torch.manual_seed(B)
    Hq, Hkv, D = 8, 2, 128
    cache = KVCache(B, Hkv, D, T, dtype=torch.bfloat16, device="cuda")
    cache.make_static()
    cache.k.normal_(), cache.v.normal_()
    cache.lengths.copy_(torch.randint(0, T + 1, (B,), device="cuda"))
    q = torch.randn(B, Hq, D, device="cuda", dtype=torch.bfloat16)
    expected = reference_decode(q.double(), cache.k.double(), cache.v.double(), cache.lengths, None, D ** -0.5)
    with backends.use("triton"), torch.no_grad():
        eager = cache.attend(q)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            cache.attend(q)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = cache.attend(q)
        graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(eager.double(), expected, atol=2e-2, rtol=2e-2)
    assert torch.equal(captured, eager)
