// Decoding attention: one new query per (batch row, head) against a KV cache, split over the cache's
// length and then combined (flash-decoding). Host-callable launchers. Torch-free.
//
// Math and masking rule: fastseq/ops/attention/reference.py (attention_decode). Layouts, row-major:
//   q (B, Hq, D); k (B, Hkv, ·, D) and v (B, Hkv, ·, Dv), each (row, head) block's positions contiguous,
//   the blocks placed by CacheStrides (a view of a cache's first Tk positions, a batch expanded from
//   one row, a single head's stride: any); out (B, Hq, Dv);
//   lengths (B) int32 or null (clamped to [0, Tk]); mask (B, Tk) uint8, nonzero = padded, or null.
// Query head h reads key/value head h / (Hq / Hkv). A query that sees no key gets zeros.
// Workspace: part_out (B·Hq·n_splits·Dv) and part_lse (B·Hq·n_splits) in float.
// Instantiated for T = float, __half, __nv_bfloat16; D and Dv up to kAttentionDecodeMaxDim.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastseq {
namespace kernels {

constexpr int64_t kAttentionDecodeMaxDim = 256;

// Elements from one batch row, and from one head, to the next in k or v.
struct CacheStrides {
  int64_t batch, head;
};

// How many chunks to split each (row, head)'s cache into: enough blocks for two waves of the GPU's
// multiprocessors, each chunk holding at least 64 keys.
int64_t attention_decode_splits(int64_t batch_heads, int64_t Tk, int multiprocessors);

template <typename T>
cudaError_t attention_decode(const T* q, const T* k, const T* v, const int32_t* lengths, const uint8_t* mask, T* out,
                             float* part_out, float* part_lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t Tk,
                             int64_t D, int64_t Dv, CacheStrides k_strides, CacheStrides v_strides, float scale,
                             int64_t n_splits, cudaStream_t stream);

}  // namespace kernels
}  // namespace fastseq
