// Fused LSTM cell kernels: host-callable launchers. Torch-free.
//
// gates: (rows, 4*hidden) pre-activations laid out [i | f | g | o], row-major and contiguous.
// c_prev, c, grad_c, grad_c_prev: (rows, hidden) cell states, in the state type C (float or double
// where state is carried over time; the element type T for a lone cell). h, grad_h: (rows, hidden), T.
// Arithmetic is in float (double for double). grad_h or grad_c may be null: read as zeros.
// grad_c_prev may alias grad_c (each element is read before it is written, by the same thread).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastseq {
namespace kernels {

template <typename T, typename C>
cudaError_t lstm_cell_forward(const T* gates, const C* c_prev, T* h, C* c, int64_t rows, int64_t hidden,
                              cudaStream_t stream);

template <typename T, typename C>
cudaError_t lstm_cell_backward(const T* grad_h, const C* grad_c, const T* gates, const C* c_prev, T* grad_gates,
                               C* grad_c_prev, int64_t rows, int64_t hidden, cudaStream_t stream);

}  // namespace kernels
}  // namespace fastseq
