"""Compile checks that need no GPU, on the code the GPU runs: every Triton kernel compiled ahead of time for
sm_90 and sm_80 as the JIT compiles it at the benchmark presets' shapes (fastseq.ops.aot: the JIT's own
argument binding, its divisibility hints, the tiles the launchers pick for an H200 or an A100), then gated
on ptxas's report and on the SASS of each kernel's hot loops (the innermost loops that issue its matrix or
special-function instructions); the CUDA kernels compiled with nvcc for sm_90a, gated the same way; the
host-side CUDA launchers of csrc/ checked against torch's CUDA headers. Run it under each Triton the package
supports: ptxas differs between them."""
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

# Per kernel, what the hot loops of its 16-bit (fp16, bf16) variants may hold; of every variant, no local
# memory. Each number is the most the compiled loops hold today (a test fails when one grows); "mma": each
# such loop issues tensor-core instructions (HGMMA or HMMA).
#   shfl:           SHFL per hot loop, by architecture
#   shfl_per_tanh:  SHFL per MUFU.TANH in a hot loop (a score loop reducing across lanes)
#   per_tanh:       instructions per MUFU.TANH in a hot loop that issues it (the tanh unit takes one a clock
#                   per 8 issue slots of an SM's: past 8 a loop is issue-bound)
#   u16_loads:      scalar 16-bit global loads per hot loop (tiles should come 16 bytes at a time)
BUDGETS = {
    "fwd_kernel": {"mma": True, "shfl": {90: 8, 80: 64}, "u16_loads": 0},
    "dkdv_kernel": {"mma": True, "shfl": {90: 0, 80: 0}, "u16_loads": 0},
    "dq_kernel": {"mma": True, "shfl": {90: 0, 80: 0}, "u16_loads": 0},
    "split_kernel": {"mma": True, "shfl": {90: 16, 80: 16}, "u16_loads": 0},
    "combine_kernel": {},
    # additive attention (Triton): the scores pass sums its columns within each thread (no SHFL) at ~4
    # instructions a tanh; the gradient pass sums F over its queries across a few lanes each key
    "_scores_kernel": {"shfl_per_tanh": 0.0, "per_tanh": 4.1, "u16_loads": 1},
    "_gradient_kernel": {"shfl_per_tanh": 1.2, "per_tanh": 19.0, "u16_loads": 1},
    "_decode_kernel": {"shfl_per_tanh": 0.25, "u16_loads": 0},
    "_lstm_step_fwd_kernel": {"mma": True, "shfl": {90: 0, 80: 0}, "u16_loads": 0},
    "_lstm_step_bwd_kernel": {"mma": True, "shfl": {90: 0, 80: 0}, "u16_loads": 0},
    "_lstm_cell_fwd_kernel": {},
    "_lstm_cell_bwd_kernel": {},
}
# Variants that spill, each with why it is let pass: the additive decoder step in float32 holds a whole
# BLOCK_D = Dv = 512 row of values (a decoder step split over keys would not); float64 is the exactness
# dtype, not a fast path.
KNOWN_SPILLS = {"_decode_kernel": lambda r: r["constexprs"].get("BLOCK_D", 0) >= 512}
U16_LOADS = ("LDG.E.U16", "LDG.E.S16", "LDG.E.U16.CONSTANT")


@pytest.fixture(scope="module")
def reports():
    """One non-interpreted process compiles every variant for sm_90 and sm_80 (the interpreter, which the
    rest of the CPU suite runs under, cannot compile)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run([sys.executable, "-m", "fastseq.ops.aot", "--arch", "90", "80", "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.stdout.strip(), out.stderr[-4000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found, "no kernel variant was captured"
    return found


def _element(r) -> str:
    return r["name"].split("[")[1].split(",")[0]


def _failures(reports, check) -> list[str]:
    return [f"sm_{r['arch']} {r['name']} ({r['launches'][0]}): {why}" for r in reports
            for why in [check(r)] if why]


def test_every_captured_variant_compiles(reports):
    assert not _failures(reports, lambda r: None if r["ok"] else r["error"][:300])


def test_capture_sees_what_the_jit_specializes(reports):
    """The AOT variants carry the JIT's own hints: the attention forward at the headline shape has its
    pointers and its 16-multiple sizes marked divisible by 16, and its tiles are the Hopper ones."""
    fwd = [r for r in reports if r["kernel"] == "fwd_kernel" and r["arch"] == 90
           and any(name.startswith("attention forward B4 H16 T4096 D128 bf16") for name in r["launches"])]
    assert fwd, "no headline attention forward captured"
    for r in fwd:
        assert {"q_ptr", "k_ptr", "v_ptr", "out_ptr", "lse_ptr", "Tq", "Tk"} <= set(r["divisible_by_16"]), r
    assert {(r["constexprs"]["BLOCK_M"], r["num_warps"]) for r in fwd} >= {(128, 8)}


def test_every_compiled_kernel_has_a_budget(reports):
    assert {r["kernel"] for r in reports} <= set(BUDGETS), "add the new kernel's hot-loop budget to BUDGETS"


def test_variants_fit_the_shared_memory_of_their_architecture(reports):
    from fastseq.ops.aot import SHARED_MEMORY

    assert not _failures(reports, lambda r: r["ok"] and not 0 <= r["shared"] <= SHARED_MEMORY[r["arch"]]
                         and f"{r['shared']} bytes of shared memory")


def test_ptx_targets_the_architecture(reports):
    assert not _failures(reports, lambda r: r["ok"] and r["ptx_target"] not in (f"sm_{r['arch']}", f"sm_{r['arch']}a")
                         and f"targets {r['ptx_target']}")


def _spill_allowed(r) -> bool:
    return _element(r) == "fp64" or _measured_spilling(r) or KNOWN_SPILLS.get(r["kernel"], lambda r: False)(r)


def test_variants_compile_without_spills(reports):
    assert not _failures(reports, lambda r: r["ok"] and (r["spill_stores"] or r["spill_loads"])
                         and not _spill_allowed(r) and f"{r['spill_stores']}/{r['spill_loads']} bytes spilled, "
                                                       f"{r['registers']} registers")


def _measured_spilling(r) -> bool:
    """Whether the variant's tile is one that spills yet measured fastest on a GPU (triton_configs'
    MEASURED_SPILLING); its list must then hold a spill-free tile for the autotuner to fall back on."""
    from fastseq.ops.attention import triton_configs

    if r["kernel"] not in ("fwd_kernel", "dkdv_kernel", "dq_kernel"):
        return False
    c = r["constexprs"]
    size = 4 if _element(r) == "fp32" else 2
    key = (r["kernel"].split("_")[0], r["arch"], size, 64 if c["D"] <= 64 else 128 if c["D"] <= 128 else 256)
    tile = (c["BLOCK_M"], c["BLOCK_N"], r["num_warps"], r["num_stages"])
    if tile not in triton_configs.MEASURED_SPILLING.get(key, ()):
        return False
    assert set(triton_configs.configs_for(key[0], key[1], key[2], key[3])) - triton_configs.MEASURED_SPILLING[key]
    return True


def test_measured_spilling_tiles_are_tuned_tiles():
    """Every tile allowed to spill is one the autotuner tries (a stale entry would hide nothing)."""
    from fastseq.ops.attention import triton_configs

    for (kernel, arch, size, dim), tiles in triton_configs.MEASURED_SPILLING.items():
        assert tiles <= set(triton_configs.configs_for(kernel, arch, size, dim)), (kernel, arch, size, dim)


def test_attention_matmuls_lower_to_wgmma_on_hopper(reports):
    """On sm_90 a 16-bit attention tile that spans a warpgroup (64 rows per 4 warps) must become Hopper's
    warpgroup MMA, not the Ampere mma.sync."""
    def check(r):
        if not (r["ok"] and r["arch"] == 90 and r["kernel"] in ("fwd_kernel", "dq_kernel")
                and _element(r) in ("fp16", "bf16")):
            return None
        if r["constexprs"]["BLOCK_M"] >= 64 * r["num_warps"] // 4 and r["mma"] != ["wgmma"]:
            return f"lowered to {r['mma']}"
    assert not _failures(reports, check)


def _loop_checks(r, budget) -> str | None:
    """What in r's hot loops passes its kernel's budget, if anything."""
    sixteen = _element(r) in ("fp16", "bf16")
    problems = []
    if not _spill_allowed(r) and r["sass"]["local_memory"]:
        problems.append(f"{r['sass']['local_memory']} local-memory instructions")
    for i, loop in enumerate(r["sass"]["loops"]):
        def n(prefixes):
            return sum(c for op, c in loop.items() if op.startswith(prefixes))
        if sixteen and budget.get("mma") and not n(("HGMMA", "HMMA")):
            problems.append(f"loop {i}: no tensor-core instruction")
        if sixteen and "shfl" in budget and n("SHFL") > budget["shfl"][r["arch"]]:
            problems.append(f"loop {i}: {n('SHFL')} SHFL (budget {budget['shfl'][r['arch']]})")
        if "shfl_per_tanh" in budget and n("MUFU.TANH") and n("SHFL") / n("MUFU.TANH") > budget["shfl_per_tanh"]:
            problems.append(f"loop {i}: {n('SHFL') / n('MUFU.TANH'):.2f} SHFL per MUFU.TANH "
                            f"(budget {budget['shfl_per_tanh']})")
        if "per_tanh" in budget and n("MUFU.TANH") and sum(loop.values()) / n("MUFU.TANH") > budget["per_tanh"]:
            problems.append(f"loop {i}: {sum(loop.values()) / n('MUFU.TANH'):.2f} instructions per MUFU.TANH "
                            f"(budget {budget['per_tanh']})")
        if sixteen and "u16_loads" in budget and n(U16_LOADS) > budget["u16_loads"]:
            problems.append(f"loop {i}: {n(U16_LOADS)} scalar 16-bit global loads (budget {budget['u16_loads']})")
    return "; ".join(problems) or None


@pytest.mark.parametrize("kernel", sorted(BUDGETS))
def test_hot_loops_keep_their_instruction_budget(reports, kernel):
    """Each kernel's hot loops, read from the SASS of every variant (float64 aside): its BUDGETS entry."""
    variants = [r for r in reports if r["kernel"] == kernel and r["ok"] and _element(r) != "fp64"]
    assert variants, f"no variant of {kernel} was compiled"
    assert not _failures(variants, lambda r: _loop_checks(r, BUDGETS[kernel]))


# ------------------------------------------------------------------------------------------ CUDA (nvcc)

SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
SM80_SPILLS = {"attention_decode.cu": 28}  # spill stores + loads, the most a kernel has
NVCC = shutil.which("nvcc")
# Per CUDA kernel (its name, demangled, without namespace or template arguments): the instructions that make
# a loop hot there ("markers"), and the most SHFL and scalar 16-bit global loads one hot loop holds today.
# The additive and decoding kernels load 16 bits at a time; their rewrites (the additive-attention and
# decoding issues) set these to 0.
CUDA_BUDGETS = {
    # additive attention: the scores pass's tanh loop an add, a tanh and an FMA an element, nothing across
    # lanes; the gradient pass's F summed across warps through shared memory, not shuffles
    "additive_scores_kernel": {"markers": ("MUFU.TANH",), "shfl": 0, "u16_loads": 0, "per_tanh": 3.2},
    "additive_gradient_kernel": {"markers": ("MUFU.TANH",), "shfl": 0, "u16_loads": 10},
    "additive_decode_kernel": {"markers": ("MUFU.TANH",), "shfl": 10, "u16_loads": 32},
    "decode_split_kernel": {"markers": ("FFMA",), "shfl": 40, "u16_loads": 48},
    "decode_combine_kernel": {"markers": ("FFMA",), "shfl": 0, "u16_loads": 0},
    "lstm_cell_forward_kernel": {"markers": ("MUFU",), "shfl": 0, "u16_loads": 0},
    "lstm_cell_backward_kernel": {"markers": ("MUFU",), "shfl": 0, "u16_loads": 0},
    # the machine probes: the FMA-only tanh forms must issue no special-function instruction
    "tanh_chain_kernel": {"markers": ("MUFU", "FFMA"), "shfl": 0, "u16_loads": 0,
                          "forbid": {"TanhProbe)2>": ("MUFU",), "TanhProbe)3>": ("MUFU",)}},
    "cluster_barrier_kernel": {"markers": ("UCGABAR",), "shfl": 0, "u16_loads": 0},
    "grid_barrier_kernel": {"markers": ("LDG",), "shfl": 0, "u16_loads": 0},
    # the persistent LSTM: its step loop's loads are h (ldmatrix) and the step's inputs, never W_hh (held in
    # registers: no constant-cache loads in the loop), checked further in test_persistent_lstm_step_loop
    "lstm_persistent_forward_kernel": {"markers": ("HMMA",), "shfl": 32, "u16_loads": 64},
    "lstm_persistent_backward_kernel": {"markers": ("HMMA",), "shfl": 0, "u16_loads": 32},
}


def _short(demangled: str) -> str:
    """"void fastseq::kernels::(anonymous namespace)::forward_kernel<...>(...)" -> "forward_kernel"."""
    return demangled.split("<")[0].split("::")[-1].split("(")[0].split()[-1]


def _nvcc_cubin(tmp_path, source):
    cubin = tmp_path / (source + ".cubin")
    out = subprocess.run([NVCC, "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v",
                          "-cubin", str(ROOT / "kernels" / source), "-o", str(cubin)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stderr, cubin


def _demangled(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return dict(zip(names, out.stdout.splitlines())) if out.returncode == 0 else {n: n for n in names}


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "kernels").glob("*.cu")))
def test_cuda_kernels_compile_for_sm90a_within_budget(tmp_path, source):
    """kernels/*.cu through nvcc for sm_90a: no spills, no local memory, and each kernel's hot loops within
    its CUDA_BUDGETS entry (every kernel must have one)."""
    from fastseq.ops import sass

    report, cubin = _nvcc_cubin(tmp_path, source)
    spills = SPILLS.findall(report)
    assert spills and all(s == ("0", "0") for s in spills), report
    code = sass.disassemble(str(cubin))
    names = _demangled(list(code))
    problems = []
    for mangled, instructions in code.items():
        name = _short(names[mangled])
        budget = CUDA_BUDGETS.get(name)
        if budget is None:
            problems.append(f"{names[mangled]}: no CUDA_BUDGETS entry")
            continue
        if sass.count(instructions, ("LDL", "STL")):
            problems.append(f"{name}: local memory")
        for i, body in enumerate(sass.hot_loops(instructions, budget["markers"])):
            shfl, u16 = sass.count(body, ("SHFL",)), sass.count(body, U16_LOADS)
            if shfl > budget["shfl"]:
                problems.append(f"{names[mangled]} loop {i}: {shfl} SHFL (budget {budget['shfl']})")
            tanh = sass.count(body, ("MUFU.TANH",))
            if "per_tanh" in budget and tanh and len(body) / tanh > budget["per_tanh"]:
                problems.append(f"{names[mangled]} loop {i}: {len(body) / tanh:.2f} instructions per MUFU.TANH "
                                f"(budget {budget['per_tanh']})")
            if u16 > budget["u16_loads"]:
                problems.append(f"{names[mangled]} loop {i}: {u16} scalar 16-bit loads (budget {budget['u16_loads']})")
            for variant, forbidden in budget.get("forbid", {}).items():
                if variant in names[mangled] and sass.count(body, forbidden):
                    problems.append(f"{names[mangled]} loop {i}: {sass.count(body, forbidden)} {forbidden}")
    assert not problems, problems


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "kernels").glob("*.cu")))
def test_cuda_kernels_compile_for_sm80_within_spill_budget(tmp_path, source):
    """The build's other architecture (an A100): every kernel compiles there too, spilling no more than
    SM80_SPILLS allows its file (bytes per kernel: the decoding and additive kernels' rewrites set them to 0)."""
    out = subprocess.run([NVCC, "-std=c++17", "-O3", "-gencode=arch=compute_80,code=sm_80", "-Xptxas", "-v", "-cubin",
                          str(ROOT / "kernels" / source), "-o", str(tmp_path / "k.cubin")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    spills = SPILLS.findall(out.stderr)
    assert spills and max(int(a) + int(b) for a, b in spills) <= SM80_SPILLS.get(source, 0), out.stderr


@pytest.mark.skipif(NVCC is None, reason="nvcc (and its CUDA headers) not found")
@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "csrc").glob("*_cuda.cpp")) + ["extension.cpp"])
def test_cuda_launchers_compile_against_torch_headers(tmp_path, source):
    """The host-side launchers, syntax- and type-checked with the CUDA build's macros (no GPU, no CUDA torch)."""
    from torch.utils.cpp_extension import CUDA_HOME, include_paths

    candidates = [pathlib.Path(NVCC).resolve().parents[1] / "include",
                  *sorted(pathlib.Path("/usr/local").glob("cuda*/include"))]
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


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_persistent_lstm_step_loop_keeps_w_hh_in_registers(tmp_path):
    """kernels/lstm_persistent.cu for sm_90a, every instantiation: W_hh loaded once, before the step loop
    (its 32-bit constant loads all outside the loop), never in local memory; the loop issues exactly the
    tensor-core products of the tile (forward: the k-tiles of a warp x the batch's n-tiles; backward: the
    warp's m-tiles x the block's k-tiles x the n-tiles) and, forward, the gate swap's two shuffles per n-tile
    (in at most two copies: ptxas duplicates an n-tile's tail for its branches)."""
    from fastseq.ops import sass

    _, cubin = _nvcc_cubin(tmp_path, "lstm_persistent.cu")
    code = sass.disassemble(str(cubin))
    names = _demangled(list(code))
    seen = set()
    for mangled, instructions in code.items():
        found = re.search(r"lstm_persistent_(forward|backward)_kernel<(\w+), (\d+), (\d+)>", names[mangled])
        assert found, names[mangled]
        kind, hidden, tile = found.group(1), int(found.group(3)), int(found.group(4))
        seen.add((kind, found.group(2), hidden, tile))
        units = 16 if hidden >= 1024 else 32
        n_tiles = tile // 8
        assert not sass.count(instructions, ("LDL", "STL")), names[mangled]
        loops = sass.hot_loops(instructions, ("HMMA",))
        assert len(loops) == 1, (names[mangled], len(loops))
        body = loops[0]
        if kind == "forward":
            k_split = 8 // (4 * units // 16)
            assert sass.count(body, ("HMMA",)) == hidden // 16 // k_split * n_tiles, names[mangled]
            assert 2 * n_tiles <= sass.count(body, ("SHFL",)) <= 4 * n_tiles, names[mangled]
            assert sass.count(body, ("LDG.E.CONSTANT",)) == 0 < sass.count(instructions, ("LDG.E.CONSTANT",))
        else:
            assert sass.count(body, ("HMMA",)) == hidden // 16 // 8 * (4 * units // 16) * n_tiles, names[mangled]
    def most(kind, h):  # lstm_persistent_max_tile
        return (16 if h < 1024 else 8) if kind == "backward" else (32 if h >= 512 else 64)
    plans = {(kind, h, t) for kind in ("forward", "backward") for h in (128, 256, 512, 1024) for t in (8, 16, 32, 64)
             if t <= most(kind, h)}
    assert {(k, h, t) for k, _, h, t in seen} == plans
