// Launchers from at::Tensor into the CUDA cell kernels of kernels/lstm_cell.cu. Host code only.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../kernels/lstm_cell.h"
#include "cuda_types.h"
#include "lstm_cell.h"

namespace fastseq {

void lstm_cell_forward_cuda(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& h,
                            const at::Tensor& c) {
  const c10::cuda::CUDAGuard guard(gates.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_cell_types(gates, c, "lstm_cell_forward_cuda", [&](auto t, auto s) {
    using T = decltype(t);
    using C = decltype(s);
    check_launch(kernels::lstm_cell_forward(in<T>(gates), in<C>(c_prev), out<T>(h), out<C>(c), gates.size(0),
                                            c.size(1), stream),
                 "lstm_cell_forward");
  });
}

void lstm_cell_backward_cuda(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& gates,
                             const at::Tensor& c_prev, const at::Tensor& grad_gates, const at::Tensor& grad_c_prev) {
  const c10::cuda::CUDAGuard guard(gates.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_cell_types(gates, c_prev, "lstm_cell_backward_cuda", [&](auto t, auto s) {
    using T = decltype(t);
    using C = decltype(s);
    check_launch(kernels::lstm_cell_backward(in<T>(grad_h), in<C>(grad_c), in<T>(gates), in<C>(c_prev),
                                             out<T>(grad_gates), out<C>(grad_c_prev), gates.size(0),
                                             c_prev.size(1), stream),
                 "lstm_cell_backward");
  });
}

}  // namespace fastseq
