"""Where torch's own autograd may train an op family, and on what evidence. On a CPU: the test suite, which
checks every family's gradients through torch's kernels against float64 on every run. On CUDA: a GPU
window's precision check (benchmarks/gpu_window.py, section 2: torch's CUDA backward against float64 beside
fastseq's own), adopted into autograd_evidence.json beside this file by `gpu_window.py --adopt`; until a
window has passed, CUDA training runs fastseq's own backward."""
from __future__ import annotations

import json
import os

EVIDENCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "autograd_evidence.json")
CPU_EVIDENCE = "the test suite (gradients through torch's kernels against float64)"


def _load() -> dict:
    if not os.path.exists(EVIDENCE_FILE):
        return {}
    with open(EVIDENCE_FILE) as f:
        return json.load(f)


def verified(family: str) -> dict[str, dict]:
    """{device type: {"evidence": file, "dtypes": [...]}} where a GPU window passed torch's backward."""
    return dict(_load().get(family, {}))


def autograd(family: str, cpu: tuple[str, ...] = ("torch",)) -> dict[str, tuple[str, ...]]:
    """The Family.autograd of `family`: `cpu` on a CPU, and torch's backend on each device a window verified."""
    found = {"cpu": cpu}
    for device_type in verified(family):
        found[device_type] = ("torch",)
    return found


def evidence(family: str, device_type: str) -> str | None:
    """What shows torch's autograd trains `family` correctly on `device_type` (None: nothing yet)."""
    if device_type == "cpu":
        return CPU_EVIDENCE
    entry = verified(family).get(device_type)
    return None if entry is None else f"{entry['evidence']} ({', '.join(entry['dtypes'])})"


def record(verdicts: dict, evidence_file: str) -> list[str]:
    """Adds each passed (family, device) of a window's verdicts, naming its file; returns what was added."""
    data, added = _load(), []
    for family, per_device in verdicts.items():
        for device_type, verdict in per_device.items():
            if verdict["ok"] and device_type != "cpu":
                data.setdefault(family, {})[device_type] = {"evidence": evidence_file, "dtypes": verdict["dtypes"]}
                added.append(f"{family} on {device_type}")
    tmp = EVIDENCE_FILE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, EVIDENCE_FILE)
    return added
