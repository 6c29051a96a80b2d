// Fused additive (Bahdanau) attention kernels: host-callable launchers. Torch-free.
//
// Math, padding rule and workspace: fastseq/ops/additive/reference.py. Row-major, contiguous:
//   q (B, Tq, H), k (B, Tk, H), v (H), values (B, Tk, Dv), context / grad_context (B, Tq, Dv);
//   lse, delta (B, Tq) in float, lse = +inf for a row
//   with no key; lengths (B) int32 or null; mask (B, Tk) uint8, nonzero = padded, or null.
// Each warp owns one (row, query) or (row, key) pair and holds its H-vector in registers, 32 lanes
// across H, so H and Dv are limited to kAdditiveAttentionMaxDim (16 registers a lane each).
// Instantiated for T = float, __half, __nv_bfloat16 with A = float.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastseq {
namespace kernels {

constexpr int64_t kAdditiveAttentionMaxDim = 512;

// Blocks of keys of the key-owned backward kernel: grad_v_partial has (B * blocks, H) elements.
int64_t additive_attention_grad_v_blocks(int64_t Tk);

// lse may be null (a decoder step, which keeps no workspace); Tq == 1 splits the keys over a block's warps.
template <typename T, typename A>
cudaError_t additive_attention_forward(const T* q, const T* k, const T* v, const T* values, const int32_t* lengths,
                                       const uint8_t* mask, T* context, A* lse, int64_t B, int64_t Tq, int64_t Tk,
                                       int64_t H, int64_t Dv, cudaStream_t stream);

// grad_v_partial: per-block partial sums of grad_v, summed by the caller.
template <typename T, typename A>
cudaError_t additive_attention_backward(const T* grad_context, const T* q, const T* k, const T* v, const T* values,
                                        const int32_t* lengths, const uint8_t* mask, const A* lse, const A* delta,
                                        T* grad_q, T* grad_k, A* grad_v_partial, T* grad_values, int64_t B,
                                        int64_t Tq, int64_t Tk, int64_t H, int64_t Dv, cudaStream_t stream);

}  // namespace kernels
}  // namespace fastseq
