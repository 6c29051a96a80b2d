// Decoding attention kernels (see attention_decode.h).
//
// Split kernel: one block of kWarps warps per (chunk of the cache, batch row × query head). Each warp
// takes every kWarps-th key of the chunk, kUnroll at a time so that several rows of the cache are in
// flight; its 32 lanes hold the query and the output across the head dim (E elements a lane, lane +
// 32·i), a key's score is a warp sum. kUnroll keys a step: 4, or 2 at head dims past 128 (registers). The warp keeps an online softmax in base 2; the block merges its
// warps through shared memory and writes the chunk's normalized output and log-sum-exp.
// Combine kernel: one block per (batch row × query head) weighs the chunks by their softmax mass.
#include <math_constants.h>

#include "attention_decode.h"
#include "common.cuh"
#include "grid.h"

namespace fastseq {
namespace kernels {
namespace {

constexpr int kWarps = 4;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <typename T, int E, int kUnroll = (E >= 8 ? 2 : 4)>
__global__ void __launch_bounds__(kWarps * 32)
    decode_split_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        const int32_t* __restrict__ lengths, const uint8_t* __restrict__ mask,
                        float* __restrict__ part_out, float* __restrict__ part_lse, int64_t Hq, int64_t group,
                        int64_t Tk, int D, int Dv, int64_t k_batch, int64_t k_head, int64_t v_batch, int64_t v_head, float scale_log2,
                        int64_t chunk, int64_t n_splits) {
  __shared__ float s_acc[kWarps][E * 32];
  __shared__ float s_m[kWarps], s_l[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const RowBlock at = row_block(blockIdx.x, n_splits);
  const int64_t row = at.row, split = at.block;  // row = b · Hq + h
  const int64_t b = row / Hq, kv_head = (row % Hq) / group;
  int64_t n_keys = Tk;
  if (lengths != nullptr) n_keys = min(max(static_cast<int64_t>(lengths[b]), int64_t{0}), Tk);
  const int64_t lo = split * chunk, hi = min(lo + chunk, n_keys);

  float qr[E], acc[E];
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const int d = lane + 32 * i;
    qr[i] = d < D ? load_as<float>(q + row * D + d) * scale_log2 : 0.0f;
    acc[i] = 0.0f;
  }
  const T* k_row = k + b * k_batch + kv_head * k_head;
  const T* v_row = v + b * v_batch + kv_head * v_head;
  float m = -CUDART_INF_F, l = 0.0f;
  for (int64_t j0 = lo + warp; j0 < hi; j0 += kWarps * kUnroll) {
    float s[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {  // the scores of up to kUnroll keys, their loads in flight together
      const int64_t j = j0 + u * kWarps;
      float partial = 0.0f;
      if (j < hi) {
#pragma unroll
        for (int i = 0; i < E; ++i) {
          const int d = lane + 32 * i;
          if (d < D) partial += qr[i] * load_as<float>(k_row + j * D + d);
        }
      }
      s[u] = warp_sum(partial);
      const bool seen = j < hi && (mask == nullptr || mask[b * Tk + j] == 0);
      s[u] = seen ? s[u] : -CUDART_INF_F;
    }
    float m_new = m;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) m_new = fmaxf(m_new, s[u]);
    if (m_new == -CUDART_INF_F) continue;  // nothing seen yet
    const float alpha = exp2f(m - m_new);
    l *= alpha;
#pragma unroll
    for (int i = 0; i < E; ++i) acc[i] *= alpha;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = j0 + u * kWarps;
      const float p = exp2f(s[u] - m_new);  // 0 for an unseen key
      l += p;
      if (p != 0.0f) {
#pragma unroll
        for (int i = 0; i < E; ++i) {
          const int d = lane + 32 * i;
          if (d < Dv) acc[i] += p * load_as<float>(v_row + j * Dv + d);
        }
      }
    }
    m = m_new;
  }

  // merge the warps' partial softmaxes
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < E; ++i) s_acc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float top = -CUDART_INF_F;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) top = fmaxf(top, s_m[w]);
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += s_m[w] == -CUDART_INF_F ? 0.0f : s_l[w] * exp2f(s_m[w] - top);
  const int64_t slot = row * n_splits + split;
  for (int d = threadIdx.x; d < Dv; d += kWarps * 32) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) o += s_m[w] == -CUDART_INF_F ? 0.0f : s_acc[w][d] * exp2f(s_m[w] - top);
    part_out[slot * Dv + d] = total > 0.0f ? o / total : 0.0f;
  }
  if (threadIdx.x == 0) part_lse[slot] = total > 0.0f ? top + log2f(total) : -CUDART_INF_F;
}

template <typename T>
__global__ void decode_combine_kernel(const float* __restrict__ part_out, const float* __restrict__ part_lse,
                                      T* __restrict__ out, int Dv, int64_t n_splits) {
  const int64_t row = blockIdx.x;
  float top = -CUDART_INF_F;
  for (int64_t s = 0; s < n_splits; ++s) top = fmaxf(top, part_lse[row * n_splits + s]);
  for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
    float o = 0.0f, total = 0.0f;
    for (int64_t s = 0; s < n_splits; ++s) {
      const float lse = part_lse[row * n_splits + s];
      if (lse == -CUDART_INF_F) continue;
      const float w = exp2f(lse - top);
      total += w;
      o += w * part_out[(row * n_splits + s) * Dv + d];
    }
    store_from(out + row * Dv + d, total > 0.0f ? o / total : 0.0f);
  }
}

template <typename T, int E>
cudaError_t launch(const T* q, const T* k, const T* v, const int32_t* lengths, const uint8_t* mask, T* out,
                   float* part_out, float* part_lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t Tk, int64_t D,
                   int64_t Dv, CacheStrides k_strides, CacheStrides v_strides, float scale, int64_t n_splits,
                   cudaStream_t stream) {
  const int64_t chunk = (Tk + n_splits - 1) / n_splits;
  const int64_t blocks = flat_grid(B * Hq, n_splits);
  if (blocks == 0) return cudaErrorInvalidConfiguration;
  decode_split_kernel<T, E><<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(
      q, k, v, lengths, mask, part_out, part_lse, Hq, Hq / Hkv, Tk, static_cast<int>(D), static_cast<int>(Dv),
      k_strides.batch, k_strides.head, v_strides.batch, v_strides.head, scale * kLog2e, chunk, n_splits);
  decode_combine_kernel<T><<<static_cast<unsigned>(B * Hq), 128, 0, stream>>>(part_out, part_lse, out,
                                                                             static_cast<int>(Dv), n_splits);
  return cudaGetLastError();
}

}  // namespace

int64_t attention_decode_splits(int64_t batch_heads, int64_t Tk, int multiprocessors) {
  const int64_t wanted = (2 * static_cast<int64_t>(multiprocessors) + batch_heads - 1) / batch_heads;
  const int64_t most = (Tk + 63) / 64;
  return wanted < 1 ? 1 : (wanted < most ? wanted : (most < 1 ? 1 : most));
}

template <typename T>
cudaError_t attention_decode(const T* q, const T* k, const T* v, const int32_t* lengths, const uint8_t* mask, T* out,
                             float* part_out, float* part_lse, int64_t B, int64_t Hq, int64_t Hkv, int64_t Tk,
                             int64_t D, int64_t Dv, CacheStrides k_strides, CacheStrides v_strides, float scale,
                             int64_t n_splits, cudaStream_t stream) {
  if (B == 0 || Hq == 0) return cudaSuccess;
  const int64_t dim = D > Dv ? D : Dv;
  if (dim <= 32) return launch<T, 1>(q, k, v, lengths, mask, out, part_out, part_lse, B, Hq, Hkv, Tk, D, Dv, k_strides, v_strides, scale, n_splits, stream);
  if (dim <= 64) return launch<T, 2>(q, k, v, lengths, mask, out, part_out, part_lse, B, Hq, Hkv, Tk, D, Dv, k_strides, v_strides, scale, n_splits, stream);
  if (dim <= 128) return launch<T, 4>(q, k, v, lengths, mask, out, part_out, part_lse, B, Hq, Hkv, Tk, D, Dv, k_strides, v_strides, scale, n_splits, stream);
  if (dim <= kAttentionDecodeMaxDim) return launch<T, 8>(q, k, v, lengths, mask, out, part_out, part_lse, B, Hq, Hkv, Tk, D, Dv, k_strides, v_strides, scale, n_splits, stream);
  return cudaErrorInvalidValue;
}

#define FASTSEQ_INSTANTIATE(T)                                                                                      \
  template cudaError_t attention_decode<T>(const T*, const T*, const T*, const int32_t*, const uint8_t*, T*, float*, \
                                           float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,             \
                                           CacheStrides, CacheStrides, float, int64_t, cudaStream_t);
FASTSEQ_INSTANTIATE(float)
FASTSEQ_INSTANTIATE(__half)
FASTSEQ_INSTANTIATE(__nv_bfloat16)
#undef FASTSEQ_INSTANTIATE

}  // namespace kernels
}  // namespace fastseq
