// The fused LSTM cell: CPU kernels, the per-device dispatch, and the fastseq_ext::lstm_cell_* ops.
#include "lstm_cell.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <tuple>

#include "checks.h"
#include "ops.h"

namespace fastseq {
namespace {

template <typename A> inline A sigmoid(A x) { return A(1) / (A(1) + std::exp(-x)); }

// Rows per parallel task: enough elementwise work to pay for a task.
int64_t grain(int64_t hidden) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(hidden, 1)); }

template <typename T, typename C>
void cell_forward_cpu(const T* gates, const C* c_prev, T* h, C* c, int64_t rows, int64_t H) {
  using A = at::opmath_type<T>;
  at::parallel_for(0, rows, grain(H), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* z = gates + r * 4 * H;
      for (int64_t j = 0; j < H; ++j) {
        const A i = sigmoid<A>(z[j]), f = sigmoid<A>(z[H + j]);
        const A g = std::tanh(static_cast<A>(z[2 * H + j])), o = sigmoid<A>(z[3 * H + j]);
        const A cn = f * static_cast<A>(c_prev[r * H + j]) + i * g;
        c[r * H + j] = static_cast<C>(cn);
        h[r * H + j] = static_cast<T>(o * std::tanh(cn));
      }
    }
  });
}

template <typename T, typename C>
void cell_backward_cpu(const T* grad_h, const C* grad_c, const T* gates, const C* c_prev, T* grad_gates,
                       C* grad_c_prev, int64_t rows, int64_t H) {
  using A = at::opmath_type<T>;
  at::parallel_for(0, rows, grain(H), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* z = gates + r * 4 * H;
      T* dz = grad_gates + r * 4 * H;
      for (int64_t j = 0; j < H; ++j) {
        const int64_t n = r * H + j;
        const A i = sigmoid<A>(z[j]), f = sigmoid<A>(z[H + j]);
        const A g = std::tanh(static_cast<A>(z[2 * H + j])), o = sigmoid<A>(z[3 * H + j]);
        const A cp = static_cast<A>(c_prev[n]);
        const A tc = std::tanh(f * cp + i * g);
        const A dh = grad_h ? static_cast<A>(grad_h[n]) : A(0);
        const A dc = (grad_c ? static_cast<A>(grad_c[n]) : A(0)) + dh * o * (A(1) - tc * tc);
        dz[j] = static_cast<T>(dc * g * i * (A(1) - i));
        dz[H + j] = static_cast<T>(dc * cp * f * (A(1) - f));
        dz[2 * H + j] = static_cast<T>(dc * i * (A(1) - g * g));
        dz[3 * H + j] = static_cast<T>(dh * tc * o * (A(1) - o));
        grad_c_prev[n] = static_cast<C>(dc * f);
      }
    }
  });
}

template <typename X> const X* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<X>() : nullptr; }

}  // namespace

void lstm_cell_forward_out(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& h,
                           const at::Tensor& c) {
  check_contiguous("lstm_cell", {{"gates", gates}, {"c_prev", c_prev}, {"h", h}, {"c", c}});
#ifdef FASTSEQ_WITH_CUDA
  if (gates.is_cuda()) return lstm_cell_forward_cuda(gates, c_prev, h, c);
#endif
  TORCH_CHECK(gates.is_cpu(), "lstm_cell: fastseq._C has no kernel for ", gates.device(), " tensors");
  dispatch_cell_types(gates, c, "lstm_cell_forward", [&](auto t, auto s) {
    using T = decltype(t);
    using C = decltype(s);
    cell_forward_cpu<T, C>(gates.const_data_ptr<T>(), c_prev.const_data_ptr<C>(), h.mutable_data_ptr<T>(),
                           c.mutable_data_ptr<C>(), gates.size(0), c.size(1));
  });
}

void lstm_cell_backward_out(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& gates,
                            const at::Tensor& c_prev, const at::Tensor& grad_gates, const at::Tensor& grad_c_prev) {
  check_contiguous("lstm_cell_backward", {{"grad_h", grad_h}, {"grad_c", grad_c}, {"gates", gates},
                                          {"c_prev", c_prev}, {"grad_gates", grad_gates}, {"grad_c_prev", grad_c_prev}});
#ifdef FASTSEQ_WITH_CUDA
  if (gates.is_cuda()) return lstm_cell_backward_cuda(grad_h, grad_c, gates, c_prev, grad_gates, grad_c_prev);
#endif
  TORCH_CHECK(gates.is_cpu(), "lstm_cell_backward: fastseq._C has no kernel for ", gates.device(), " tensors");
  dispatch_cell_types(gates, c_prev, "lstm_cell_backward", [&](auto t, auto s) {
    using T = decltype(t);
    using C = decltype(s);
    cell_backward_cpu<T, C>(ptr_or_null<T>(grad_h), ptr_or_null<C>(grad_c), gates.const_data_ptr<T>(),
                            c_prev.const_data_ptr<C>(), grad_gates.mutable_data_ptr<T>(),
                            grad_c_prev.mutable_data_ptr<C>(), gates.size(0), c_prev.size(1));
  });
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_forward(const at::Tensor& gates, const at::Tensor& c_prev) {
  auto h = at::empty_like(c_prev, gates.options());
  auto c = at::empty_like(c_prev);
  lstm_cell_forward_out(gates, c_prev, h, c);
  return {h, c};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_backward(const at::Tensor& grad_h, const at::Tensor& grad_c,
                                                      const at::Tensor& gates, const at::Tensor& c_prev) {
  auto grad_gates = at::empty_like(gates);
  auto grad_c_prev = at::empty_like(c_prev);
  lstm_cell_backward_out(grad_h, grad_c, gates, c_prev, grad_gates, grad_c_prev);
  return {grad_gates, grad_c_prev};
}

}  // namespace fastseq
