// The fused LSTM cell on at::Tensor, for CPU and (when built with CUDA) CUDA tensors.
// Layouts and semantics are those of kernels/lstm_cell.h; every tensor is contiguous and rows are
// the leading dimension. Writes into the given outputs, so the layer loop can hand it views.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <tuple>

namespace fastseq {

// h = o * tanh(c), c = f * c_prev + i * g from the pre-activations `gates` (rows, 4H).
void lstm_cell_forward_out(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& h,
                           const at::Tensor& c);

// The same on a CPU without allocating, for the layer's time loop: the activations go to `act` (rows, 4H) and
// tanh(c) to `tanh_c` (rows, H); c_prev, c and both workspaces are in the accumulation type.
void lstm_cell_forward_ws(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& h, const at::Tensor& c,
                          const at::Tensor& act, const at::Tensor& tanh_c);

// grad_h or grad_c may be undefined (zeros). grad_c_prev may be the same tensor as grad_c.
void lstm_cell_backward_out(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& gates,
                            const at::Tensor& c_prev, const at::Tensor& grad_gates, const at::Tensor& grad_c_prev);

#ifdef FASTSEQ_WITH_CUDA
void lstm_cell_forward_cuda(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& h,
                            const at::Tensor& c);
void lstm_cell_backward_cuda(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& gates,
                             const at::Tensor& c_prev, const at::Tensor& grad_gates, const at::Tensor& grad_c_prev);
#endif

// The cell as fastseq_ext::lstm_cell and lstm_cell_backward (registered with the layer, lstm_layer.cpp).
std::tuple<at::Tensor, at::Tensor> lstm_cell(const at::Tensor& gates, const at::Tensor& c_prev);
std::tuple<at::Tensor, at::Tensor> lstm_cell_backward(const at::Tensor& grad_h, const at::Tensor& grad_c,
                                                      const at::Tensor& gates, const at::Tensor& c_prev);

// Calls f(T{}, C{}) with T the element type of `gates` and C that of `c` (T itself, or T's
// accumulation type: the layer loop carries the cell state in float for half inputs).
template <typename F>
void dispatch_cell_types(const at::Tensor& gates, const at::Tensor& c, const char* name, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "lstm_cell", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    if (c.scalar_type() == gates.scalar_type()) {
      f(T{}, T{});
    } else {
      TORCH_CHECK(c.scalar_type() == c10::CppTypeToScalarType<A>::value, name, ": cell state must be ",
                  gates.scalar_type(), " or ", c10::CppTypeToScalarType<A>::value, ", got ", c.scalar_type());
      f(T{}, A{});
    }
  });
}

}  // namespace fastseq
