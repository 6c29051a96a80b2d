// The two tanh passes of additive attention (fastseq/ops/additive_attention/passes.py, its PyTorch model).
//
// Scores pass: a block scores a (BQ queries x BK keys) tile, a thread an 8 x 8 sub-tile held in registers
// (queries ty*4.. and BQ/2 + ty*4.., keys likewise: two 16-byte shared loads each, conflict-free). The
// block walks h in stages of kStage columns staged in shared memory transposed (double-buffered, the next
// stage's global loads in flight during the current stage's arithmetic); per (i, j, h) element an add, a
// tanh and an FMA, with no reduction across lanes. The leading h_fma columns (rows within range) take the FMA
// units' tanh, 1 - 2 / (1 + A B), A = e^{2q} and B = e^{2k} staged in their place.
//
// Gradient pass: a block holds a (64 queries x 64 h) tile: warp w its queries 8w.., lane l its columns
// 2l and 2l + 1, G = Σ_j dS t² in registers. It walks its keys in chunks of KC: dS (queries x keys) and
// k (keys x h) staged in shared memory, t recomputed once per element; F_jh = Σ_i dS t² of the chunk
// summed in registers over a thread's queries, then over the 8 warps through shared memory, and written
// as dk = v (c − F) where one block covers every query (else as a partial sum). dv's partial sums per
// block. Deterministic: no atomics.
#include "additive_passes.h"

#include <cmath>
#include <type_traits>

#include "common.cuh"
#include "grid.h"

namespace fastseq {
namespace kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kStage = 8;   // h columns per shared-memory stage of the scores pass
constexpr int kGH = 64;     // h columns of a gradient block
constexpr int kGQ = static_cast<int>(kAdditiveGradientQueries);
constexpr int kQW = kGQ / (kThreads / 32);  // queries per warp in the gradient pass
static_assert(kGH == kAdditiveFmaColumns && kQW == 8, "the gradient tile is 64 x 64 over 8 warps");

template <typename T> constexpr bool kFast = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
template <typename T> constexpr int kSteps = kFast<T> ? 2 : 3;  // Newton steps: within 16-bit, within float

template <typename T, typename A> __device__ __forceinline__ A tanh_unit(A x) {
  if constexpr (kFast<T>) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  } else {
    return tanh_(x);
  }
}

// 1/d for d >= 1 on the FMA units: a first guess from d's bits (passes.MAGIC), then STEPS Newton steps.
template <int STEPS> __device__ __forceinline__ float reciprocal(float d) {
  float r = __int_as_float(0x7EF311C3 - __float_as_int(d));
#pragma unroll
  for (int i = 0; i < STEPS; ++i) r = r * __fmaf_rn(-d, r, 2.0f);
  return r;
}

template <typename A, typename T> __device__ __forceinline__ A to_acc(T x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(x);
  } else {
    return static_cast<A>(x);
  }
}

template <typename T, int N> struct alignas(sizeof(T) * N) Vec {
  T x[N];
};

// N consecutive elements from an address aligned to N elements, in one (or a few) vector loads.
template <typename A, int N, typename T> __device__ __forceinline__ void load_vec(const T* p, A (&out)[N]) {
  const Vec<T, N> v = *reinterpret_cast<const Vec<T, N>*>(p);
#pragma unroll
  for (int u = 0; u < N; ++u) out[u] = to_acc<A>(v.x[u]);
}

// ------------------------------------------------------------------------------------------ scores

template <typename T, typename A, int BQ, int BK>
__global__ void __launch_bounds__(kThreads, 1)  // a block an SM: 64 accumulators and their operands, no spills
    additive_scores_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                           const float* __restrict__ a, const float* __restrict__ e,
                           const int32_t* __restrict__ rows, const int32_t* __restrict__ lengths,
                           const uint8_t* __restrict__ mask, A* __restrict__ s, int64_t Tq, int64_t Tk, int64_t H,
                           int64_t h_fma, bool vec) {
  constexpr int TX = BK / 8, TY = BQ / 8;
  static_assert(TX * TY == kThreads, "one 8 x 8 sub-tile per thread");
  constexpr int kRows = BQ + BK, kPerThread = (kRows + kThreads - 1) / kThreads;  // stage rows a thread loads
  __shared__ alignas(32) A sq[2][kStage][BQ], sk[2][kStage][BK], sv[2][kStage];

  const int64_t n_qb = (Tq + BQ - 1) / BQ, n_kb = (Tk + BK - 1) / BK;
  const RowBlock at_ = row_block(blockIdx.x, n_qb * n_kb);  // a row's key blocks adjacent: they share q
  const int64_t b = at_.row, q0 = at_.block / n_kb * BQ, k0 = at_.block % n_kb * BK;
  const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
  const int64_t n_keys = lengths == nullptr ? Tk : (lengths[b] < 0 ? 0 : (lengths[b] > Tk ? Tk : lengths[b]));
  const int64_t fma_columns = (sizeof(A) == 4 && rows[b] != 0) ? h_fma : 0;

  A acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0;
  A spent = 0;  // Σ v_h over the FMA columns: their tanh is 1 − 2 r

  if (k0 < n_keys) {  // a block past the row's keys only scores -inf
    // A stage: kStage consecutive columns of each of the block's BQ queries and BK keys (one 16-byte load
    // a row in 16-bit types), written to shared memory transposed, a column's rows contiguous.
    A staged[kPerThread][kStage], rv = 0;
    auto fetch = [&](int64_t h0) {
#pragma unroll
      for (int p = 0; p < kPerThread; ++p) {
        const int row = threadIdx.x + p * kThreads;
        if (row >= kRows) continue;
        const bool is_q = row < BQ;
        const int64_t T_ = is_q ? Tq : Tk, idx = is_q ? q0 + row : k0 + row - BQ;
        if (h0 < fma_columns) {
          if (idx < T_) {
            load_vec(((is_q ? a : e) + (b * T_ + idx) * h_fma + h0), staged[p]);
          } else {
#pragma unroll
            for (int u = 0; u < kStage; ++u) staged[p][u] = 1;
          }
        } else if (idx < T_ && vec && h0 + kStage <= H) {
          load_vec((is_q ? q : k) + (b * T_ + idx) * H + h0, staged[p]);
        } else {
          const T* src = (is_q ? q : k) + (b * T_ + idx) * H;
#pragma unroll
          for (int u = 0; u < kStage; ++u) staged[p][u] = idx < T_ && h0 + u < H ? to_acc<A>(src[h0 + u]) : A(0);
        }
      }
      if (threadIdx.x < kStage) rv = h0 + threadIdx.x < H ? to_acc<A>(v[h0 + threadIdx.x]) : A(0);
    };
    const int64_t stages = (H + kStage - 1) / kStage;
    fetch(0);
    for (int64_t st = 0; st < stages; ++st) {
      const int buf = st & 1;
#pragma unroll
      for (int p = 0; p < kPerThread; ++p) {
        const int row = threadIdx.x + p * kThreads;
        if (row >= kRows) continue;
#pragma unroll
        for (int u = 0; u < kStage; ++u) {  // a warp's rows consecutive: no bank conflicts
          if (row < BQ) {
            sq[buf][u][row] = staged[p][u];
          } else {
            sk[buf][u][row - BQ] = staged[p][u];
          }
        }
      }
      if (threadIdx.x < kStage) sv[buf][threadIdx.x] = rv;
      __syncthreads();  // one barrier a stage: a buffer is rewritten two stages on, after every thread's next barrier
      const bool fma_stage = st * kStage < fma_columns;
      if (st + 1 < stages) fetch((st + 1) * kStage);
#pragma unroll 2
      for (int hh = 0; hh < kStage; ++hh) {  // not fully: the operands of later columns would crowd the registers
        A x[8], y[8];
        const Vec<A, 4> x0 = *reinterpret_cast<const Vec<A, 4>*>(&sq[buf][hh][ty * 4]);
        const Vec<A, 4> x1 = *reinterpret_cast<const Vec<A, 4>*>(&sq[buf][hh][BQ / 2 + ty * 4]);
        const Vec<A, 4> y0 = *reinterpret_cast<const Vec<A, 4>*>(&sk[buf][hh][tx * 4]);
        const Vec<A, 4> y1 = *reinterpret_cast<const Vec<A, 4>*>(&sk[buf][hh][BK / 2 + tx * 4]);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          x[u] = x0.x[u], x[u + 4] = x1.x[u];
          y[u] = y0.x[u], y[u + 4] = y1.x[u];
        }
        const A w = sv[buf][hh];
        if constexpr (sizeof(A) == 4) {
          if (fma_stage) {
            const float w2 = -2.0f * w;
            spent += w;
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
              for (int j = 0; j < 8; ++j)
                acc[i][j] = __fmaf_rn(w2, reciprocal<kSteps<T>>(__fmaf_rn(x[i], y[j], 1.0f)), acc[i][j]);
            continue;
          }
        }
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] += w * tanh_unit<T, A>(x[i] + y[j]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int64_t qi = q0 + (i < 4 ? ty * 4 + i : BQ / 2 + ty * 4 + i - 4);
    if (qi >= Tq) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t kj = k0 + (j < 4 ? tx * 4 + j : BK / 2 + tx * 4 + j - 4);
      if (kj >= Tk) continue;
      const bool kept = kj < n_keys && (mask == nullptr || mask[b * Tk + kj] == 0);
      s[(b * Tq + qi) * Tk + kj] = kept ? acc[i][j] + spent : A(-INFINITY);
    }
  }
}

// ------------------------------------------------------------------------------------------ gradient

// One chunk's elements: G and F (this chunk's keys) accumulate dS t², W accumulates dS t.
template <typename T, typename A, int KC, bool FMA>
__device__ __forceinline__ void gradient_chunk(const A (&x)[kQW][2], const A (*sds)[kGQ], const A (*sk)[kGH],
                                               A (&g)[kQW][2], A (&f)[KC][2], A (&w)[2]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < KC; ++kk) {
    const Vec<A, 4> d0 = *reinterpret_cast<const Vec<A, 4>*>(&sds[kk][warp * kQW]);
    const Vec<A, 4> d1 = *reinterpret_cast<const Vec<A, 4>*>(&sds[kk][warp * kQW + 4]);
    const Vec<A, 2> kv = *reinterpret_cast<const Vec<A, 2>*>(&sk[kk][lane * 2]);
#pragma unroll
    for (int i = 0; i < kQW; ++i) {
      const A d = i < 4 ? d0.x[i] : d1.x[i - 4];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        A t;
        if constexpr (FMA) {
          t = __fmaf_rn(-2.0f, reciprocal<kSteps<T>>(__fmaf_rn(x[i][u], kv.x[u], 1.0f)), 1.0f);
        } else {
          t = tanh_unit<T, A>(x[i][u] + kv.x[u]);
        }
        const A dt = d * t;
        g[i][u] = fma(dt, t, g[i][u]);
        f[kk][u] = fma(dt, t, f[kk][u]);
        w[u] += dt;
      }
    }
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, sizeof(A) == 8 ? 1 : 2)
    additive_gradient_kernel(const A* __restrict__ ds, const T* __restrict__ q, const T* __restrict__ k,
                             const T* __restrict__ v, const float* __restrict__ a, const float* __restrict__ e,
                             const int32_t* __restrict__ rows, const A* __restrict__ r, const A* __restrict__ c,
                             T* __restrict__ dq, T* __restrict__ dk, A* __restrict__ g_part, A* __restrict__ f_part,
                             A* __restrict__ w_part, int64_t B, int64_t Tq, int64_t Tk, int64_t H, int64_t h_fma,
                             int64_t keys_per_split, int64_t splits) {
  constexpr int KC = sizeof(A) == 8 ? 8 : 16;
  static_assert(kAdditiveGradientKeys % KC == 0, "a split holds whole chunks");
  __shared__ alignas(32) A sds[KC][kGQ], sk[KC][kGH], sf[kThreads / 32][KC][kGH];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n_qb = (Tq + kGQ - 1) / kGQ, n_hb = (H + kGH - 1) / kGH;
  const RowBlock at_ = row_block(blockIdx.x, splits * n_qb * n_hb);  // a split's h blocks adjacent: they share dS
  const int64_t b = at_.row, hb = at_.block % n_hb, qb = at_.block / n_hb % n_qb, split = at_.block / (n_hb * n_qb);
  const int64_t q0 = qb * kGQ, h0 = hb * kGH;
  const bool fma_path = sizeof(A) == 4 && rows[b] != 0 && h0 < h_fma;

  A x[kQW][2], g[kQW][2], w[2] = {0, 0};
#pragma unroll
  for (int i = 0; i < kQW; ++i)
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int64_t qi = q0 + warp * kQW + i, hi = h0 + lane * 2 + u;
      const bool ok = qi < Tq && hi < H;
      x[i][u] = fma_path ? (ok ? A(a[(b * Tq + qi) * h_fma + hi]) : A(1)) : (ok ? to_acc<A>(q[(b * Tq + qi) * H + hi]) : A(0));
      g[i][u] = 0;
    }
  const int64_t start = split * keys_per_split, end = start + keys_per_split < Tk ? start + keys_per_split : Tk;
  for (int64_t j0 = start; j0 < end; j0 += KC) {
    for (int n = threadIdx.x; n < KC * kGQ; n += kThreads) {  // a query's keys on consecutive threads
      const int i = n / KC, kk = n % KC;
      const int64_t qi = q0 + i, kj = j0 + kk;
      sds[kk][i] = qi < Tq && kj < end ? ds[(b * Tq + qi) * Tk + kj] : A(0);
    }
    for (int n = threadIdx.x; n < KC * kGH; n += kThreads) {
      const int kk = n / kGH, hh = n % kGH;
      const int64_t kj = j0 + kk, hi = h0 + hh;
      const bool ok = kj < end && hi < H;
      sk[kk][hh] = fma_path ? (ok ? A(e[(b * Tk + kj) * h_fma + hi]) : A(1)) : (ok ? to_acc<A>(k[(b * Tk + kj) * H + hi]) : A(0));
    }
    __syncthreads();
    A f[KC][2];
#pragma unroll
    for (int kk = 0; kk < KC; ++kk) f[kk][0] = f[kk][1] = 0;
    if constexpr (sizeof(A) == 4) {
      if (fma_path) {
        gradient_chunk<T, A, KC, true>(x, sds, sk, g, f, w);
      } else {
        gradient_chunk<T, A, KC, false>(x, sds, sk, g, f, w);
      }
    } else {
      gradient_chunk<T, A, KC, false>(x, sds, sk, g, f, w);
    }
#pragma unroll
    for (int kk = 0; kk < KC; ++kk) {
      sf[warp][kk][lane * 2] = f[kk][0];
      sf[warp][kk][lane * 2 + 1] = f[kk][1];
    }
    __syncthreads();  // the chunk's staging is rewritten only after every thread's next barrier
    for (int n = threadIdx.x; n < KC * kGH; n += kThreads) {
      const int kk = n / kGH, hh = n % kGH;
      const int64_t kj = j0 + kk, hi = h0 + hh;
      if (kj >= end || hi >= H) continue;
      A sum = 0;
#pragma unroll
      for (int p = 0; p < kThreads / 32; ++p) sum += sf[p][kk][hh];
      if (n_qb == 1) {
        store_from(dk + (b * Tk + kj) * H + hi, to_acc<A>(v[hi]) * (c[b * Tk + kj] - sum));
      } else {
        f_part[((qb * B + b) * Tk + kj) * H + hi] = sum;
      }
    }
  }
  __syncthreads();  // sf is reused for dv's partial sums
  sf[warp][0][lane * 2] = w[0];
  sf[warp][0][lane * 2 + 1] = w[1];
  __syncthreads();
  if (threadIdx.x < kGH && h0 + threadIdx.x < H) {
    A sum = 0;
#pragma unroll
    for (int p = 0; p < kThreads / 32; ++p) sum += sf[p][0][threadIdx.x];
    w_part[((b * n_qb + qb) * splits + split) * H + h0 + threadIdx.x] = sum;
  }
#pragma unroll
  for (int i = 0; i < kQW; ++i)
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int64_t qi = q0 + warp * kQW + i, hi = h0 + lane * 2 + u;
      if (qi >= Tq || hi >= H) continue;
      if (splits == 1) {
        store_from(dq + (b * Tq + qi) * H + hi, to_acc<A>(v[hi]) * (r[b * Tq + qi] - g[i][u]));
      } else {
        g_part[((split * B + b) * Tq + qi) * H + hi] = g[i][u];
      }
    }
}

template <typename Kernel, typename... Args>
cudaError_t launch(Kernel kernel, int64_t rows, int64_t blocks_per_row, cudaStream_t stream, Args... args) {
  if (rows == 0 || blocks_per_row == 0) return cudaSuccess;
  const int64_t n = flat_grid(rows, blocks_per_row);
  if (n == 0) return cudaErrorInvalidConfiguration;  // more blocks than one launch takes
  kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace

int64_t additive_score_tile_queries(int tile) { return tile == 0 ? 128 : 64; }
int64_t additive_score_tile_keys(int tile) { return tile == 0 ? 128 : 256; }

template <typename T, typename A>
cudaError_t additive_scores(const T* q, const T* k, const T* v, const float* a, const float* e, const int32_t* rows,
                            const int32_t* lengths, const uint8_t* mask, A* s, int64_t B, int64_t Tq, int64_t Tk,
                            int64_t H, int64_t h_fma, int tile, cudaStream_t stream) {
  if (Tq == 0 || Tk == 0) return cudaSuccess;
  if (tile < 0 || tile >= kAdditiveScoreTiles || h_fma % kStage) return cudaErrorInvalidValue;
  const int64_t BQ = additive_score_tile_queries(tile), BK = additive_score_tile_keys(tile);
  const int64_t blocks = (Tq + BQ - 1) / BQ * ((Tk + BK - 1) / BK);
  // whole 16-byte rows of kStage columns: H a multiple of kStage, the rows' starts aligned with it
  const bool vec = H % kStage == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0 && reinterpret_cast<uintptr_t>(k) % 16 == 0;
  if (tile == 0) {
    return launch(additive_scores_kernel<T, A, 128, 128>, B, blocks, stream, q, k, v, a, e, rows, lengths, mask, s, Tq,
                  Tk, H, h_fma, vec);
  }
  return launch(additive_scores_kernel<T, A, 64, 256>, B, blocks, stream, q, k, v, a, e, rows, lengths, mask, s, Tq,
                Tk, H, h_fma, vec);
}

template <typename T, typename A>
cudaError_t additive_gradient_pass(const A* ds, const T* q, const T* k, const T* v, const float* a, const float* b,
                                   const int32_t* rows, const A* r, const A* c, T* dq, T* dk, A* g_part, A* f_part,
                                   A* w_part, int64_t B, int64_t Tq, int64_t Tk, int64_t H, int64_t h_fma,
                                   int64_t keys_per_split, int64_t splits, cudaStream_t stream) {
  if (Tq == 0 || H == 0) return cudaSuccess;
  if (h_fma % kAdditiveFmaColumns || keys_per_split % kAdditiveGradientKeys || splits < 1) return cudaErrorInvalidValue;
  const int64_t blocks = splits * ((Tq + kGQ - 1) / kGQ) * ((H + kGH - 1) / kGH);
  return launch(additive_gradient_kernel<T, A>, B, blocks, stream, ds, q, k, v, a, b, rows, r, c, dq, dk, g_part,
                f_part, w_part, B, Tq, Tk, H, h_fma, keys_per_split, splits);
}

#define FASTSEQ_INSTANTIATE(T, A)                                                                                     \
  template cudaError_t additive_scores<T, A>(const T*, const T*, const T*, const float*, const float*, const int32_t*, \
                                             const int32_t*, const uint8_t*, A*, int64_t, int64_t, int64_t, int64_t,  \
                                             int64_t, int, cudaStream_t);                                             \
  template cudaError_t additive_gradient_pass<T, A>(const A*, const T*, const T*, const T*, const float*,             \
                                                    const float*, const int32_t*, const A*, const A*, T*, T*, A*, A*, \
                                                    A*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,         \
                                                    int64_t, cudaStream_t);
FASTSEQ_INSTANTIATE(float, float)
FASTSEQ_INSTANTIATE(__half, float)
FASTSEQ_INSTANTIATE(__nv_bfloat16, float)
FASTSEQ_INSTANTIATE(double, double)
#undef FASTSEQ_INSTANTIATE

}  // namespace kernels
}  // namespace fastseq
