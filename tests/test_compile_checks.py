"""Compile checks that need no GPU: every Triton kernel compiled ahead of time for sm_90 and sm_80 at the
configurations the GPU path launches (no register spills, float64 aside), the CUDA kernels compiled with
nvcc for sm_90a (no spills), and the host-side CUDA launchers of csrc/ checked against torch's CUDA
headers. Run it under each Triton the package supports: ptxas differs between them."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
triton = pytest.importorskip("triton")


def _variants():
    from fastseq.ops import aot

    return [(arch, spec[0]) for arch, spec in aot.variants()]


@pytest.fixture(scope="module")
def aot_reports():
    """One non-interpreted process compiles every variant for sm_90 and sm_80 (the interpreter, which
    the rest of the CPU suite runs under, cannot compile)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run([sys.executable, "-m", "fastseq.ops.aot", "--arch", "90", "80", "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.stdout.strip(), out.stderr[-4000:]
    return {(r["arch"], r["name"]): r for r in json.loads(out.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("arch,name", _variants(), ids=lambda v: str(v))
def test_triton_kernel_fits_the_shared_memory_of_its_architecture(aot_reports, arch, name):
    from fastseq.ops.aot import SHARED_MEMORY

    report = aot_reports[(arch, name)]
    assert report["ok"], report.get("error")
    assert 0 <= report["shared"] <= SHARED_MEMORY[arch], report


@pytest.mark.parametrize("arch,name", _variants(), ids=lambda v: str(v))
def test_triton_kernel_compiles_ahead_of_time_without_spills(aot_reports, arch, name):
    report = aot_reports[(arch, name)]
    assert report["ok"], report.get("error")
    assert report["ptx_target"] in (f"sm_{arch}", f"sm_{arch}a")  # Triton targets sm_90a on Hopper
    if "[fp64," in name:  # the exactness dtype, not a fast path: Triton 3.6 spills its additive backward
        return
    if _measured_spilling(arch, name):
        return
    assert report["spill_stores"] == 0 and report["spill_loads"] == 0, report


TILE = re.compile(r"attention_(\w+)\[(\w+),d(\d+),\w+,(\d+)x(\d+)w(\d+)s(\d+)\]")


def _measured_spilling(arch, name):
    """Whether the variant's tile is one that spills yet measured fastest on a GPU (triton_configs'
    MEASURED_SPILLING); its list must then hold a spill-free tile for the autotuner to fall back on."""
    from fastseq.ops.dot_product import triton_configs

    found = TILE.fullmatch(name)
    if not found:
        return False
    kernel, t, dim, *tile = found.groups()
    key = (kernel, arch, 4 if t == "fp32" else 2, int(dim))
    if tuple(map(int, tile)) not in triton_configs.MEASURED_SPILLING.get(key, ()):
        return False
    tiles = triton_configs.configs_for(kernel, arch, key[2], int(dim))
    assert set(tiles) - triton_configs.MEASURED_SPILLING[key], f"{key}: every tile may spill"
    return True


def test_measured_spilling_tiles_are_tuned_tiles():
    """Every tile allowed to spill is one the autotuner tries (a stale entry would hide nothing)."""
    from fastseq.ops.dot_product import triton_configs

    for (kernel, arch, size, dim), tiles in triton_configs.MEASURED_SPILLING.items():
        assert tiles <= set(triton_configs.configs_for(kernel, arch, size, dim)), (kernel, arch, size, dim)


def _hopper_attention_tiles():
    """The 16-bit attention variants for sm_90 whose query tile spans a warpgroup (64 rows a group)."""
    from fastseq.ops import aot

    for arch, spec in aot.variants((90,)):
        name, options = spec[0], spec[4]
        if name.startswith(("attention_fwd[", "attention_dq[")) and ",fp32," not in name and ",fp64," not in name:
            if spec[3]["BLOCK_M"] >= 64 * options["num_warps"] // 4:
                yield name


@pytest.mark.parametrize("name", list(_hopper_attention_tiles()))
def test_attention_matmuls_lower_to_wgmma_on_hopper(aot_reports, name):
    """On sm_90 the attention's tl.dot must become Hopper's warpgroup MMA, not the Ampere mma.sync."""
    report = aot_reports[(90, name)]
    assert report["ok"], report.get("error")
    assert report["mma"] == ["wgmma"], report


SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "kernels").glob("*.cu")))
def test_cuda_kernels_compile_for_sm90a_without_spills(tmp_path, source):
    out = subprocess.run([NVCC, "-std=c++17", "-O3", "-arch=sm_90a", "-Xptxas", "-v", "-c",
                          str(ROOT / "kernels" / source), "-o", str(tmp_path / "k.o")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    spills = SPILLS.findall(out.stderr)
    assert spills, out.stderr
    assert all(s == ("0", "0") for s in spills), out.stderr


@pytest.mark.skipif(NVCC is None, reason="nvcc (and its CUDA headers) not found")
@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "csrc").glob("*_cuda.cpp")) + ["extension.cpp"])
def test_cuda_launchers_compile_against_torch_headers(tmp_path, source):
    """The host-side launchers, syntax- and type-checked with the CUDA build's macros (no GPU, no CUDA torch)."""
    from torch.utils.cpp_extension import include_paths

    from torch.utils.cpp_extension import CUDA_HOME

    candidates = [pathlib.Path(NVCC).resolve().parents[1] / "include", *sorted(pathlib.Path("/usr/local").glob("cuda*/include"))]
    if CUDA_HOME:
        candidates.insert(0, pathlib.Path(CUDA_HOME) / "include")
    cuda_include = next((c for c in candidates if (c / "cuda_runtime.h").exists()), None)
    assert cuda_include is not None, f"nvcc is at {NVCC} but no cuda_runtime.h was found in {candidates}"
    if not (pathlib.Path(include_paths()[0]) / "c10" / "cuda").exists():
        pytest.skip("this torch ships no c10/cuda headers")
    # A CPU wheel ships c10/cuda without the header CMake generates for CUDA builds: stand one in.
    generated = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    generated.parent.mkdir(parents=True)
    generated.write_text("#define C10_CUDA_BUILD_SHARED_LIBS\n")
    flags = [f"-I{p}" for p in include_paths()] + [f"-I{cuda_include}", f"-I{sysconfig.get_paths()['include']}",
                                                    f"-idirafter{tmp_path}"]
    out = subprocess.run(["c++", "-std=c++20", "-fsyntax-only", "-DFASTSEQ_WITH_CUDA", *flags,
                          str(ROOT / "csrc" / source)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
