"""Compile every Triton kernel of fastseq ahead of time for a GPU architecture, with no GPU, and report
each variant's registers and spills (read from ptxas, the one Triton itself uses for that target) and
its shared memory against what one block may take on that architecture (SHARED_MEMORY).

    python -m fastseq.ops.aot --arch 90 80 [--json]

The kernel modules are those the op families declare (fastseq.ops.registry); each lists the variants its
launchers use in `aot_specs()`: (name, kernel, signature, constexprs, options), and optionally the
architectures the variant is meant for (configurations tuned per architecture). Needs the real JIT: run it with TRITON_INTERPRET unset or 0.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

# Bytes of shared memory one block may use (opted in): 227 KB on sm_90 (H100, H200), 163 KB on sm_80 (A100).
SHARED_MEMORY = {90: 227 * 1024, 80: 163 * 1024}

def kernel_modules() -> list[str]:
    """The Triton kernel modules every declared op family lists (fastseq.ops.registry), each once."""
    from .registry import declared

    return list(dict.fromkeys(m for family in declared().values() for m in family.kernels))


def specs():
    for module in kernel_modules():
        yield from importlib.import_module(module).aot_specs()


def variants(archs=(90, 80)):
    """(arch, spec) for every variant meant for each architecture."""
    for spec in specs():
        for arch in archs:
            if len(spec) == 5 or arch in spec[5]:
                yield arch, spec[:5]


def _ptxas(arch: int) -> str | None:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(arch).path
    except (ImportError, AttributeError, TypeError):
        pass
    try:
        from triton import knobs

        return knobs.nvidia.ptxas.path
    except (ImportError, AttributeError):
        return shutil.which("ptxas")


def compile_one(name, kernel, signature, constexprs, options, arch: int) -> dict:
    """Compile one variant for sm_{arch}; returns what the PTX targets and ptxas's resource report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    report = {"name": name, "arch": arch}
    try:
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as e:  # report, don't stop: every variant gets its line
        return {**report, "ok": False, "error": f"{type(e).__name__}: {e}"}
    ptx = compiled.asm["ptx"]
    report["shared"] = compiled.metadata.shared
    report["ptx_target"] = next((line.split()[1] for line in ptx.splitlines() if line.startswith(".target")), None)
    # the matrix instructions tl.dot lowered to: Hopper's asynchronous warpgroup MMA, or the warp-level one
    report["mma"] = sorted({m for m, op in (("wgmma", "wgmma.mma_async"), ("mma", "mma.sync")) if op in ptx})
    sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([_ptxas(arch), f"-arch={sm}", "-v", path, "-o", os.path.join(tmp, "kernel.cubin")],
                             capture_output=True, text=True)
    if out.returncode:
        return {**report, "ok": False, "error": out.stderr.strip()}
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out.stderr)
    return {**report, "ok": True, "registers": int(regs.group(1)) if regs else None,
            "spill_stores": int(spills.group(1)) if spills else None,
            "spill_loads": int(spills.group(2)) if spills else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities, e.g. 90 80")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: the interpreter cannot compile ahead of time; unset it")
    reports = [compile_one(*spec, arch) for arch, spec in variants(args.arch)]
    if args.json:
        print(json.dumps(reports))
    else:
        for r in reports:
            detail = (f"{r['registers']} registers, {r['spill_stores']}/{r['spill_loads']} bytes spilled, "
                      f"{r['shared'] / 1024:.0f} KB shared" if r["ok"] else r["error"])
            print(f"sm_{r['arch']}  {r['name']:<32} {detail}")
    return 0 if all(r["ok"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
