"""A kernel's machine code (SASS), read for the compile checks: its instructions per function, its loops
(the spans a backward branch closes) and the mix of instructions in the loops that do a kernel's work.

    code = disassemble(cubin_bytes)            # {function: [Instruction, ...]}
    for body in hot_loops(code["fwd_kernel"], ("HGMMA", "HMMA")): mix(body)

cuobjdump comes with Triton (its NVIDIA backend) or the CUDA toolkit; both read sm_80 and sm_90a cubins.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile

_FUNCTION = re.compile(r"^\s*Function : (\S+)")
_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"\bBRA(?:\.\S+)?\s+(?:`\(\.L_x_(\d+)\)|0x([0-9a-f]+))")
_LABEL = re.compile(r"^\s*\.L_x_(\d+):")


@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with its modifiers: "LDG.E.128", "HGMMA.64x64x16.F32.BF16"
    text: str  # the whole instruction, predicate and operands included

    @property
    def base(self) -> str:
        """The opcode without modifiers: "LDG", "HGMMA"."""
        return self.opcode.split(".")[0]


def cuobjdump() -> str:
    """The cuobjdump to use: Triton's own, else the one on PATH."""
    try:
        from triton import knobs

        path = knobs.nvidia.cuobjdump.path
        if path and os.path.exists(path):
            return path
    except (ImportError, AttributeError):
        pass
    found = shutil.which("cuobjdump")
    if found is None:
        raise FileNotFoundError("cuobjdump not found (it comes with Triton's NVIDIA backend or the CUDA toolkit)")
    return found


def disassemble(cubin: bytes | str) -> dict[str, list[Instruction]]:
    """Every function of a cubin (its bytes, or the path of a cubin or object file) -> its instructions."""
    if isinstance(cubin, bytes):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            return disassemble(f.name)
    out = subprocess.run([cuobjdump(), "-sass", cubin], capture_output=True, text=True, check=True).stdout
    return parse(out)


def parse(listing: str) -> dict[str, list[Instruction]]:
    """cuobjdump -sass's listing -> {function: instructions}; branch targets given as labels are resolved to
    addresses (a label names the next instruction)."""
    functions: dict[str, list[Instruction]] = {}
    labels: dict[str, dict[str, int]] = {}
    current = None
    pending: list[str] = []
    for line in listing.splitlines():
        if (m := _FUNCTION.match(line)):
            current = m.group(1)
            functions[current], labels[current], pending = [], {}, []
        elif current is not None and (m := _LABEL.match(line)):
            pending.append(m.group(1))
        elif current is not None and (m := _LINE.match(line)):
            address, text = int(m.group(1), 16), m.group(2)
            for label in pending:
                labels[current][label] = address
            pending = []
            words = text.split()
            opcode = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
            functions[current].append(Instruction(address, opcode, text))
    return {name: _resolved(code, labels[name]) for name, code in functions.items()}


def _resolved(code: list[Instruction], labels: dict[str, int]) -> list[Instruction]:
    out = []
    for ins in code:
        m = _BRANCH.search(ins.text)
        if m and m.group(1) is not None and m.group(1) in labels:
            ins = Instruction(ins.address, ins.opcode, ins.text.replace(m.group(0), f"BRA 0x{labels[m.group(1)]:x}"))
        out.append(ins)
    return out


def loops(code: list[Instruction]) -> list[list[Instruction]]:
    """The body of every loop: the instructions from a backward branch's target to the branch, innermost
    (shortest) first."""
    by_address = {ins.address: i for i, ins in enumerate(code)}
    bodies = []
    for i, ins in enumerate(code):
        m = _BRANCH.search(ins.text)
        if not m or m.group(2) is None:
            continue
        start = by_address.get(int(m.group(2), 16))
        if start is not None and start <= i:
            bodies.append(code[start:i + 1])
    return sorted(bodies, key=len)


def hot_loops(code: list[Instruction], markers: tuple[str, ...]) -> list[list[Instruction]]:
    """The innermost loops that hold one of `markers` (opcode prefixes: the instruction a kernel exists to
    issue, "HGMMA", "MUFU.TANH"): each such loop that holds no shorter such loop."""
    marked = [body for body in loops(code) if any(ins.opcode.startswith(markers) for ins in body)]
    innermost = []
    for body in marked:
        span = (body[0].address, body[-1].address)
        if not any(span[0] <= inner[0].address and inner[-1].address <= span[1] for inner in innermost):
            innermost.append(body)
    return innermost


def mix(body: list[Instruction]) -> collections.Counter:
    """Counts of each opcode (with its modifiers) in `body`."""
    return collections.Counter(ins.opcode for ins in body)


def count(body: list[Instruction], prefixes: tuple[str, ...]) -> int:
    """How many instructions of `body` have an opcode beginning with one of `prefixes`."""
    return sum(ins.opcode.startswith(prefixes) for ins in body)


def summary(code: list[Instruction], markers: tuple[str, ...]) -> dict:
    """What the compile checks keep of a function: its size, local-memory traffic, and per hot loop the
    opcode counts ({"loops": [{opcode: n}, ...]})."""
    return {"instructions": len(code), "local_memory": count(code, ("LDL", "STL")),
            "loops": [dict(mix(body)) for body in hot_loops(code, markers)]}
