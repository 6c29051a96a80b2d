"""Launch grids stay within CUDA's limits at any batch: axes 1 and 2 of a grid take at most 65,535
programs, so a batch × heads past that must not land there in one launch. Checked without a GPU: the
Triton launchers run with their kernels replaced by recorders of the grid they get, and the CUDA
kernels' grid arithmetic (kernels/grid.h) is compiled and run on the host."""
import pathlib
import re
import shutil
import subprocess

import pytest
import torch

triton = pytest.importorskip("triton")

from fastseq.ops.additive_attention import triton as additive  # noqa: E402
from fastseq.ops.attention import triton_backward, triton_configs, triton_decode, triton_forward  # noqa: E402
from fastseq.triton.common import MAX_GRID  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
B, HQ, HKV = 20_000, 4, 2  # 80,000 query rows, 40,000 key/value rows: past 65,535 on axis 1 in one launch


class Recorder:
    """Stands in for a Triton kernel: `kernel[grid](*args)` records the grid and the batch it covers."""

    def __init__(self, grid_of=lambda grid: grid):
        self.launches = []
        self.grid_of = grid_of

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((self.grid_of(grid), args[0].shape[0]))
        return launch


def _assert_within_limits(launches, batch):
    assert launches
    for grid, _ in launches:
        assert len(grid) <= 3 and all(0 < n <= limit for n, limit in zip(grid, MAX_GRID)), grid
    assert sum(rows for _, rows in launches) == batch  # the slices cover the batch once


def _tiles(kernel):
    """Every tile a launch of `kernel` can take: the tuned ones of each architecture and the fixed one."""
    return [dict(BLOCK_M=m, BLOCK_N=n) for m, n, _, _ in {t for (name, _, _), by_dim in triton_configs.CONFIGS.items()
                                                          if name == kernel for ts in by_dim.values() for t in ts}]


@pytest.fixture
def recorded_attention(monkeypatch):
    """Attention launches recorded per kernel, each grid evaluated at every tile the kernel may take."""
    launches = {}

    def launch(kernel, fn, grid, args, flags, dtype):
        for tile in [*_tiles(kernel), triton_configs.FIXED]:
            launches.setdefault(kernel, []).append((grid(tile), args[0].shape[0]))

    monkeypatch.setattr(triton_configs, "launch", launch)
    return launches


def test_attention_forward_and_backward_launches_fit_at_any_batch(recorded_attention):
    q = torch.randn(B, HQ, 3, 16)
    k, v = torch.randn(B, HKV, 5, 16), torch.randn(B, HKV, 5, 16)
    lengths = torch.randint(0, 6, (B,), dtype=torch.int32)
    triton_forward.attention(q, k, v, lengths, None, None, True, 0.25, 0.0, 0)
    out, lse = torch.randn_like(q), torch.randn(B, HQ, 3)
    triton_backward.attention_backward(torch.randn_like(q), q, k, v, lengths, None, None, True, 0.25, 0.0, 0, out, lse)
    for kernel in ("fwd", "dkdv", "dq"):
        tiles = len(_tiles(kernel)) + 1
        _assert_within_limits(recorded_attention[kernel], B * tiles)


def test_attention_decode_launches_fit_at_any_batch(monkeypatch):
    split, combine = Recorder(), Recorder()
    monkeypatch.setattr(triton_decode, "split_kernel", split)
    monkeypatch.setattr(triton_decode, "combine_kernel", combine)
    q = torch.randn(B, HQ, 16)
    k, v = torch.randn(B, HKV, 40, 16), torch.randn(B, HKV, 40, 16)
    mask = torch.rand(B, 40) < 0.3
    triton_decode.attention_decode(q, k, v, None, mask, 0.25)
    assert split.launches and combine.launches  # one-dimensional grids: the batch never lands on axes 1 and 2
    assert all(grid[0] <= MAX_GRID[0] and len(grid) == 1 for grid, _ in split.launches + combine.launches)


def test_additive_attention_launches_fit_at_any_batch(monkeypatch):
    batch = 70_000  # one program row per batch row on axis 1
    recorders = {name: Recorder() for name in ("_scores_kernel", "_gradient_kernel", "_decode_kernel")}
    for name, recorder in recorders.items():
        monkeypatch.setattr(additive, name, recorder)
    q, k = torch.randn(batch, 2, 8), torch.randn(batch, 3, 8)
    w, values = torch.randn(8), torch.randn(batch, 3, 4)
    lengths = torch.randint(0, 4, (batch,), dtype=torch.int32)
    context, lse, s = additive.additive_attention(q, k, w, values, lengths, None, False)
    additive.additive_attention_backward(torch.randn_like(context), q, k, w, values, lengths, None, context,
                                         torch.randn(batch, 2), torch.randn(batch, 2, 3))
    additive.additive_attention_decode(q[:, 0], k, w, values, lengths, None)
    for recorder in recorders.values():  # one-dimensional grids: the batch never lands on axes 1 and 2
        assert recorder.launches and all(len(grid) == 1 and grid[0] <= MAX_GRID[0] for grid, _ in recorder.launches)


GRID_TEST = r"""
#include <initializer_list>

#include "grid.h"
using namespace fastseq::kernels;
int main() {
  // 80,000 rows (batch x heads, past the 65,535 of grid.y) x 3 blocks each, all on grid.x
  const int64_t rows = 80000, per_row = 3, n = flat_grid(rows, per_row);
  if (n != rows * per_row || n > kMaxGridX) return 1;
  for (int64_t id : {int64_t{0}, int64_t{2}, int64_t{3}, n - 1}) {
    const RowBlock at = row_block(id, per_row);
    if (at.row * per_row + at.block != id || at.block >= per_row || at.row >= rows) return 2;
  }
  if (row_block(n - 1, per_row).row != rows - 1) return 3;
  if (flat_grid(kMaxGridX, 2) != 0 || flat_grid(kMaxGridX, 1) != kMaxGridX) return 4;  // the limit itself
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_cuda_grid_arithmetic_at_the_limit(tmp_path):
    source = tmp_path / "grid_test.cpp"
    source.write_text(GRID_TEST)
    exe = tmp_path / "grid_test"
    build = subprocess.run(["c++", "-std=c++17", f"-I{ROOT / 'kernels'}", str(source), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert subprocess.run([str(exe)]).returncode == 0


def test_cuda_kernels_launch_on_flat_grids():
    """No CUDA launch lays a size on grid axis y or z: every <<<grid>>> is one-dimensional."""
    for source in sorted((ROOT / "kernels").glob("*.cu")):
        text = source.read_text()
        assert "dim3(" not in text and "blockIdx.y" not in text and "blockIdx.z" not in text, source.name
        for grid in re.findall(r"<<<([^,]+),", text):
            assert "dim3" not in grid, (source.name, grid)
