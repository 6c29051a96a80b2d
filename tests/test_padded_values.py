"""Padded keys never reach an output or a gradient, whatever they hold: with NaN and Inf written into the
padded positions of the keys and values, every attention op on every backend present gives the outputs and
gradients it gives with zeros there (and zero gradients for the padded positions)."""
import pytest
import torch

from fastseq import backends, ops

from _util import TOL, backend_params, rel_err

DTYPE = torch.float32


def _poisoned(t, padded, value):
    """t with its padded key positions (B, Tk) bool along dims 0 and -2 set to `value`."""
    index = padded[:, None, :, None] if t.dim() == 4 else padded[:, :, None]
    return t.masked_fill(index, value)


def _check(run, make, padded, device, backend):
    clean = [t.detach().clone().requires_grad_() for t in make()]
    with backends.use(backend):
        expected = run(*clean)
        grads = torch.autograd.grad(expected, clean, torch.ones_like(expected), allow_unused=True) \
            if expected.requires_grad else None
        for value in (float("nan"), float("inf"), -float("inf")):
            dirty = [t.detach().clone() for t in clean]
            dirty[1:] = [_poisoned(t, padded, value) if t.dim() >= 3 else t for t in dirty[1:]]
            dirty = [t.requires_grad_() for t in dirty]
            got = run(*dirty)
            assert torch.isfinite(got).all() and rel_err(got, expected) < TOL[DTYPE], value
            if grads is not None:
                have = torch.autograd.grad(got, dirty, torch.ones_like(got), allow_unused=True)
                for h, w in zip(have, grads):
                    if w is not None:
                        assert torch.isfinite(h).all() and rel_err(h, w, terms=8) < TOL[DTYPE], value
                for h, t in zip(have[1:], dirty[1:]):
                    if h is not None and t.dim() >= 3:
                        assert not _poisoned(torch.zeros_like(h), padded, 1.0).mul(h).any(), value


@pytest.mark.parametrize("by", ["mask", "lengths"])
@pytest.mark.parametrize("device,backend", backend_params("attention"))
def test_attention(device, backend, by):
    B, Hq, Hkv, T, D = 3, 4, 2, 7, 16
    lengths = torch.tensor([7, 3, 5])
    padded = torch.arange(T)[None, :] >= lengths[:, None]
    padded[0, 2] = True  # a hole inside the first row too
    pad = {"key_padding_mask": padded.to(device)} if by == "mask" else {"lengths": lengths}
    if by == "lengths":
        padded = torch.arange(T)[None, :] >= lengths[:, None]
    padded = padded.to(device)

    def make():
        return [torch.randn(B, Hq, T, D, device=device), torch.randn(B, Hkv, T, D, device=device),
                torch.randn(B, Hkv, T, D, device=device)]

    _check(lambda q, k, v: ops.attention(q, k, v, **pad), make, padded, device, backend)


@pytest.mark.parametrize("device,backend", backend_params("attention_decode"))
def test_attention_decode(device, backend):
    B, Hq, Hkv, T, D = 3, 4, 2, 9, 16
    padded = torch.zeros(B, T, dtype=torch.bool, device=device)
    padded[0, 3], padded[1, 5:], padded[2, :2] = True, True, True

    def make():
        return [torch.randn(B, Hq, D, device=device), torch.randn(B, Hkv, T, D, device=device),
                torch.randn(B, Hkv, T, D, device=device)]

    with torch.no_grad():
        _check(lambda q, k, v: ops.attention_decode(q, k, v, key_padding_mask=padded), make, padded, device, backend)


@pytest.mark.parametrize("step", [False, True])
@pytest.mark.parametrize("device,backend", backend_params("additive_attention"))
def test_additive_attention(device, backend, step):
    B, Tq, Tk, H, Dv = 3, 4, 9, 8, 5
    padded = torch.zeros(B, Tk, dtype=torch.bool, device=device)
    padded[0, 3], padded[1, 5:], padded[2, :2] = True, True, True
    w = torch.randn(H, device=device)

    def make():
        q = torch.randn(B, H, device=device) if step else torch.randn(B, Tq, H, device=device)
        return [q, torch.randn(B, Tk, H, device=device), torch.randn(B, Tk, Dv, device=device)]

    op = ops.additive_attention_step if step else ops.additive_attention
    context = torch.no_grad() if step else torch.enable_grad()
    with context:
        _check(lambda q, k, vals: op(q, k, w, vals, key_padding_mask=padded), make, padded, device, backend)
