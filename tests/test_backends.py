"""Backend choice: defaults per device, the context manager, FASTSEQ_BACKEND, clear errors; `fastseq info`;
and the package without its compiled extension."""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastseq
from fastseq import backends, ops
from fastseq.cli import main

IMPLEMENTED = ("reference", "triton", "cpu", "cuda")


def test_default_for_cpu_prefers_the_compiled_kernels(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert backends.choose("lstm", "cpu", IMPLEMENTED).backend == "cpu"
    assert backends.choose("lstm", "cpu", ("reference", "triton")).backend in ("triton", "reference")
    assert backends.choose("lstm", "cpu", ("reference",)).backend == "reference"


def test_context_manager_nests_and_restores(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    with backends.use("reference"):
        assert backends.choose("lstm", "cpu", IMPLEMENTED) == backends.Choice("reference",
                                                                              "chosen with fastseq.backends.use")
        with backends.use(cpu="cpu"):
            assert backends.choose("lstm", "cpu", IMPLEMENTED).backend == "cpu"
        assert backends.choose("lstm", "cpu", IMPLEMENTED).backend == "reference"
    assert backends.choose("lstm", "cpu", IMPLEMENTED).backend == "cpu"


def test_environment_variable(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "cuda=triton,cpu=reference")
    choice = backends.choose("lstm", "cpu", IMPLEMENTED)
    assert choice.backend == "reference" and "FASTSEQ_BACKEND" in choice.reason
    with backends.use(cpu="cpu"):  # the context manager wins over the environment
        assert backends.choose("lstm", "cpu", IMPLEMENTED).backend == "cpu"
    monkeypatch.setenv(backends.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="FASTSEQ_BACKEND: unknown backend 'fast'"):
        backends.choose("lstm", "cpu", IMPLEMENTED)
    monkeypatch.setenv(backends.ENV_VAR, "tpu=reference")
    with pytest.raises(ValueError, match="unknown device type 'tpu'"):
        backends.choose("lstm", "cpu", IMPLEMENTED)


def test_errors_name_the_backend_and_why(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        with backends.use("cudnn"):
            pass
    with backends.use(cpu="cuda"), pytest.raises(backends.BackendUnavailableError,
                                                 match="'cuda' backend serves CUDA tensors, not CPU"):
        backends.choose("lstm", "cpu", IMPLEMENTED)
    with backends.use("triton"), pytest.raises(backends.BackendUnavailableError, match="does not implement lstm"):
        backends.choose("lstm", "cpu", ("reference", "cpu"))
    if not torch.cuda.is_available():
        with backends.use(cuda="triton"), pytest.raises(backends.BackendUnavailableError, match="no CUDA device"):
            backends.choose("lstm", "cuda", IMPLEMENTED)


def test_info_and_cli(capsys):
    fastseq.info()
    text = capsys.readouterr().out
    for needle in ("torch", "triton", "fastseq._C", "lstm", "cpu   ->", "cuda  ->"):
        assert needle in text
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["torch"] == torch.__version__
    assert report["ops"]["lstm"]["cpu"]["backend"] == "torch"  # torch's kernels, trained through autograd
    assert report["ops"]["lstm"]["cpu"]["why"]
    assert report["autotune"]["enabled"] and "choices" in report["autotune"]


def test_command_line_entry_point():
    out = subprocess.run([sys.executable, "-m", "fastseq", "info"], capture_output=True, text=True, check=True)
    assert "fastseq._C" in out.stdout


def test_without_the_extension_the_package_serves_reference_and_triton():
    """As after an install with FASTSEQ_BUILD_EXT=0: no fastseq._C to import."""
    code = """
import sys, torch
sys.modules["fastseq._C"] = None  # import fails, as when the extension was not built
import fastseq
from fastseq import backends, nn
assert backends.extension() is None and "fastseq._C" in backends.extension_error()
m = nn.LSTM(3, 4)
y, _ = m(torch.randn(2, 1, 3))
assert backends.choose("lstm", "cpu", ("reference", "cpu")).backend == "reference"
try:
    with backends.use(cpu="cpu"):
        m(torch.randn(2, 1, 3))
except backends.BackendUnavailableError as e:
    assert "fastseq._C is unavailable" in str(e), e
else:
    raise AssertionError("expected BackendUnavailableError")
fastseq.info()
"""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "fastseq._C no:" in out.stdout


@pytest.mark.extension
@pytest.mark.parametrize("device_type", ["cpu", "cuda"], ids=["CPU", "CUDA"])  # runs without a GPU
def test_the_extension_registers_a_kernel_for_every_op_it_serves(device_type):
    """Every family that lists the extension's `device_type` backend finds its functions registered for
    that dispatch key: a kernel left out of csrc/extension.cpp fails here, not at the first GPU call."""
    if backends.extension() is None:
        pytest.skip(f"fastseq._C is unavailable: {backends.extension_error()}")
    if device_type == "cuda" and not backends.extension_has_cuda():
        pytest.skip("fastseq._C was built without CUDA (`make image-check` builds it with nvcc)")
    from fastseq.ops.registry import EXTENSION, declared, families, functions

    serving = [family for family, names in families().items() if device_type in names]
    assert serving, f"no op family is served by the extension on {device_type}"
    for family in serving:
        declaration = declared()[family]
        compiled = list(functions(family)) if declaration.backends[device_type] == EXTENSION else []
        for function in compiled + list(declaration.extension_functions.get(device_type, {})):
            op = f"fastseq_ext::{function}"
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op, device_type.upper()), (family, op)


@pytest.mark.parametrize("case", ["lstm_layer", "lstm_cell", "additive_attention", "attention"])
def test_a_backward_runs_on_its_forward_backend(monkeypatch, case):
    """The backend a forward ran on runs its backward, whatever backend context the backward sees (the
    block left, or autograd's worker thread on CUDA): recorded by wrapping the reference's backward."""
    from fastseq.ops.additive_attention import reference as additive
    from fastseq.ops.attention import reference as dot_product
    from fastseq.ops.lstm import reference as lstm

    module, name = {"lstm_layer": (lstm, "lstm_layer_backward"), "lstm_cell": (lstm, "lstm_cell_backward"),
                    "additive_attention": (additive, "additive_attention_backward"),
                    "attention": (dot_product, "attention_backward")}[case]
    calls = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: calls.append(name) or original(*a))
    make = {
        "lstm_layer": lambda: ops.lstm_layer(*(torch.randn(*s, requires_grad=True) for s in
                                             ((4, 2, 3), (2, 5), (2, 5), (20, 3), (20, 5))))[0],
        "lstm_cell": lambda: ops.lstm_cell(torch.randn(2, 20, requires_grad=True), torch.randn(2, 5))[0],
        "additive_attention": lambda: ops.additive_attention(*(torch.randn(*s, requires_grad=True) for s in
                                                             ((2, 3, 4), (2, 5, 4), (4,), (2, 5, 6)))),
        "attention": lambda: ops.attention(*(torch.randn(*s, requires_grad=True) for s in
                                             ((1, 2, 3, 8), (1, 2, 4, 8), (1, 2, 4, 8)))),
    }[case]
    with backends.use("reference"):
        out = make()
    assert not calls
    with backends.use(cpu="triton"):  # the backward's context names another backend
        out.sum().backward()
    assert calls == [name]


def test_every_backend_function_takes_its_declared_arguments():
    """Each Python backend's function of a family's declared function (custom op or direct) takes exactly the
    schema's arguments, by name and in order; a backend module defines no function the family does not
    declare under a declared name's prefix."""
    import inspect

    from fastseq.ops.registry import EXTENSION, declared

    checked = 0
    for family in declared().values():
        signatures = family.signatures()
        for backend, paths in family.backends.items():
            if paths == EXTENSION:
                continue
            for module in family._modules(backend):
                for name, expected in signatures.items():
                    fn = getattr(module, name, None)
                    if fn is None:
                        continue
                    params = list(inspect.signature(fn).parameters)
                    assert params == expected, f"{family.name}: {backend}'s {name} takes {params}, declared {expected}"
                    checked += 1
    assert checked >= 25
