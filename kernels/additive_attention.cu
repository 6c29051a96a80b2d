// Fused additive (Bahdanau) attention, forward and backward, never building the (B, Tq, Tk, H) tensor.
//
// One warp per (row b, query i) in the forward and in the dq kernel, one warp per (row b, key j) in
// the dk/dv/dvalues kernel; the warp's 32 lanes hold the H-vector (and the Dv-vector) in registers, N
// elements a lane (element u*32 + lane), and walk the other side's vectors from global memory (the
// block's warps read the same ones, so they come from L1/L2). A score is one warp-wide sum:
//     s_ij = Σ_h v_h tanh(q_ih + k_jh)
// The forward keeps an online softmax per warp; the backward recomputes tanh once per kernel and uses
// it for both the score and g = dS v (1 − t²), so there are no atomics and the result is deterministic.
// A decoder step (Tq = 1) splits the keys over the block's warps and merges their partial softmaxes.
// float16/bfloat16 use the hardware tanh.approx.f32 (one special-function op); float32 the exact tanhf.
#include <cmath>

#include "additive_attention.h"
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

template <typename T, int N, typename A>
__device__ __forceinline__ A dot_row(const A (&x)[N], const T* row, int64_t n) {
  const int lane = threadIdx.x % 32;
  A s = 0;
#pragma unroll
  for (int u = 0; u < N; ++u) {
    const int64_t idx = u * 32 + lane;
    if (idx < n) s += x[u] * load_as<A>(row + idx);
  }
  return warp_sum(s);
}

// Forward. W warps per query (1, or kWarps for a decoder step), kWarps / W queries per block; the W
// warps of a query take every W-th key and merge their (max, sum, context) through shared memory.
template <typename T, typename A, int N, int W>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                   const T* __restrict__ values, const int32_t* __restrict__ lengths, const uint8_t* __restrict__ mask,
                   T* __restrict__ context, A* __restrict__ lse, int64_t Tq, int64_t Tk, int64_t H, int64_t Dv) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const RowBlock at = row_block(blockIdx.x, (Tq + kWarps / W - 1) / (kWarps / W));
  const int64_t b = at.row;
  const int64_t i = at.block * (kWarps / W) + warp / W;
  const int part = warp % W;
  const bool active = i < Tq;
  const int64_t n_keys = key_count(lengths, b, Tk);

  A qv[N], w[N], acc[N], t[N];
  load_row(v, H, w);
  if (active) load_row(q + (b * Tq + i) * H, H, qv);
#pragma unroll
  for (int u = 0; u < N; ++u) acc[u] = 0;
  A m = -INFINITY, l = 0;
  if (active) {
    for (int64_t j = part; j < n_keys; j += W) {
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
  }
  if constexpr (W > 1) {  // merge the W partial softmaxes of the query into its part-0 warp
    __shared__ A part_m[kWarps], part_l[kWarps], part_acc[kWarps][32];
    if (lane == 0) { part_m[warp] = m; part_l[warp] = l; }
    __syncthreads();
    const int first = warp - part;
    A m_all = -INFINITY;
    for (int p = 0; p < W; ++p) m_all = part_m[first + p] > m_all ? part_m[first + p] : m_all;
    const A scale = m == -INFINITY ? A(0) : exp_t<T>(m - m_all);
    if (part == 0) {
      l = 0;
      for (int p = 0; p < W; ++p) l += part_m[first + p] == -INFINITY ? A(0) : part_l[first + p] * exp_t<T>(part_m[first + p] - m_all);
    }
#pragma unroll
    for (int u = 0; u < N; ++u) {
      part_acc[warp][lane] = acc[u] * scale;
      __syncthreads();
      if (part == 0) {
        acc[u] = 0;
        for (int p = 0; p < W; ++p) acc[u] += part_acc[first + p][lane];
      }
      __syncthreads();
    }
    m = m_all;
  }
  if (!active || part != 0) return;
  const bool empty = l == A(0);  // every key padded: zero context, lse = +inf
#pragma unroll
  for (int u = 0; u < N; ++u) acc[u] = empty ? A(0) : acc[u] / l;
  store_row(context + (b * Tq + i) * Dv, Dv, acc);
  if (lse != nullptr && lane == 0) lse[b * Tq + i] = empty ? A(INFINITY) : m + logf(l);
}

// dk, dvalues and the partial dv of one key per warp, over every query.
template <typename T, typename A, int N>
__global__ void __launch_bounds__(kThreads)
    backward_keys_kernel(const T* __restrict__ grad_context, const T* __restrict__ q, const T* __restrict__ k,
                         const T* __restrict__ v, const T* __restrict__ values, const int32_t* __restrict__ lengths,
                         const uint8_t* __restrict__ mask, const A* __restrict__ lse, const A* __restrict__ delta,
                         T* __restrict__ grad_k, A* __restrict__ grad_v_partial, T* __restrict__ grad_values,
                         int64_t Tq, int64_t Tk, int64_t H, int64_t Dv) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const RowBlock at = row_block(blockIdx.x, (Tk + kWarps - 1) / kWarps);
  const int64_t b = at.row;
  const int64_t j = at.block * kWarps + warp;
  const bool active = j < key_count(lengths, b, Tk) && key_used(mask, b, j, Tk);

  A kv[N], w[N], value[N], t[N], dk[N], dw[N], dvalue[N], dc[N];
  load_row(v, H, w);
#pragma unroll
  for (int u = 0; u < N; ++u) dk[u] = dw[u] = dvalue[u] = 0;
  if (active) {
    load_row(k + (b * Tk + j) * H, H, kv);
    load_row(values + (b * Tk + j) * Dv, Dv, value);
    for (int64_t i = 0; i < Tq; ++i) {
      const A row_lse = lse[b * Tq + i];
      if (row_lse == A(INFINITY)) continue;  // a query with no key: no gradient
      const T* q_row = q + (b * Tq + i) * H;
      A s = 0;
#pragma unroll
      for (int u = 0; u < N; ++u) {
        const int64_t idx = u * 32 + lane;
        t[u] = idx < H ? tanh_t<T>(load_as<A>(q_row + idx) + kv[u]) : A(0);
        s += w[u] * t[u];
      }
      const A p = exp_t<T>(warp_sum(s) - row_lse);
      load_row(grad_context + (b * Tq + i) * Dv, Dv, dc);
      A da = 0;
#pragma unroll
      for (int u = 0; u < N; ++u) da += dc[u] * value[u];
      const A ds = p * (warp_sum(da) - delta[b * Tq + i]);
#pragma unroll
      for (int u = 0; u < N; ++u) {
        dvalue[u] += p * dc[u];
        dk[u] += ds * w[u] * (A(1) - t[u] * t[u]);
        dw[u] += ds * t[u];
      }
    }
  }
  if (j < Tk) {
    store_row(grad_k + (b * Tk + j) * H, H, dk);
    store_row(grad_values + (b * Tk + j) * Dv, Dv, dvalue);
  }
  // dv: sum the block's warps through shared memory, 32 elements at a time, one partial per block.
  __shared__ A part[kWarps][32];
  A* out = grad_v_partial + static_cast<int64_t>(blockIdx.x) * H;  // block b · blocks per row + its block
#pragma unroll
  for (int u = 0; u < N; ++u) {
    part[warp][lane] = dw[u];
    __syncthreads();
    if (warp == 0 && u * 32 + lane < H) {
      A sum = 0;
      for (int p = 0; p < kWarps; ++p) sum += part[p][lane];
      out[u * 32 + lane] = sum;
    }
    __syncthreads();
  }
}

// dq of one query per warp, over every key.
template <typename T, typename A, int N>
__global__ void __launch_bounds__(kThreads)
    backward_queries_kernel(const T* __restrict__ grad_context, const T* __restrict__ q, const T* __restrict__ k,
                            const T* __restrict__ v, const T* __restrict__ values, const int32_t* __restrict__ lengths,
                            const uint8_t* __restrict__ mask, const A* __restrict__ lse, const A* __restrict__ delta,
                            T* __restrict__ grad_q, int64_t Tq, int64_t Tk, int64_t H, int64_t Dv) {
  const int warp = threadIdx.x / 32;
  const RowBlock at = row_block(blockIdx.x, (Tq + kWarps - 1) / kWarps);
  const int64_t b = at.row;
  const int64_t i = at.block * kWarps + warp;
  if (i >= Tq) return;
  const A row_lse = lse[b * Tq + i];
  A qv[N], w[N], dc[N], t[N], dq[N];
#pragma unroll
  for (int u = 0; u < N; ++u) dq[u] = 0;
  if (row_lse != A(INFINITY)) {
    load_row(v, H, w);
    load_row(q + (b * Tq + i) * H, H, qv);
    load_row(grad_context + (b * Tq + i) * Dv, Dv, dc);
    const A row_delta = delta[b * Tq + i];
    const int64_t n_keys = key_count(lengths, b, Tk);
    for (int64_t j = 0; j < n_keys; ++j) {
      if (!key_used(mask, b, j, Tk)) continue;
      const A p = exp_t<T>(score<T>(qv, k + (b * Tk + j) * H, w, H, t) - row_lse);
      const A ds = p * (dot_row(dc, values + (b * Tk + j) * Dv, Dv) - row_delta);
#pragma unroll
      for (int u = 0; u < N; ++u) dq[u] += ds * w[u] * (A(1) - t[u] * t[u]);
    }
  }
  store_row(grad_q + (b * Tq + i) * H, H, dq);
}

// Calls f(std::integral_constant<int, N>{}) with the registers per lane that H and Dv need.
template <typename F> cudaError_t with_lanes(int64_t H, int64_t Dv, F&& f) {
  const int64_t dim = H > Dv ? H : Dv;
  if (dim <= 128) return f(std::integral_constant<int, 4>{});
  if (dim <= 256) return f(std::integral_constant<int, 8>{});
  if (dim <= kAdditiveAttentionMaxDim) return f(std::integral_constant<int, 16>{});
  return cudaErrorInvalidValue;
}

int64_t blocks(int64_t n, int64_t per_block) { return (n + per_block - 1) / per_block; }

// Launches kernel over B rows × blocks_per_row blocks of kThreads on a flat grid (see grid.h).
template <typename Kernel, typename... Args>
cudaError_t launch_rows(Kernel kernel, int64_t B, int64_t blocks_per_row, cudaStream_t stream, Args... args) {
  if (B == 0 || blocks_per_row == 0) return cudaSuccess;
  const int64_t n = flat_grid(B, blocks_per_row);
  if (n == 0) return cudaErrorInvalidConfiguration;  // more blocks than one launch takes
  kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace

int64_t additive_attention_grad_v_blocks(int64_t Tk) { return blocks(Tk, kWarps); }

template <typename T, typename A>
cudaError_t additive_attention_forward(const T* q, const T* k, const T* v, const T* values, const int32_t* lengths,
                                       const uint8_t* mask, T* context, A* lse, int64_t B, int64_t Tq, int64_t Tk,
                                       int64_t H, int64_t Dv, cudaStream_t stream) {
  if (B == 0 || Tq == 0) return cudaSuccess;
  return with_lanes(H, Dv, [&](auto n) {
    constexpr int N = decltype(n)::value;
    if (Tq == 1) {
      return launch_rows(forward_kernel<T, A, N, kWarps>, B, 1, stream, q, k, v, values, lengths, mask, context, lse,
                         Tq, Tk, H, Dv);
    }
    return launch_rows(forward_kernel<T, A, N, 1>, B, blocks(Tq, kWarps), stream, q, k, v, values, lengths, mask,
                       context, lse, Tq, Tk, H, Dv);
  });
}

template <typename T, typename A>
cudaError_t additive_attention_backward(const T* grad_context, const T* q, const T* k, const T* v, const T* values,
                                        const int32_t* lengths, const uint8_t* mask, const A* lse, const A* delta,
                                        T* grad_q, T* grad_k, A* grad_v_partial, T* grad_values, int64_t B,
                                        int64_t Tq, int64_t Tk, int64_t H, int64_t Dv, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  return with_lanes(H, Dv, [&](auto n) {
    constexpr int N = decltype(n)::value;
    cudaError_t status = launch_rows(backward_keys_kernel<T, A, N>, B, blocks(Tk, kWarps), stream, grad_context, q, k,
                                     v, values, lengths, mask, lse, delta, grad_k, grad_v_partial, grad_values, Tq,
                                     Tk, H, Dv);
    if (status != cudaSuccess || Tq == 0) return status;
    return launch_rows(backward_queries_kernel<T, A, N>, B, blocks(Tq, kWarps), stream, grad_context, q, k, v,
                       values, lengths, mask, lse, delta, grad_q, Tq, Tk, H, Dv);
  });
}

#define FASTSEQ_INSTANTIATE(T, A)                                                                                    \
  template cudaError_t additive_attention_forward<T, A>(const T*, const T*, const T*, const T*, const int32_t*,     \
                                                        const uint8_t*, T*, A*, int64_t, int64_t, int64_t, int64_t, \
                                                        int64_t, cudaStream_t);                                     \
  template cudaError_t additive_attention_backward<T, A>(const T*, const T*, const T*, const T*, const T*,          \
                                                         const int32_t*, const uint8_t*, const A*, const A*, T*, T*, \
                                                         A*, T*, int64_t, int64_t, int64_t, int64_t, int64_t,       \
                                                         cudaStream_t);
FASTSEQ_INSTANTIATE(float, float)
FASTSEQ_INSTANTIATE(__half, float)
FASTSEQ_INSTANTIATE(__nv_bfloat16, float)
#undef FASTSEQ_INSTANTIATE

}  // namespace kernels
}  // namespace fastseq
