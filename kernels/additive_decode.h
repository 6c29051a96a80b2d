// The additive attention decoder step (one query per row, no workspace): host-callable launcher.
// Torch-free. Math and padding rule: fastseq/ops/additive_attention/reference.py. Row-major, contiguous:
//   q (B, H), k (B, Tk, H), v (H), values (B, Tk, Dv), context (B, Dv);
//   lengths (B) int32 or null; mask (B, Tk) uint8, nonzero = padded, or null.
// Instantiated for T = float, __half, __nv_bfloat16 with A = float.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastseq {
namespace kernels {

constexpr int64_t kAdditiveDecodeMaxDim = 512;  // H and Dv: 16 registers a lane each

template <typename T, typename A>
cudaError_t additive_attention_decode(const T* q, const T* k, const T* v, const T* values, const int32_t* lengths,
                                      const uint8_t* mask, T* context, int64_t B, int64_t Tk, int64_t H, int64_t Dv,
                                      cudaStream_t stream);

}  // namespace kernels
}  // namespace fastseq
