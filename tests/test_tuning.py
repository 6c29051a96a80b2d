"""Backend choice by measurement (fastseq.ops.tuning): the first call in a shape bucket times each backend
that serves it and keeps the fastest, in memory and in a JSON cache; a forced backend, FASTSEQ_AUTOTUNE=0
and torch.compile tracing leave it out; a bad cache file degrades to memory with one warning; the
caller's random stream and results are what the chosen backend gives."""
import json
import time
import warnings

import pytest
import torch

from fastseq import backends, ops
from fastseq.ops import registry, tuning


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "choices.json"
    monkeypatch.setenv("FASTSEQ_CACHE", str(path))
    monkeypatch.setenv("FASTSEQ_AUTOTUNE", "1")
    tuning.forget()
    yield path
    tuning.forget()


def _lstm_args(T=6, B=3, I=5, H=7, grad=False):
    tensors = [torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H), torch.randn(4 * H, I),
               torch.randn(4 * H, H), torch.randn(4 * H)]
    return [t.requires_grad_(grad) for t in tensors]


def _spy(monkeypatch, slow: str, seconds: float = 0.1):
    """Record which backend each lstm_layer call runs on, and make `slow` slower by `seconds`."""
    return _spy_switch(monkeypatch, {slow: seconds})


def _spy_switch(monkeypatch, delays: dict):
    """Like _spy, with each backend's added delay read from `delays` at every call (a machine whose load changes)."""
    ran = []
    original = registry.Family.function

    def function(self, backend, name):
        fn = original(self, backend, name)
        if self.name != "lstm" or name != "lstm_layer":
            return fn

        def spied(*args, **kwargs):
            ran.append(backend)
            time.sleep(delays.get(backend, 0.0))
            return fn(*args, **kwargs)
        return spied
    monkeypatch.setattr(registry.Family, "function", function)
    return ran


def test_first_call_times_each_backend_and_keeps_the_fastest(cache, monkeypatch, one_thread):
    ran = _spy(monkeypatch, slow="torch")
    x = _lstm_args()
    with torch.no_grad():
        ops.lstm_layer(*x)
    assert {"torch", "cpu"} <= set(ran)  # both timed on this call's inputs
    (bucket, measured), = tuning.choices().items()
    assert measured.backend == "cpu" and set(measured.times_ms) == {"torch", "cpu"}
    assert measured.times_ms["torch"] > measured.times_ms["cpu"] and measured.tuning_s > 0
    assert bucket.startswith("lstm|cpu/1t|float32|nograd|8x4x8x8x8|False|False")
    ran.clear()
    with torch.no_grad():
        ops.lstm_layer(*_lstm_args(T=5))  # the same bucket (T rounds up to 8): no timing, the kept choice
    assert ran == ["cpu"]
    saved = json.loads(cache.read_text())
    assert saved["versions"]["torch"] == torch.__version__ and saved["choices"][bucket]["backend"] == "cpu"


def test_a_gradient_is_its_own_bucket_timed_forward_and_backward(cache, monkeypatch, one_thread):
    _spy(monkeypatch, slow="cpu")
    x = _lstm_args(grad=True)
    y, h, c = ops.lstm_layer(*x)
    (y.sum() + h.sum() + c.sum()).backward()
    (bucket, measured), = tuning.choices().items()
    assert "|grad|" in bucket and measured.backend == "torch"
    assert all(t.grad is not None for t in x)
    for t in x:  # the trials' gradients do not reach the caller's tensors: one backward's worth only
        expected = torch.autograd.grad(sum(o.sum() for o in ops.lstm_layer(*x)), t, retain_graph=False)[0]
        torch.testing.assert_close(t.grad, expected)
        break


def test_the_cache_file_serves_a_new_process(cache, monkeypatch):
    with torch.no_grad():
        ops.lstm_layer(*_lstm_args())
    (bucket, measured), = tuning.choices().items()
    tuning.forget()  # a new process: memory empty, the file read
    ran = _spy(monkeypatch, slow="none")
    with torch.no_grad():
        ops.lstm_layer(*_lstm_args())
    assert ran == [measured.backend]


def _with_threads(n):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """The backends' own time well below the sleeps that stand for load, on a machine that may be busy."""
    yield from _with_threads(1)


def test_a_kept_choice_the_machine_no_longer_agrees_with_is_measured_again(cache, monkeypatch, one_thread):
    """The kept backend turns far slower than its record (a busy core): once the mean of the last WINDOW
    probes says so the bucket is measured again and the other backend serves; one slow probe among probes
    that agree changes nothing."""
    delays = {"torch": 0.06, "cpu": 0.02}  # sleeps well above a busy machine's jitter
    ran = _spy_switch(monkeypatch, delays)
    monkeypatch.setattr(tuning, "PROBE_MIN_S", 0.0)
    monkeypatch.setattr(tuning, "PROBE_GAP", 0)  # probe on every call
    x = _lstm_args()
    with torch.no_grad():
        ops.lstm_layer(*x)
        (bucket, first), = tuning.choices().items()
        assert first.backend == "cpu"
        for _ in range(tuning.WINDOW + 2):  # probes agree: still cpu, never re-measured
            ops.lstm_layer(*x)
        assert tuning.choices()[bucket] is first
        delays.update(cpu=0.1, torch=0.0)
        ops.lstm_layer(*x)
        assert tuning.choices()[bucket] is first  # not yet: one slow probe is not a busy machine
        slow = 1
        while tuning.choices()[bucket] is first and slow < tuning.WINDOW:
            ops.lstm_layer(*x)
            slow += 1
        again = tuning.choices()[bucket]
        assert again is not first and again.backend == "torch"
        ran.clear()
        monkeypatch.setattr(tuning, "PROBE_GAP", 10**6)
        ops.lstm_layer(*_lstm_args(T=5))  # another call of the bucket: the new choice, no probe
    assert ran == ["torch"]
    assert json.loads(cache.read_text())["choices"][bucket]["backend"] == "torch"


def test_a_choice_by_mean_counts_the_stalls_a_median_ignores(cache, monkeypatch):
    """A candidate that stalls one run in three (a busy core) against a steady one: by median the stalling
    one wins, by mean the steady one; measuring by mean takes MEAN_RUNS runs even of a slow candidate."""
    runs = {"stalls": 0, "steady": 0}

    def run(choice):
        runs[choice] += 1
        time.sleep((0.12 if runs[choice] % 3 == 0 else 0.002) if choice == "stalls" else 0.02)
    for by, expected in (("median", "stalls"), ("mean", "steady")):
        tuning.forget()
        runs.update(stalls=0, steady=0)
        call = tuning.Call(torch.device("cpu"), torch.float32, False, (), (by,), run)  # a bucket each
        assert tuning.pick("demo", ("stalls", "steady"), call, by=by) == expected
        assert runs["steady"] >= 1 + (tuning.MEAN_RUNS if by == "mean" else tuning.REPEATS)
    runs.update(stalls=0, steady=0)
    slow = tuning.Call(torch.device("cpu"), torch.float32, False, (), ("slow",), lambda c: run(c) or time.sleep(0.06))
    tuning.pick("demo", ("stalls", "steady"), slow, by="mean")
    assert runs["steady"] == 1 + tuning.MEAN_RUNS  # past SLOW a median takes one run; a mean still takes these
    with pytest.raises(ValueError, match="by must be one of"):
        tuning.pick("demo", ("stalls", "steady"), call, by="p90")


def test_the_measurement_after_a_windows_verdict_counts_the_windows_probes():
    """A window of probes that found a candidate stalling is evidence the measurement after it weighs: with the
    probes' runs counted, the steady candidate wins although the fresh runs alone (no stall among them)
    would favour the other."""
    runs = {"a": lambda: time.sleep(0.002), "b": lambda: time.sleep(0.004)}
    fresh = tuning._times_ms(runs, torch.device("cpu"), "mean")
    assert fresh["a"] < fresh["b"]
    window = {"a": [60.0, 2.0, 60.0, 2.0], "b": [4.0, 4.0, 4.0, 4.0]}  # a stalled in half its probes
    weighed = tuning._times_ms(runs, torch.device("cpu"), "mean", window)
    assert weighed["b"] < weighed["a"]


def test_a_kept_choice_can_be_held_until_its_probe_and_probed_at_once(cache):
    """kept(): the choice, its bucket, when its probe is due and its record, for a caller that holds it
    between calls; probe_now(): the next pick probes (one run of each candidate) whatever the gap."""
    ran = []
    call = tuning.Call(torch.device("cpu"), torch.float32, False, (3,), (), lambda b: ran.append(b) or time.sleep(0.01))
    assert tuning.kept("demo", ("a", "b"), call) is None
    before = tuning.generation()
    choice = tuning.pick("demo", ("a", "b"), call)
    backend, bucket, due, recorded = tuning.kept("demo", ("a", "b"), call)
    assert tuning.generation() != before  # a measurement: callers' copies are stale
    assert backend == choice and due > time.perf_counter() and recorded == tuning.choices()[bucket].times_ms[choice]
    ran.clear()
    tuning.pick("demo", ("a", "b"), call)
    assert ran == []  # not due
    tuning.probe_now(bucket)
    tuning.pick("demo", ("a", "b"), call)
    assert sorted(ran) == ["a", "b"]  # the probe: one run of each


def _load_by_threads(monkeypatch, delays: dict):
    """A sleep before each LSTM call by the thread count it runs on ("all" or "one"): a stand-in for a load."""
    original = registry.Family.call

    def call(self, function, backend, *args, **kwargs):
        if self.name == "lstm" and function in ("lstm", "lstm_layer"):
            time.sleep(delays["one" if torch.get_num_threads() == 1 else "all"])
        return original(self, function, backend, *args, **kwargs)
    monkeypatch.setattr(registry.Family, "call", call)


def test_a_stalled_call_brings_the_thread_choice_probe_forward(cache, monkeypatch, two_threads):
    """A served call SLOWER times its choice's record (a load has come) makes the next call probe, without
    waiting for PROBE_GAP: within a window of probes the LSTM is on one thread."""
    from fastseq.nn import LSTM
    delays = {"all": 0.0, "one": 0.3}
    _load_by_threads(monkeypatch, delays)
    monkeypatch.setattr(tuning, "PROBE_GAP", 10**6)
    monkeypatch.setattr(tuning, "PROBE_MIN_S", 10**6)  # no probe on the clock: only a stall brings one
    ours = LSTM(5, 7)
    x = torch.randn(6, 3, 5)
    with torch.no_grad(), backends.use(cpu="torch"):
        ours(x)
        bucket = next(k for k in tuning.choices() if k.startswith("lstm_threads|"))
        assert tuning.choices()[bucket].backend == "all"
        delays.update(all=0.3, one=0.0)
        calls = 0
        while tuning.choices()[bucket].backend == "all" and calls < tuning.WINDOW + 2:
            ours(x)
            calls += 1
    assert tuning.choices()[bucket].backend == "one" and calls <= tuning.WINDOW + 1  # not after PROBE_GAP


@pytest.fixture
def two_threads():
    yield from _with_threads(2)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_an_lstm_takes_one_thread_when_all_run_far_slower(cache, monkeypatch, two_threads, backend):
    """Without a gradient, fastseq.nn.LSTM runs on the caller's threads or on one, measured (lstm_threads),
    whichever backend serves it: with a core busy, every step's parallel region waits for the descheduled
    thread. Here a sleep stands for that wait: the chooser takes one thread, the caller's count is restored
    after each call, and when the load goes the probes bring all threads back; the answer is torch.nn.LSTM's
    either way."""
    from fastseq.nn import LSTM
    delays = {"all": 0.3, "one": 0.0}  # far above a real stall of this tiny LSTM on a busy machine (xdist's)
    threads = []
    original = registry.Family.call

    def call(self, function, backend, *args, **kwargs):
        if self.name == "lstm" and function in ("lstm", "lstm_layer"):
            threads.append(torch.get_num_threads())
            time.sleep(delays["one" if threads[-1] == 1 else "all"])
        return original(self, function, backend, *args, **kwargs)
    monkeypatch.setattr(registry.Family, "call", call)
    monkeypatch.setattr(tuning, "PROBE_MIN_S", 0.0)
    monkeypatch.setattr(tuning, "PROBE_GAP", 0)  # probe on every call
    torch.manual_seed(0)
    base = torch.nn.LSTM(5, 7, num_layers=2)
    ours = LSTM(5, 7, num_layers=2)
    ours.load_state_dict(base.state_dict())
    x = torch.randn(6, 3, 5)
    with torch.no_grad(), backends.use(cpu=backend):
        expected = base(x)
        got = ours(x)
        bucket = next(k for k in tuning.choices() if k.startswith("lstm_threads|"))
        assert tuning.choices()[bucket].backend == "one"
        assert threads[-1] == 1 and torch.get_num_threads() == 2
        exact = {"rtol": 0, "atol": 0} if backend == "torch" else {}
        torch.testing.assert_close(got[0], expected[0], **exact)
        delays.update(all=0.0, one=0.3)
        for _ in range(tuning.WINDOW):
            ours(x)
        assert tuning.choices()[bucket].backend == "all"
        ours(x)
        assert threads[-1] == 2 and torch.get_num_threads() == 2  # the call itself, after any probe


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_an_lstm_trains_on_one_thread_forward_and_backward_when_all_run_far_slower(cache, monkeypatch, two_threads,
                                                                                   backend):
    """With a gradient the thread choice is its own bucket, timed forward and backward; where one thread
    wins, the LSTM's backward runs on one thread too (seen from the saved tensors it unpacks), the caller's
    count is back once the backward has passed the LSTM's inputs, and the gradients are torch.nn.LSTM's. A
    backward that raises midway leaves one thread set until the next call gives it back."""
    from fastseq.nn import LSTM
    delays = {"all": 0.3, "one": 0.0}
    _load_by_threads(monkeypatch, delays)
    torch.manual_seed(0)
    base = torch.nn.LSTM(5, 7, num_layers=2)
    ours = LSTM(5, 7, num_layers=2)
    ours.load_state_dict(base.state_dict())
    x = torch.randn(6, 3, 5, requires_grad=True)
    unpacked, after = [], []
    with backends.use(cpu=backend):
        y_base = base(x)[0]
        g_base = torch.autograd.grad(y_base.square().sum(), [x, *base.parameters()])
        x.register_hook(lambda g: after.append(torch.get_num_threads()))
        ours(x)  # the choice, measured on copies: neither x's hook nor the saved tensors below see it
        bucket = next(k for k in tuning.choices() if k.startswith("lstm_threads|"))
        assert "|grad|" in bucket and tuning.choices()[bucket].backend == "one"
        seen = lambda t: unpacked.append(torch.get_num_threads()) or t  # noqa: E731
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, seen):
            y = ours(x)[0]
        assert torch.get_num_threads() == 2
        y.square().sum().backward()
    assert unpacked and set(unpacked) == {1} and after == [2] and torch.get_num_threads() == 2
    close = {"rtol": 0, "atol": 0} if backend == "torch" else {}
    torch.testing.assert_close(y, y_base, **close)
    for got, expected in zip([x.grad, *(p.grad for p in ours.parameters())], g_base):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # one thread's sums against two's

    with backends.use(cpu=backend):
        y = ours(x)[0]
        y.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("a user's hook fails")))
        with pytest.raises(RuntimeError, match="a user's hook fails"):
            y.sum().backward()
        assert torch.get_num_threads() == 1  # the LSTM's hook ran first and set one thread
        ours(x)
    assert torch.get_num_threads() == 2

def test_probes_wait_their_gap(cache, monkeypatch, one_thread):
    """A probe runs at most once per PROBE_GAP recorded call times (so checking costs about 1/PROBE_GAP)."""
    ran = _spy(monkeypatch, slow="torch", seconds=0.005)
    with torch.no_grad():
        x = _lstm_args()
        ops.lstm_layer(*x)
        measured, = tuning.choices().values()
        ran.clear()
        gap = tuning._gap_s(measured)
        (due,) = tuning._probe_at.values()
        clock = [due - gap]  # the moment the choice was made
        monkeypatch.setattr(tuning.time, "perf_counter", lambda: clock[0])
        assert gap == max(tuning.PROBE_MIN_S, tuning.PROBE_GAP * sum(measured.times_ms.values()) / 1e3)
        clock[0] += gap * 0.99
        ops.lstm_layer(*x)
        assert ran == ["cpu"]  # no probe yet
        clock[0] += gap * 0.02
        ops.lstm_layer(*x)
    assert sorted(ran[1:]) == ["cpu", "cpu", "torch"]  # one run of each candidate, then the call itself


def test_a_forced_backend_and_autotune_off_are_not_measured(cache, monkeypatch):
    ran = _spy(monkeypatch, slow="none")
    with torch.no_grad(), backends.use("cpu"):
        ops.lstm_layer(*_lstm_args())
    assert ran == ["cpu"] and not tuning.choices()
    monkeypatch.setenv("FASTSEQ_AUTOTUNE", "0")
    with torch.no_grad():
        ops.lstm_layer(*_lstm_args())
    assert ran == ["cpu", "torch"] and not tuning.choices()  # the static order: torch first on a CPU
    monkeypatch.setenv("FASTSEQ_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="FASTSEQ_AUTOTUNE must be 0 or 1"):
        ops.lstm_layer(*_lstm_args())


@pytest.mark.parametrize("content", ["{not json", json.dumps({"versions": {"torch": "0.0"}, "choices": {}}),
                                     json.dumps({"versions": None})])
def test_a_corrupt_or_stale_cache_degrades_to_memory_with_one_warning(cache, content):
    cache.write_text(content)
    with pytest.warns(RuntimeWarning, match="fastseq backend choices"), torch.no_grad():
        ops.lstm_layer(*_lstm_args())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            ops.lstm_layer(*_lstm_args(B=40))  # a second bucket: no second warning
    assert len(tuning.choices()) == 2


def test_an_unwritable_cache_degrades_to_memory_with_one_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FASTSEQ_CACHE", str(blocker / "choices.json"))  # a folder that is a file
    monkeypatch.setenv("FASTSEQ_AUTOTUNE", "1")
    tuning.forget()
    with pytest.warns(RuntimeWarning, match="cannot be written"), torch.no_grad():
        ops.lstm_layer(*_lstm_args())
    assert len(tuning.choices()) == 1
    tuning.forget()


def test_the_callers_random_stream_is_untouched(cache):
    q, k, v = (torch.randn(2, 2, 9, 8, requires_grad=True) for _ in range(3))
    torch.manual_seed(5)
    ops.attention(q, k, v, dropout_p=0.3)  # the first call of its bucket: timed
    after_tuned = torch.rand(3)
    torch.manual_seed(5)
    ops.attention(q, k, v, dropout_p=0.3)  # kept: not timed
    assert torch.equal(torch.rand(3), after_tuned)


def test_the_cost_of_choosing_is_recorded(cache):
    """Each bucket keeps what choosing cost (fastseq info prints it): at least the timed runs themselves."""
    x = [torch.randn(32, 16, 64), torch.randn(16, 64), torch.randn(16, 64), torch.randn(256, 64),
         torch.randn(256, 64), torch.randn(256)]
    with torch.no_grad():
        ops.lstm_layer(*x)
    (measured,) = tuning.choices().values()
    assert measured.tuning_s >= sum(measured.times_ms.values()) / 1e3 > 0


def test_compile_tracing_does_not_measure(cache, monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    call = tuning.Call(torch.device("cpu"), torch.float32, False, (4,), (), lambda b: pytest.fail("timed"))
    assert tuning.pick("lstm", ("torch", "cpu"), call) is None


def test_served_records_what_ran_and_not_the_choosers_trials(cache):
    x = _lstm_args(grad=True)
    with registry.served() as record:
        y, h, c = ops.lstm_layer(*x)  # the first call of its bucket: timed on every candidate first
        (y.sum() + h.sum() + c.sum()).backward()
    (measured,) = tuning.choices().values()
    if registry.differentiated("lstm", measured.backend, "cpu"):  # torch's autograd runs its backward
        assert record == [("lstm", "lstm_layer", measured.backend)]
    else:
        assert record == [("lstm", "lstm_layer", measured.backend), ("lstm", "lstm_layer_backward", measured.backend)]


@pytest.mark.cuda
def test_choice_by_measurement_on_a_gpu(cache):
    """On a GPU: decoding and the LSTM layer's inference timed on every backend that runs there (CUDA
    events' synchronisation, Triton's first-call compilation in the warm-up), the fastest kept, and its
    answer the reference's."""
    torch.manual_seed(0)
    q = torch.randn(4, 8, 64, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(4, 2, 300, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    lengths = torch.tensor([300, 17, 150, 1], device="cuda")
    out = ops.attention_decode(q, k, v, lengths=lengths)
    with backends.use("reference"):
        expected = ops.attention_decode(q.double(), k.double(), v.double(), lengths=lengths)
    (bucket, measured), = tuning.choices().items()
    assert bucket.startswith(f"attention_decode|{torch.cuda.get_device_name()}|bfloat16|nograd|4x8x2x512x64x64")
    assert set(measured.times_ms) == {b for b in ("triton", "cuda", "torch") if backends.availability(b, "cuda")[0]}
    assert (out.double() - expected).norm() / expected.norm() < 2e-2
    x = _lstm_args(T=20, B=8, I=32, H=64)
    with torch.no_grad():
        y, h, c = ops.lstm_layer(*(t.cuda() for t in x))
        expected = ops.lstm_layer(*x)
    assert len(tuning.choices()) == 2
    torch.testing.assert_close(y.cpu(), expected[0], rtol=1e-4, atol=1e-4)


def test_an_ops_answer_is_kept_for_its_question_until_a_choice_changes_or_its_probe_is_due(cache, monkeypatch):
    """registry.chosen with a key: the same question (sizes, dtype, device, the user's forcing, measuring on or
    off, threads) is answered again without asking the chooser, for up to PROBE_MIN_S; a forced backend,
    FASTSEQ_AUTOTUNE=0 or a changed choice anywhere (tuning.generation) is seen at the next call."""
    asked = []
    original = tuning.pick
    monkeypatch.setattr(tuning, "pick", lambda *a, **k: asked.append(a[0]) or original(*a, **k))
    ran = _spy(monkeypatch, slow="none")
    x = _lstm_args()
    with torch.no_grad():
        ops.lstm_layer(*x)  # measured: the generation moved while choosing, so the next call asks once more
        ops.lstm_layer(*x)
        first = ran[-1]
        asked.clear()
        ops.lstm_layer(*x)
        assert asked == [] and ran[-1] == first
        other = "cpu" if first == "torch" else "torch"
        with backends.use(cpu=other):
            ops.lstm_layer(*x)
        assert ran[-1] == other
        tuning.probe_now()  # a choice may have changed: the chooser is asked again
        ops.lstm_layer(*x)
        assert asked == ["lstm"]
        monkeypatch.setenv("FASTSEQ_AUTOTUNE", "0")
        ops.lstm_layer(*x)
        assert ran[-1] == "torch"  # the static order's first on a CPU
        monkeypatch.setenv("FASTSEQ_AUTOTUNE", "1")
        monkeypatch.setattr(tuning, "PROBE_MIN_S", 0.0)
        tuning.probe_now()
        ops.lstm_layer(*x)
        asked.clear()
        ops.lstm_layer(*x)
        ops.lstm_layer(*x)
        assert asked == ["lstm", "lstm"]  # kept for no time at all

