// One-dimensional launches over (rows × blocks per row). CUDA's grid axes y and z stop at 65,535
// blocks, x at 2^31 − 1, so a batch (or batch × heads) laid on y fails past 65,535 rows: fastseq's
// kernels lay the product on x, with a row's blocks adjacent (they share its keys in L2), and split
// blockIdx.x back into (row, block). Torch-free and CUDA-free: host code and tests include it too.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define FASTSEQ_HOST_DEVICE __host__ __device__
#else
#define FASTSEQ_HOST_DEVICE
#endif

namespace fastseq {
namespace kernels {

constexpr int64_t kMaxGridX = 2147483647;  // blocks on the x axis of one launch

// Blocks of a launch over rows × blocks_per_row on the x axis; 0 when CUDA cannot launch that many.
inline int64_t flat_grid(int64_t rows, int64_t blocks_per_row) {
  if (rows <= 0 || blocks_per_row <= 0) return 0;
  return rows > kMaxGridX / blocks_per_row ? 0 : rows * blocks_per_row;
}

struct RowBlock {
  int64_t row, block;
};

// The (row, block) a flat block index stands for.
FASTSEQ_HOST_DEVICE inline RowBlock row_block(int64_t id, int64_t blocks_per_row) {
  return {id / blocks_per_row, id % blocks_per_row};
}

}  // namespace kernels
}  // namespace fastseq
