"""Compile every Triton kernel of fastseq ahead of time, with no GPU, as the JIT compiles it on one, and report
each variant's registers, spills, shared memory and, read from its SASS, the instruction mix of its hot loops.

    python -m fastseq.ops.aot --arch 90 80 [--json] [--sass DIR]

What is compiled is what the launchers launch: each op family's Triton kernel modules list `aot_launches()`,
calls of the op's Triton backend at the benchmark presets' shapes (CPU tensors of those sizes, never read).
Inside `capture`, a launch compiles nothing and runs nothing: Triton's own JIT binds the arguments (the
16-byte divisibility of pointers and integers, integers equal to 1 made constants, the constexprs), an
autotuned kernel offers each configuration its pruning keeps for the target, and the compile request is
recorded. Each distinct request is then compiled for sm_{arch} (the launchers choose their tiles as on an
H200 or an A100: fastseq.triton.common.compiling_for). Needs the real JIT: TRITON_INTERPRET unset or 0.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Iterator

from . import sass

# Bytes of shared memory one block may use (opted in): 227 KB on sm_90 (H100, H200), 163 KB on sm_80 (A100).
SHARED_MEMORY = {90: 227 * 1024, 80: 163 * 1024}
# The instructions a kernel exists to issue: its hot loops are the innermost loops holding one of them.
MARKERS = ("HGMMA", "HMMA", "MUFU", "FFMA", "DFMA", "DMMA")


@dataclasses.dataclass(frozen=True)
class Launch:
    """One call of an op's Triton backend the GPU path makes: `run()` calls it at one case's shapes."""

    name: str
    run: Callable[[], object]
    archs: tuple[int, ...] = (90, 80)


@dataclasses.dataclass
class Request:
    """One compile the JIT would make: the kernel, its bound signature, constexprs, attributes and options."""

    kernel: object
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    arch: int
    launches: list[str] = dataclasses.field(default_factory=list)

    @property
    def key(self) -> str:
        text = repr((self.kernel.__name__, self.arch, sorted(self.signature.items()), sorted(
            (str(k), _plain(v)) for k, v in self.constexprs.items()), sorted((str(k), str(v)) for k, v in
                                                                           self.attrs.items()), sorted(
            (k, str(v)) for k, v in self.options.items() if k in ("num_warps", "num_stages", "maxnreg", "num_ctas"))))
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        """The kernel and what distinguishes its variant: input type, constexprs, warps and stages."""
        t = next((v[1:] for v in self.signature.values() if v.startswith("*") and v not in ("*i32", "*u8")), "")
        names = self.kernel.arg_names
        flags = ",".join(f"{names[k[0]]}={_plain(v)}" for k, v in sorted(self.constexprs.items())
                         if len(k) == 1 and not isinstance(v, str) and names[k[0]].isupper())
        return (f"{self.kernel.__name__}[{t},{flags},w{self.options.get('num_warps')}"
                f"s{self.options.get('num_stages')}]#{self.key[:6]}")


def _plain(v):
    return v if isinstance(v, (int, float, bool, str, type(None))) else str(v)


def kernel_modules() -> list[str]:
    """The Triton kernel modules every declared op family lists (fastseq.ops.registry), each once."""
    from .registry import declared

    return list(dict.fromkeys(m for family in declared().values() for m in family.kernels))


def launches() -> Iterator[Launch]:
    for module in kernel_modules():
        yield from importlib.import_module(module).aot_launches()


class _NoDevice:
    """Triton's driver as the JIT asks it before compiling: which device (the target's number), stream and
    target; it launches nothing (the compile request is taken before)."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.arch, self.target = arch, GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def __getattr__(self, name):
        raise AttributeError(f"fastseq.ops.aot captures compiles only; Triton asked its driver for {name!r}")


@contextlib.contextmanager
def capture(arch: int) -> Iterator[list[Request]]:
    """Inside the block, Triton launches record the compile requests the JIT would make for sm_{arch}, and do
    nothing else; an autotuned launch records one per configuration its pruning keeps."""
    from triton.runtime import driver
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from ..triton.common import TARGETS, compiling_for

    requests: list[Request] = []
    original = (JITFunction._do_compile, Autotuner.run)

    def record(self, key, signature, device, constexprs, options, attrs, warmup):
        options = options.__dict__ if hasattr(options, "__dict__") else dict(options)
        requests.append(Request(self, dict(signature), dict(constexprs), dict(attrs), options, arch))
        return None

    def every_config(self, *args, **kwargs):
        kwargs.pop("warmup", None)
        self.warmup(*args, **kwargs)

    JITFunction._do_compile, Autotuner.run = record, every_config
    driver.set_active(_NoDevice(arch))
    try:
        with compiling_for(TARGETS[f"sm_{arch}"]):
            yield requests
    finally:
        JITFunction._do_compile, Autotuner.run = original
        driver._active = None


def requests(archs=(90, 80)) -> list[Request]:
    """Every distinct compile request of every launch, per architecture, each naming the launches that make it."""
    import torch

    found: dict[str, Request] = {}
    for launch in launches():
        for arch in archs:
            if arch not in launch.archs:
                continue
            with capture(arch) as made, torch.no_grad():
                launch.run()
            for r in made:
                found.setdefault(r.key, r).launches.append(launch.name)
    return list(found.values())


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


def compile_request(r: Request, sass_dir: str | None = None) -> dict:
    """Compile one request for its architecture; returns what ptxas reports and what the SASS holds."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    report = {"name": r.name, "kernel": r.kernel.__name__, "arch": r.arch, "launches": r.launches,
              "num_warps": r.options.get("num_warps"), "num_stages": r.options.get("num_stages"),
              "constexprs": {r.kernel.arg_names[k[0]]: _plain(v) for k, v in r.constexprs.items() if len(k) == 1},
              "divisible_by_16": sorted(r.kernel.arg_names[k[0]] for k, v in r.attrs.items()
                                        if len(k) == 1 and ["tt.divisibility", 16] in v)}
    try:
        compiled = triton.compile(ASTSource(fn=r.kernel, signature=r.signature, constexprs=r.constexprs,
                                            attrs=r.attrs), target=GPUTarget("cuda", r.arch, 32), options=r.options)
    except Exception as e:  # report, don't stop: every variant gets its line
        return {**report, "ok": False, "error": f"{type(e).__name__}: {e}"}
    ptx = compiled.asm["ptx"]
    report["shared"] = compiled.metadata.shared
    report["ptx_target"] = next((line.split()[1] for line in ptx.splitlines() if line.startswith(".target")), None)
    # the matrix instructions tl.dot lowered to: Hopper's asynchronous warpgroup MMA, or the warp-level one
    report["mma"] = sorted({m for m, op in (("wgmma", "wgmma.mma_async"), ("mma", "mma.sync")) if op in ptx})
    sm = f"sm_{r.arch}a" if r.arch >= 90 else f"sm_{r.arch}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        cubin = os.path.join(tmp, "kernel.cubin")
        out = subprocess.run([_ptxas(r.arch), f"-arch={sm}", "-v", path, "-o", cubin], capture_output=True, text=True)
        if out.returncode:
            return {**report, "ok": False, "error": out.stderr.strip()}
        code = sass.disassemble(cubin)
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out.stderr)
    function = code.get(r.kernel.__name__) or next(iter(code.values()))
    if sass_dir:
        os.makedirs(sass_dir, exist_ok=True)
        with open(os.path.join(sass_dir, f"sm{r.arch}-{r.kernel.__name__}-{r.key}.sass"), "w") as f:
            f.write("\n".join(f"/*{ins.address:04x}*/ {ins.text} ;" for ins in function))
    return {**report, "ok": True, "registers": int(regs.group(1)) if regs else None,
            "spill_stores": int(spills.group(1)) if spills else None,
            "spill_loads": int(spills.group(2)) if spills else None,
            "sass": sass.summary(function, MARKERS)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities, e.g. 90 80")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    parser.add_argument("--sass", default=None, help="write each variant's SASS into this folder")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles run in parallel")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: the interpreter cannot compile ahead of time; unset it")
    found = requests(tuple(args.arch))
    reports = _compile_all(found, args.sass, args.jobs)
    if args.json:
        print(json.dumps(reports))
    else:
        for r in reports:
            detail = (f"{r['registers']} registers, {r['spill_stores']}/{r['spill_loads']} bytes spilled, "
                      f"{r['shared'] / 1024:.0f} KB shared" if r["ok"] else r["error"])
            print(f"sm_{r['arch']}  {r['name']:<72} {detail}")
    return 0 if all(r["ok"] for r in reports) else 1


_FOUND: list[Request] = []  # what forked workers compile, by index (a kernel does not pickle)


def _compile_index(i: int, sass_dir) -> dict:
    return compile_request(_FOUND[i], sass_dir)


def _compile_all(found: list[Request], sass_dir, jobs: int) -> list[dict]:
    """compile_request of each, in `jobs` forked workers (each compile is one process's CPU)."""
    if jobs <= 1 or len(found) < 2:
        return [compile_request(r, sass_dir) for r in found]
    import multiprocessing

    _FOUND[:] = found
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return pool.starmap(_compile_index, [(i, sass_dir) for i in range(len(found))])


if __name__ == "__main__":
    sys.exit(main())
