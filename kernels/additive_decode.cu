// The additive attention decoder step: one query per row against the cached keys, no workspace.
//
// One block per row; its warps take every kWarps-th key and merge their partial softmaxes through shared
// memory. A warp's 32 lanes hold the H-vector (and the Dv-vector) in registers, N elements a lane
// (element u*32 + lane), so H and Dv are limited to kAdditiveDecodeMaxDim; a score is one warp-wide sum
//     s_j = Σ_h v_h tanh(q_h + k_jh)
// float16/bfloat16 use the hardware tanh.approx.f32 (one special-function op); float32 the exact tanhf.
#include <cmath>

#include "additive_decode.h"
#include <type_traits>

#include "common.cuh"
#include "grid.h"

namespace fastseq {
namespace kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

template <typename T> struct Fast { static constexpr bool value = false; };
template <> struct Fast<__half> { static constexpr bool value = true; };
template <> struct Fast<__nv_bfloat16> { static constexpr bool value = true; };

template <typename T, typename A> __device__ __forceinline__ A tanh_t(A x) {
  if constexpr (Fast<T>::value) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  } else {
    return tanh_(x);
  }
}

// exp: the fast approximation where tanh is approximate too (float16/bfloat16), expf otherwise.
template <typename T> __device__ __forceinline__ float exp_t(float x) {
  if constexpr (Fast<T>::value) {
    return __expf(x);
  } else {
    return expf(x);
  }
}

template <typename A> __device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// out[u] = row[u*32 + lane] for the elements below n, zero beyond.
template <int N, typename T, typename A> __device__ __forceinline__ void load_row(const T* row, int64_t n, A (&out)[N]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int u = 0; u < N; ++u) {
    const int64_t idx = u * 32 + lane;
    out[u] = idx < n ? load_as<A>(row + idx) : A(0);
  }
}

template <int N, typename T, typename A> __device__ __forceinline__ void store_row(T* row, int64_t n, const A (&in)[N]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int u = 0; u < N; ++u) {
    const int64_t idx = u * 32 + lane;
    if (idx < n) store_from(row + idx, in[u]);
  }
}

__device__ __forceinline__ int64_t key_count(const int32_t* lengths, int64_t b, int64_t Tk) {
  if (lengths == nullptr) return Tk;
  const int64_t n = lengths[b];
  return n < 0 ? 0 : (n > Tk ? Tk : n);
}

__device__ __forceinline__ bool key_used(const uint8_t* mask, int64_t b, int64_t j, int64_t Tk) {
  return mask == nullptr || mask[b * Tk + j] == 0;
}

// Σ_h v_h tanh(q_h + k_h) over the warp, with t_u = tanh(q_u + k_u) left in t.
template <typename T, int N, typename A>
__device__ __forceinline__ A score(const A (&q)[N], const T* k_row, const A (&w)[N], int64_t H, A (&t)[N]) {
  const int lane = threadIdx.x % 32;
  A s = 0;
#pragma unroll
  for (int u = 0; u < N; ++u) {
    const int64_t idx = u * 32 + lane;
    t[u] = idx < H ? tanh_t<T>(q[u] + load_as<A>(k_row + idx)) : A(0);
    s += w[u] * t[u];
  }
  return warp_sum(s);
}

// One row per block: warp w takes keys w, w + kWarps, ...; the partial softmaxes merge in warp 0.
template <typename T, typename A, int N>
__global__ void __launch_bounds__(kThreads)
    additive_decode_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                           const T* __restrict__ values, const int32_t* __restrict__ lengths,
                           const uint8_t* __restrict__ mask, T* __restrict__ context, int64_t Tk, int64_t H,
                           int64_t Dv) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.x;
  const int64_t n_keys = key_count(lengths, b, Tk);
  A qv[N], w[N], acc[N], t[N];
  load_row(v, H, w);
  load_row(q + b * H, H, qv);
#pragma unroll
  for (int u = 0; u < N; ++u) acc[u] = 0;
  A m = -INFINITY, l = 0;
  for (int64_t j = warp; j < n_keys; j += kWarps) {
    if (!key_used(mask, b, j, Tk)) continue;
    const A s = score<T>(qv, k + (b * Tk + j) * H, w, H, t);
    const A m_new = s > m ? s : m;  // finite from the first key on
    const A alpha = exp_t<T>(m - m_new), p = exp_t<T>(s - m_new);
    l = l * alpha + p;
    const T* value_row = values + (b * Tk + j) * Dv;
#pragma unroll
    for (int u = 0; u < N; ++u) {
      const int64_t idx = u * 32 + lane;
      acc[u] = acc[u] * alpha + (idx < Dv ? p * load_as<A>(value_row + idx) : A(0));
    }
    m = m_new;
  }
  __shared__ A part_m[kWarps], part_l[kWarps], part_acc[kWarps][32];
  if (lane == 0) { part_m[warp] = m; part_l[warp] = l; }
  __syncthreads();
  A m_all = -INFINITY;
  for (int p = 0; p < kWarps; ++p) m_all = part_m[p] > m_all ? part_m[p] : m_all;
  const A scale = m == -INFINITY ? A(0) : exp_t<T>(m - m_all);
  if (warp == 0) {
    l = 0;
    for (int p = 0; p < kWarps; ++p) l += part_m[p] == -INFINITY ? A(0) : part_l[p] * exp_t<T>(part_m[p] - m_all);
  }
#pragma unroll
  for (int u = 0; u < N; ++u) {
    part_acc[warp][lane] = acc[u] * scale;
    __syncthreads();
    if (warp == 0) {
      acc[u] = 0;
      for (int p = 0; p < kWarps; ++p) acc[u] += part_acc[p][lane];
    }
    __syncthreads();
  }
  if (warp != 0) return;
  const bool empty = l == A(0);  // every key padded: zero context
#pragma unroll
  for (int u = 0; u < N; ++u) acc[u] = empty ? A(0) : acc[u] / l;
  store_row(context + b * Dv, Dv, acc);
}

// Calls f(std::integral_constant<int, N>{}) with the registers per lane that H and Dv need.
template <typename F> cudaError_t with_lanes(int64_t H, int64_t Dv, F&& f) {
  const int64_t dim = H > Dv ? H : Dv;
  if (dim <= 128) return f(std::integral_constant<int, 4>{});
  if (dim <= 256) return f(std::integral_constant<int, 8>{});
  if (dim <= kAdditiveDecodeMaxDim) return f(std::integral_constant<int, 16>{});
  return cudaErrorInvalidValue;
}

}  // namespace

template <typename T, typename A>
cudaError_t additive_attention_decode(const T* q, const T* k, const T* v, const T* values, const int32_t* lengths,
                                      const uint8_t* mask, T* context, int64_t B, int64_t Tk, int64_t H, int64_t Dv,
                                      cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  if (B > kMaxGridX) return cudaErrorInvalidConfiguration;
  return with_lanes(H, Dv, [&](auto n) {
    constexpr int N = decltype(n)::value;
    additive_decode_kernel<T, A, N><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(q, k, v, values, lengths, mask,
                                                                                      context, Tk, H, Dv);
    return cudaGetLastError();
  });
}

#define FASTSEQ_INSTANTIATE(T, A)                                                                                  \
  template cudaError_t additive_attention_decode<T, A>(const T*, const T*, const T*, const T*, const int32_t*,   \
                                                       const uint8_t*, T*, int64_t, int64_t, int64_t, int64_t,   \
                                                       cudaStream_t);
FASTSEQ_INSTANTIATE(float, float)
FASTSEQ_INSTANTIATE(__half, float)
FASTSEQ_INSTANTIATE(__nv_bfloat16, float)
#undef FASTSEQ_INSTANTIATE

}  // namespace kernels
}  // namespace fastseq
