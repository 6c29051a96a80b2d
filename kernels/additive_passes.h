// The two tanh passes of additive attention (fastseq/ops/additive_attention/passes.py): host-callable launchers.
// Torch-free. The softmax and the GEMMs between the passes are the caller's (cuBLAS through ATen).
//
// Scores:   s (B, Tq, Tk) in A = Σ_h v_h tanh(q_ih + k_jh), -inf at keys not kept, from q (B, Tq, H) and
//           k (B, Tk, H); a (B, Tq, h_fma), e (B, Tk, h_fma) float = e^{2q}, e^{2k} of the leading h_fma
//           columns, taken by the rows with rows[b] != 0 (h_fma a multiple of 8).
// Gradient: from dS (B, Tq, Tk) in A (zero at keys not kept), q (B, Tq, H), k (B, Tk, H) (padded keys
//           zeroed), r = Σ_j dS and c = Σ_i dS: dq = v (r − Σ_j dS t²) and dk = v (c − Σ_i dS t²) in T, and
//           w_part, the partial sums of dv = Σ dS t, (B, query blocks, key splits, H) in A; a (B, Tq, h_fma),
//           b (B, Tk, h_fma) float as above, h_fma a multiple of kAdditiveFmaColumns. Where the keys are split
//           (queries blocked), g_part (splits, B, Tq, H) (f_part (query blocks, B, Tk, H)) holds the sums and
//           the caller finishes dq (dk).
// lengths (B) int32 or null; mask (B, Tk) uint8, nonzero = padded, or null. Instantiated for
// T = float, __half, __nv_bfloat16 (A = float) and double (A = double).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastseq {
namespace kernels {

constexpr int kAdditiveScoreTiles = 2;        // (queries, keys) per block: 0 -> 128 x 128, 1 -> 64 x 256
constexpr int64_t kAdditiveFmaColumns = 64;   // h_fma in whole h blocks of the gradient pass
constexpr int64_t kAdditiveGradientQueries = 64;
constexpr int64_t kAdditiveGradientKeys = 16; // keys of a split: a multiple of this

int64_t additive_score_tile_queries(int tile);
int64_t additive_score_tile_keys(int tile);

template <typename T, typename A>
cudaError_t additive_scores(const T* q, const T* k, const T* v, const float* a, const float* e, const int32_t* rows,
                            const int32_t* lengths, const uint8_t* mask, A* s, int64_t B, int64_t Tq, int64_t Tk,
                            int64_t H, int64_t h_fma, int tile, cudaStream_t stream);

template <typename T, typename A>
cudaError_t additive_gradient_pass(const A* ds, const T* q, const T* k, const T* v, const float* a, const float* b,
                                   const int32_t* rows, const A* r, const A* c, T* dq, T* dk, A* g_part, A* f_part,
                                   A* w_part, int64_t B, int64_t Tq, int64_t Tk, int64_t H, int64_t h_fma,
                                   int64_t keys_per_split, int64_t splits, cudaStream_t stream);

}  // namespace kernels
}  // namespace fastseq
