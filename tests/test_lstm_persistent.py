"""The persistent LSTM layer: its algorithm as a PyTorch model (fastseq.ops.lstm.persistent, the partition
and the exchange the CUDA kernel runs) against the float64 reference, forward and gradients, at odd sizes;
its plan (kernels/lstm_persistent_plan.h) for every hidden size it covers; what it refuses, by name."""
import pytest
import torch

from fastseq.ops.lstm import persistent, reference

from _util import rel_err


def _layer(T, B, I, H, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5).to(dtype)  # noqa: E731
    return r(T, B, I), r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H)


def test_block_rows_cover_every_gate_row_once_in_tile_order():
    H, units = 24, 8
    rows = [persistent.block_rows(H, units, c) for c in range(3)]
    assert sorted(r for block in rows for r in block) == list(range(4 * H))
    # tile 0 of block 1: units 8..11, rows [i x4 | f x4 | g x4 | o x4]
    assert rows[1][:16] == [8, 9, 10, 11, 32, 33, 34, 35, 56, 57, 58, 59, 80, 81, 82, 83]


CASES = [  # T, B, I, H, ctas, units, batch_tile, lengths
    (7, 5, 9, 12, 3, 4, 8, None),
    (6, 11, 5, 16, 2, 8, 8, [6, 6, 5, 5, 4, 3, 3, 2, 1, 1, 1]),
    (5, 3, 7, 24, 3, 8, 16, [5, 2, 1]),
    (9, 17, 4, 8, 1, 8, 8, [9] * 9 + [4] * 8),
]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}B{c[1]}H{c[3]}ctas{c[4]}tile{c[6]}")
def test_model_forward_matches_the_float64_reference(case, reverse):
    T, B, I, H, ctas, units, tile, lengths = case
    x, h0, c0, w_ih, w_hh, bias = _layer(T, B, I, H)
    lengths = None if lengths is None else torch.tensor(lengths)
    ref = reference.lstm_layer(x, h0, c0, w_ih, w_hh, bias, None, lengths, reverse, True)
    got = persistent.model_forward(x, h0, c0, w_ih, w_hh, bias, lengths, reverse, ctas, units, tile)
    for name, a, b in zip(("y", "h_n", "c_n", "gates_ws", "c_ws"), got, ref):
        assert rel_err(a, b) < 1e-12, name


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}B{c[1]}H{c[3]}ctas{c[4]}tile{c[6]}")
def test_model_backward_matches_autograd_through_the_reference(case, reverse):
    """Every gradient of the partitioned backward (partial sums sent to their units' blocks, added in block
    order) against autograd through the float64 reference, fresh random upstream gradients."""
    T, B, I, H, ctas, units, tile, lengths = case
    params = [p.requires_grad_() for p in _layer(T, B, I, H, seed=1)]
    lengths = None if lengths is None else torch.tensor(lengths)
    y, h_n, c_n, _, _ = reference.lstm_layer(*params, None, lengths, reverse, False)
    grads = [torch.randn_like(t) for t in (y, h_n, c_n)]
    expected = torch.autograd.grad((y, h_n, c_n), params, grads)
    x, h0, c0, w_ih, w_hh, bias = (p.detach() for p in params)
    y, _, _, gates_ws, c_ws = persistent.model_forward(x, h0, c0, w_ih, w_hh, bias, lengths, reverse, ctas, units, tile)
    got = persistent.model_backward(*grads, x, h0, c0, w_ih, w_hh, bias, lengths, reverse, y, gates_ws, c_ws, ctas,
                                    units, tile)
    # model_backward: (x, h0, c0, w_ih, w_hh, bias); autograd: (x, h0, c0, w_ih, w_hh, bias)
    for name, a, b in zip(("x", "h0", "c0", "w_ih", "w_hh", "bias"), got, expected):
        assert rel_err(a, b) < 1e-10, name


def test_model_in_bfloat16_stays_within_its_rounding():
    """The kernel's numerics: W_hh and h in bfloat16 on chip, products summed in float32, the cell in float32."""
    T, B, I, H = 16, 9, 32, 32
    x, h0, c0, w_ih, w_hh, bias = _layer(T, B, I, H, seed=2)
    ref = reference.lstm_layer(x, h0, c0, w_ih, w_hh, bias, None, None, False, False)
    got = persistent.model_forward(*(t.bfloat16() for t in (x, h0, c0, w_ih, w_hh, bias)), None, False, 4, 8, 8)
    for a, b in zip(got[:3], ref[:3]):
        assert rel_err(a, b) < 3e-2


SUPPORTED = [128, 256, 512, 1024]


@pytest.mark.parametrize("hidden", SUPPORTED)
@pytest.mark.parametrize("batch", [1, 8, 32, 64, 256])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_plan_fits_an_h200_for_every_supported_hidden_size(hidden, batch, backward):
    """The plan's arithmetic on an H200: the group fits the device, the weights fit the register budget,
    the buffers the shared memory, the batch tile the accumulators, and every batch row has a group."""
    from fastseq import backends

    if backends.extension() is None:
        pytest.skip("fastseq._C is not built")
    p = persistent.plan(hidden, hidden, batch, 2, backward)
    assert p["refusal"] is None, p
    assert p["ctas"] * p["units"] == hidden and p["units"] % 4 == 0
    assert p["ctas"] <= 132 and p["resident_groups"] == 132 // p["ctas"]
    assert p["exchange"] == ("cluster" if p["ctas"] <= 16 else "grid")
    assert p["weight_registers"] <= 128 and p["m_tiles"] * p["k_split"] == 8
    assert 8 <= p["batch_tile"] <= (64 if not backward else 16 if hidden < 1024 else 8) and p["batch_tile"] % 8 == 0
    assert p["groups"] * p["batch_tile"] >= batch > (p["groups"] - 1) * p["batch_tile"]
    assert 0 < p["shared_bytes"] <= 227 * 1024
    if batch <= 32 and not backward:  # small batches: one group per 8 rows, spread over the device
        assert p["groups"] <= p["resident_groups"]


@pytest.mark.parametrize("hidden,proj,element,why", [
    (512, 512, 4, "16-bit"), (512, 256, 2, "proj_size"), (384, 384, 2, "hidden_size"), (512, 512, 8, "16-bit")])
def test_plan_refuses_what_its_tiles_do_not_cover_by_name(hidden, proj, element, why):
    from fastseq import backends

    if backends.extension() is None:
        pytest.skip("fastseq._C is not built")
    assert why in persistent.plan(hidden, proj, 8, element, False)["refusal"]


def test_plan_takes_the_grid_exchange_without_clusters():
    """An A100 (sm_80: no clusters): the group exchanges through global memory; a device with fewer
    multiprocessors than the group needs is refused."""
    from fastseq import backends

    if backends.extension() is None:
        pytest.skip("fastseq._C is not built")
    p = persistent.plan(512, 512, 32, 2, False, (108, 8, 1, 163 * 1024))
    assert p["refusal"] is None and p["exchange"] == "grid" and p["resident_groups"] == 108 // 16
    assert "co-resident" in persistent.plan(1024, 1024, 8, 2, False, (46, 9, 16, 227 * 1024))["refusal"]


def test_refusal_names_what_the_cuda_layer_cannot_hold():
    """fastseq.ops.lstm.persistent.refusal on an H200's limits: 16-bit layers of the covered sizes are served,
    forward and backward; float32, a projection, another hidden size are refused by name."""
    from fastseq import backends

    if backends.extension() is None:
        pytest.skip("fastseq._C is not built")
    x = torch.empty(4, 8, 512, dtype=torch.bfloat16)
    w_hh = torch.empty(2048, 512, dtype=torch.bfloat16)
    assert persistent.refusal(x, w_hh, None, True, persistent.H200) is None
    assert "16-bit" in persistent.refusal(x.float(), w_hh.float(), None, False, persistent.H200)
    assert "proj_size" in persistent.refusal(x, w_hh, torch.empty(256, 512), False, persistent.H200)
    assert "hidden_size" in persistent.refusal(x, torch.empty(4 * 384, 384, dtype=torch.bfloat16), None, False,
                                               persistent.H200)
    assert persistent.refusal(x, w_hh, None, True) is None  # CPU tensors: not this kernel's to judge


def test_a_refused_backend_is_skipped_and_named_when_asked_for(monkeypatch):
    """The chooser leaves out a backend the family's refusal turns down for a call (the next one serves, with
    the same result), and a user who asks for it by name gets an error saying why, before anything runs."""
    from fastseq import backends, ops
    from fastseq.ops import lstm as lstm_ops

    monkeypatch.setattr(lstm_ops, "_refusal", lambda backend, function, args: (
        "stand-in refusal: hidden size 6" if backend == "cpu" and args[4].shape[1] == 6 else None))
    params = [torch.randn(5, 3, 4), torch.randn(3, 6), torch.randn(3, 6), torch.randn(24, 4), torch.randn(24, 6),
              torch.randn(24)]
    from fastseq.ops.registry import served

    with served() as record, backends.use("cpu"):
        with pytest.raises(backends.BackendUnavailableError, match="stand-in refusal: hidden size 6"):
            ops.lstm_layer(*params)
    with served() as record:
        y, h, c = ops.lstm_layer(*params)
    assert record and all(backend != "cpu" for _, _, backend in record), record
    ref = reference.lstm_layer(*params, None, None, False, False)
    assert rel_err(y, ref[0]) < 1e-5 and rel_err(h, ref[1]) < 1e-5


@pytest.mark.parametrize("kind", ["forward", "backward", "grid"])
def test_the_exchange_neither_hangs_nor_reads_early_under_any_interleaving(kind):
    """The kernel's exchange protocol (its waits, barrier phases and parities, transaction counts, flags) as
    coroutines a random scheduler interleaves, for many seeds and sizes: every block finishes, every read
    sees all of its step's data and no buffer is overwritten before its owner read it."""
    for ctas in (1, 2, 3, 5):
        for steps in (1, 2, 3, 4, 7):
            for seed in range(25):
                persistent.simulate_exchange(kind, ctas, steps, seed, rounds=1 + seed % 3)


def test_the_exchange_model_catches_a_wrong_parity():
    """The model is not vacuous: the backward's wait with the forward-looking parity (k / 2) hangs."""
    original = persistent._backward_cluster

    def wrong(me, blocks, steps):
        n = len(blocks)
        for k in range(steps + 1):
            par = k % 2
            if k > 0:
                parity = (k // 2) & 1
                yield lambda: me.bars[par].done(parity, (k - 1) // 2)
            me.read = k
            if k == steps:
                return
            me.bars[(k + 1) % 2].expect(n)
            yield None
            for owner in blocks:
                owner.buffers[(k + 1) % 2][me.rank] = k
                owner.bars[(k + 1) % 2].complete(1)
                yield None
    persistent._backward_cluster = wrong
    try:
        with pytest.raises(AssertionError):
            for seed in range(10):
                persistent.simulate_exchange("backward", 2, 4, seed)
    finally:
        persistent._backward_cluster = original


GPU_CASES = [  # T, B, I, H, lengths, reverse, exchange
    (37, 5, 96, 256, [37, 30, 30, 12, 1], False, None), (37, 5, 96, 256, [37, 30, 30, 12, 1], True, None),
    (20, 33, 64, 512, None, False, None), (20, 33, 64, 512, None, True, "grid"), (11, 70, 40, 128, None, False, None),
    (9, 3, 32, 1024, [9, 5, 2], False, None), (9, 3, 32, 1024, [9, 5, 2], True, None),
    (3, 300, 16, 256, None, False, None),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"T{c[0]}B{c[1]}H{c[3]}len{int(c[4] is not None)}"
                                                          f"rev{int(c[5])}{c[6] or ''}")
def test_cuda_persistent_layer_matches_the_float64_reference(monkeypatch, dtype, case):
    """The kernel itself: forward and every gradient against float64, ragged lengths, reverse, the cluster
    exchange and (forced) the grid one, hidden 128 to 1024, a batch over several groups."""
    from fastseq import backends, ops

    T, B, I, H, lengths, reverse, exchange = case
    if exchange:
        monkeypatch.setenv("FASTSEQ_LSTM_EXCHANGE", exchange)
    g = torch.Generator().manual_seed(T * B + H)
    full = [torch.randn(*shape, generator=g, dtype=torch.float64) * scale for shape, scale in
            (((T, B, I), 1.0), ((B, H), 0.5), ((B, H), 0.5), ((4 * H, I), I ** -0.5), ((4 * H, H), H ** -0.5),
             ((4 * H,), 0.1))]
    full = [t.to(dtype).double() for t in full]  # the oracle sees the rounded inputs
    grads = [torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).double()
             for shape in ((T, B, H), (B, H), (B, H))]
    lens = None if lengths is None else torch.tensor(lengths)

    def run(tensors, backend, out_grads):
        params = [t.detach().requires_grad_() for t in tensors]
        with backends.use(cuda=backend, cpu=backend):
            outs = ops.lstm_layer(*params, lengths=lens, reverse=reverse)
        return (*outs, *torch.autograd.grad(outs, params, out_grads))

    expected = run(full, "reference", grads)
    actual = run([t.cuda().to(dtype) for t in full], "cuda", [t.cuda().to(dtype) for t in grads])
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-2
    for name, a, e in zip(("y", "h_n", "c_n", "x", "h0", "c0", "w_ih", "w_hh", "bias"), actual, expected):
        assert a.dtype == dtype and rel_err(a, e) < tol, (name, rel_err(a, e))
    if lens is not None:
        pad = torch.arange(T)[:, None] >= lens[None, :]
        assert (actual[0].cpu()[pad] == 0).all()
