// Fused LSTM cell, forward and backward: one thread per (row, unit), gates read once, the
// activations recomputed in the backward rather than stored.
#include "common.cuh"
#include "lstm_cell.h"

namespace fastseq {
namespace kernels {
namespace {

constexpr int kThreads = 256;

// The four gate activations of unit j of one row, from its pre-activations z = gates + row*4H + j.
template <typename A> struct Gates { A i, f, g, o; };

template <typename A, typename T>
__device__ __forceinline__ Gates<A> activate(const T* z, int64_t hidden) {
  return {sigmoid(load_as<A>(z)), sigmoid(load_as<A>(z + hidden)), tanh_(load_as<A>(z + 2 * hidden)),
          sigmoid(load_as<A>(z + 3 * hidden))};
}

template <typename T, typename C>
__global__ void __launch_bounds__(kThreads) lstm_cell_forward_kernel(const T* __restrict__ gates,
                                                                     const C* __restrict__ c_prev, T* __restrict__ h,
                                                                     C* __restrict__ c, int64_t rows, int64_t hidden) {
  using A = acc_t<T>;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= rows * hidden) return;
  const int64_t r = n / hidden, j = n - r * hidden;
  const Gates<A> a = activate<A>(gates + r * 4 * hidden + j, hidden);
  const A c_new = a.f * load_as<A>(c_prev + n) + a.i * a.g;
  store_from(c + n, c_new);
  store_from(h + n, a.o * tanh_(c_new));
}

template <typename T, typename C>
__global__ void __launch_bounds__(kThreads)
    lstm_cell_backward_kernel(const T* __restrict__ grad_h, const C* grad_c, const T* __restrict__ gates,
                              const C* __restrict__ c_prev, T* __restrict__ grad_gates, C* grad_c_prev, int64_t rows,
                              int64_t hidden) {
  using A = acc_t<T>;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= rows * hidden) return;
  const int64_t r = n / hidden, j = n - r * hidden;
  const auto [i, f, g, o] = activate<A>(gates + r * 4 * hidden + j, hidden);
  const A cp = load_as<A>(c_prev + n);
  const A tc = tanh_(f * cp + i * g);
  const A dh = grad_h ? load_as<A>(grad_h + n) : A(0);
  const A dc = (grad_c ? load_as<A>(grad_c + n) : A(0)) + dh * o * (A(1) - tc * tc);
  T* dz = grad_gates + r * 4 * hidden + j;
  store_from(dz, dc * g * i * (A(1) - i));
  store_from(dz + hidden, dc * cp * f * (A(1) - f));
  store_from(dz + 2 * hidden, dc * i * (A(1) - g * g));
  store_from(dz + 3 * hidden, dh * tc * o * (A(1) - o));
  store_from(grad_c_prev + n, dc * f);
}

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

template <typename T, typename C>
cudaError_t lstm_cell_forward(const T* gates, const C* c_prev, T* h, C* c, int64_t rows, int64_t hidden,
                              cudaStream_t stream) {
  if (rows * hidden == 0) return cudaSuccess;
  lstm_cell_forward_kernel<T, C><<<blocks_for(rows * hidden), kThreads, 0, stream>>>(gates, c_prev, h, c, rows, hidden);
  return cudaGetLastError();
}

template <typename T, typename C>
cudaError_t lstm_cell_backward(const T* grad_h, const C* grad_c, const T* gates, const C* c_prev, T* grad_gates,
                               C* grad_c_prev, int64_t rows, int64_t hidden, cudaStream_t stream) {
  if (rows * hidden == 0) return cudaSuccess;
  lstm_cell_backward_kernel<T, C><<<blocks_for(rows * hidden), kThreads, 0, stream>>>(
      grad_h, grad_c, gates, c_prev, grad_gates, grad_c_prev, rows, hidden);
  return cudaGetLastError();
}

#define FASTSEQ_INSTANTIATE(T, C)                                                                          \
  template cudaError_t lstm_cell_forward<T, C>(const T*, const C*, T*, C*, int64_t, int64_t, cudaStream_t); \
  template cudaError_t lstm_cell_backward<T, C>(const T*, const C*, const T*, const C*, T*, C*, int64_t, int64_t, \
                                                cudaStream_t);
FASTSEQ_INSTANTIATE(float, float)
FASTSEQ_INSTANTIATE(double, double)
FASTSEQ_INSTANTIATE(__half, __half)
FASTSEQ_INSTANTIATE(__half, float)
FASTSEQ_INSTANTIATE(__nv_bfloat16, __nv_bfloat16)
FASTSEQ_INSTANTIATE(__nv_bfloat16, float)
#undef FASTSEQ_INSTANTIATE

}  // namespace kernels
}  // namespace fastseq
