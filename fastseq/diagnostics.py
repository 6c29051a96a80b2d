"""`fastseq info`: versions, device, what was built, the backend each op would use and why, and the
backends chosen by measurement per shape bucket with each candidate's time."""
from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from typing import Any, Optional, TextIO

import torch

from . import backends
from .ops import evidence, tuning
from .ops.registry import declared


def _integrations() -> dict[str, str]:
    """Which ways into other libraries' code this install offers, and why not where one is missing."""
    import importlib.util

    found = {"fastseq.nn.convert": "yes (torch.nn's LSTM, LSTMCell, MultiheadAttention, Transformer*)",
             "fastseq.ops.scaled_dot_product_attention": "yes (torch SDPA's signature and conventions)"}
    if importlib.util.find_spec("transformers") is None:
        found["fastseq.integrations.transformers"] = "no: transformers is not installed (pip install transformers)"
    else:
        from importlib.metadata import version

        found["fastseq.integrations.transformers"] = (f"yes (transformers {version('transformers')}): "
                                                      f"attn_implementation=\"fastseq\" after importing it")
    return found


def collect() -> dict[str, Any]:
    """Everything `info()` prints, as a dict (for logs and benchmark records)."""
    import fastseq

    ext = backends.extension()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report: dict[str, Any] = {
        "fastseq": fastseq.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": backends.triton_version(),
        "triton_interpret": backends.triton_interpret(),
        "device": device,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if device else None,
        "extension": ext.build_info() if ext is not None else None,
        "extension_error": backends.extension_error(),
        "integrations": _integrations(),
        "ops": {},
    }
    for family, declaration in declared().items():
        implemented = tuple(declaration.backends)
        per_device = {}
        for device_type in backends.DEVICE_TYPES:
            every = tuple(b for b in implemented if declaration.provides(b, tuple(declaration.functions), device_type))
            per_device[device_type] = _choice(family, device_type, every)
            # a function whose choice differs from the family's, with or without a gradient (torch's kernels
            # serve some functions only, and train through torch's autograd on some devices only)
            for function in (f for f in declaration.functions if not f.endswith("_backward")):
                backward = f"{function}_backward"
                with_gradient = (function, backward) if backward in declaration.functions else (function,)
                for label, needs in ((function, with_gradient), (f"{function} without a gradient", (function,))):
                    able = tuple(b for b in implemented if declaration.provides(b, needs, device_type))
                    choice = _choice(family, device_type, able)
                    if choice["backend"] != per_device[device_type]["backend"]:
                        per_device[f"{device_type}, {label}"] = choice
            for feature in declaration.features:  # an optional input some backends serve: who serves it here
                main = next(iter(declaration.functions))
                backward = (f"{main}_backward",) if f"{main}_backward" in declaration.functions else ()
                needs = (main, *backward, feature)
                able = tuple(b for b in implemented if declaration.provides(b, needs, device_type))
                per_device[f"{device_type}, {main} with {feature}"] = _choice(family, device_type, able)
        trains = {device_type: evidence.evidence(family, device_type) for device_type in backends.DEVICE_TYPES
                  if "torch" in declaration.backends and any(f.endswith("_backward") for f in declaration.functions)}
        report["ops"][family] = {"implemented": list(implemented), **per_device}
        if trains:
            report["ops"][family]["torch_autograd"] = trains
        if declaration.limits:
            report["ops"][family]["limits"] = dict(declaration.limits)
    report["autotune"] = {"enabled": tuning.enabled(), "cache": tuning.cache_path(),
                          "choices": {bucket: asdict(m) for bucket, m in sorted(tuning.choices().items())}}
    return report


def _choice(family: str, device_type: str, able: tuple[str, ...]) -> dict:
    try:
        choice = backends.choose(family, device_type, able, declared()[family].order.get(device_type))
        return {"backend": choice.backend, "why": choice.reason}
    except (backends.BackendUnavailableError, ValueError) as e:
        return {"backend": None, "why": str(e)}


def info(file: Optional[TextIO] = None) -> None:
    """Print versions, device, what was built, Triton's presence, and the backend of each op."""
    r = collect()
    ext = r["extension"]
    built = (f"yes ({'CPU + CUDA' if ext['with_cuda'] else 'CPU only'}, against torch {ext['torch_version']})"
             if ext else f"no: {r['extension_error']}")
    triton = r["triton"] or "not installed"
    if r["triton"] and r["triton_interpret"]:
        triton += " (TRITON_INTERPRET=1: kernels run on the CPU interpreter)"
    lines = [
        f"fastseq    {r['fastseq']}",
        f"python     {r['python']}",
        f"torch      {r['torch']}" + (f" (CUDA {r['torch_cuda']})" if r["torch_cuda"] else " (CPU build)"),
        f"triton     {triton}",
        "device     " + (f"{r['device']} (sm_{r['capability'].replace('.', '')})" if r["device"] else "no CUDA device"),
        f"fastseq._C {built}",
        f"override   {backends.ENV_VAR}={__import__('os').environ.get(backends.ENV_VAR, '') or '(unset)'}",
        "integrations:",
        *(f"  {name}: {state}" for name, state in r["integrations"].items()),
        "ops:",
    ]
    for family, row in r["ops"].items():
        lines.append(f"  {family}  (backends: {', '.join(row['implemented'])})")
        for device_type in [k for k in row if k not in ("implemented", "torch_autograd", "limits")]:
            cell = row[device_type]
            lines.append(f"    {device_type:<5} -> {cell['backend'] or 'none'}: {cell['why']}")
        for backend, limit in row.get("limits", {}).items():
            lines.append(f"    {backend} serves {limit}")
        for device_type, shown in row.get("torch_autograd", {}).items():
            lines.append(f"    training through torch's autograd on {device_type}: "
                         + (f"yes, verified by {shown}" if shown else "no: not verified on this device yet "
                            "(benchmarks/gpu_window.py section 2, then --adopt)"))
    tuned = r["autotune"]
    lines.append(f"measured   {tuning.ENV_VAR}={'on' if tuned['enabled'] else 'off'}; "
                 f"{len(tuned['choices'])} shape bucket(s) in {tuned['cache']}")
    for bucket, m in tuned["choices"].items():  # family|device|dtype|gradient|sizes|flags
        lines.append(f"  {tuning.describe(bucket, tuning.Measured(**m))}")
    print("\n".join(lines), file=file or sys.stdout)
