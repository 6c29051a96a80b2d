// The fused LSTM cell: CPU kernels, the per-device dispatch, and the fastseq_ext::lstm_cell_* ops.
#include "lstm_cell.h"

#include <ATen/Parallel.h>

#include <tuple>

#include "checks.h"

namespace fastseq {
namespace {

// Rows per parallel task: enough elementwise work to pay for a task.
int64_t grain(int64_t hidden) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(hidden, 1)); }

// tanh through the logistic function, tanh(x) = 2σ(2x) - 1: ATen's CPU tanh is 5x slower than its sigmoid
// per element (1.3 against 0.24 ns, AVX-512, measured), and the identity costs at most 1.2e-7 in float32.
void tanh_via_sigmoid_(const at::Tensor& t) { t.mul_(2).sigmoid_().mul_(2).sub_(1); }

// The gate activations [σ(z_i) | σ(z_f) | tanh(z_g) | σ(z_o)] in the accumulation type, through ATen's
// vectorised kernels (a scalar expf per element costs several times more than the rest of the cell).
at::Tensor activations(const at::Tensor& gates, at::ScalarType acc) {
  const int64_t H = gates.size(1) / 4;
  at::Tensor act = gates.to(acc, /*non_blocking=*/false, /*copy=*/true);
  act.narrow(1, 0, 2 * H).sigmoid_();
  tanh_via_sigmoid_(act.narrow(1, 2 * H, H));
  act.narrow(1, 3 * H, H).sigmoid_();
  return act;
}

// c = f * c_prev + i * g from the activations, in the accumulation type.
template <typename A, typename C>
at::Tensor cell_state(const at::Tensor& act, const at::Tensor& c_prev) {
  const int64_t rows = act.size(0), H = act.size(1) / 4;
  at::Tensor c = at::empty({rows, H}, act.options());
  const A* a = act.const_data_ptr<A>();
  const C* cp = c_prev.const_data_ptr<C>();
  A* out = c.mutable_data_ptr<A>();
  at::parallel_for(0, rows, grain(H), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const A* z = a + r * 4 * H;
      for (int64_t j = 0; j < H; ++j) out[r * H + j] = z[H + j] * static_cast<A>(cp[r * H + j]) + z[j] * z[2 * H + j];
    }
  });
  return c;
}

template <typename T, typename C>
void cell_forward_cpu(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& h, const at::Tensor& c) {
  using A = at::opmath_type<T>;
  const int64_t rows = gates.size(0), H = c.size(1);
  const at::Tensor act = activations(gates, c10::CppTypeToScalarType<A>::value);
  const at::Tensor c_acc = cell_state<A, C>(act, c_prev);
  const at::Tensor tanh_c = c_acc.clone();
  tanh_via_sigmoid_(tanh_c);
  const A* a = act.const_data_ptr<A>();
  const A* cn = c_acc.const_data_ptr<A>();
  const A* tc = tanh_c.const_data_ptr<A>();
  T* h_out = h.mutable_data_ptr<T>();
  C* c_out = c.mutable_data_ptr<C>();
  at::parallel_for(0, rows, grain(H), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const A* o = a + r * 4 * H + 3 * H;
      for (int64_t j = 0; j < H; ++j) {
        const int64_t n = r * H + j;
        c_out[n] = static_cast<C>(cn[n]);
        h_out[n] = static_cast<T>(o[j] * tc[n]);
      }
    }
  });
}

template <typename T, typename C>
void cell_backward_cpu(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& gates,
                       const at::Tensor& c_prev, const at::Tensor& grad_gates, const at::Tensor& grad_c_prev) {
  using A = at::opmath_type<T>;
  const int64_t rows = gates.size(0), H = c_prev.size(1);
  const at::Tensor act = activations(gates, c10::CppTypeToScalarType<A>::value);
  const at::Tensor tanh_c = cell_state<A, C>(act, c_prev);
  tanh_via_sigmoid_(tanh_c);
  const A* a = act.const_data_ptr<A>();
  const A* tc = tanh_c.const_data_ptr<A>();
  const C* cp = c_prev.const_data_ptr<C>();
  const T* dh_in = grad_h.defined() ? grad_h.const_data_ptr<T>() : nullptr;
  const C* dc_in = grad_c.defined() ? grad_c.const_data_ptr<C>() : nullptr;
  T* dz_out = grad_gates.mutable_data_ptr<T>();
  C* dc_out = grad_c_prev.mutable_data_ptr<C>();
  at::parallel_for(0, rows, grain(H), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const A* z = a + r * 4 * H;
      T* dz = dz_out + r * 4 * H;
      for (int64_t j = 0; j < H; ++j) {
        const int64_t n = r * H + j;
        const A i = z[j], f = z[H + j], g = z[2 * H + j], o = z[3 * H + j], t = tc[n];
        const A dh = dh_in ? static_cast<A>(dh_in[n]) : A(0);
        const A dc = (dc_in ? static_cast<A>(dc_in[n]) : A(0)) + dh * o * (A(1) - t * t);
        dz[j] = static_cast<T>(dc * g * i * (A(1) - i));
        dz[H + j] = static_cast<T>(dc * static_cast<A>(cp[n]) * f * (A(1) - f));
        dz[2 * H + j] = static_cast<T>(dc * i * (A(1) - g * g));
        dz[3 * H + j] = static_cast<T>(dh * t * o * (A(1) - o));
        dc_out[n] = static_cast<C>(dc * f);
      }
    }
  });
}

// The layer loop's cell forward: no allocation. `act` (rows, 4H) takes the activations and `tanh_c`
// (rows, H) tanh(c), both in the accumulation type A, as do c_prev and c (the loop's cell state).
template <typename T>
void cell_forward_ws_cpu(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& h, const at::Tensor& c,
                         const at::Tensor& act, const at::Tensor& tanh_c) {
  using A = at::opmath_type<T>;
  const int64_t rows = gates.size(0), H = c.size(1);
  // act = [σ(z_i) | σ(z_f) | σ(2 z_g) | σ(z_o)]: g = tanh(z_g) = 2σ(2 z_g) - 1 is finished in the loop below,
  // and tanh(c) likewise (see tanh_via_sigmoid_)
  act.copy_(gates);
  act.narrow(1, 2 * H, H).mul_(2);
  act.sigmoid_();
  const A* a = act.const_data_ptr<A>();
  const A* cp = c_prev.const_data_ptr<A>();
  A* cn = c.mutable_data_ptr<A>();
  A* tc = tanh_c.mutable_data_ptr<A>();
  at::parallel_for(0, rows, grain(H), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const A* z = a + r * 4 * H;
      for (int64_t j = 0; j < H; ++j) {
        const A value = z[H + j] * cp[r * H + j] + z[j] * (A(2) * z[2 * H + j] - A(1));
        cn[r * H + j] = value;
        tc[r * H + j] = A(2) * value;
      }
    }
  });
  tanh_c.sigmoid_();
  T* h_out = h.mutable_data_ptr<T>();
  at::parallel_for(0, rows, grain(H), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const A* o = a + r * 4 * H + 3 * H;
      for (int64_t j = 0; j < H; ++j) h_out[r * H + j] = static_cast<T>(o[j] * (A(2) * tc[r * H + j] - A(1)));
    }
  });
}

}  // namespace

void lstm_cell_forward_ws(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& h, const at::Tensor& c,
                          const at::Tensor& act, const at::Tensor& tanh_c) {
  check_contiguous("lstm_cell", {{"gates", gates}, {"c_prev", c_prev}, {"h", h}, {"c", c}, {"act", act},
                                 {"tanh_c", tanh_c}});
  TORCH_CHECK(gates.is_cpu(), "lstm_cell_forward_ws: a CPU kernel, got ", gates.device(), " tensors");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "lstm_cell_forward_ws", [&] {
    const auto acc = c10::CppTypeToScalarType<at::opmath_type<scalar_t>>::value;
    for (const at::Tensor* t : {&c_prev, &c, &act, &tanh_c}) {
      TORCH_CHECK(t->scalar_type() == acc, "lstm_cell_forward_ws: the state and workspace must be ", acc);
    }
    cell_forward_ws_cpu<scalar_t>(gates, c_prev, h, c, act, tanh_c);
  });
}

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
    cell_forward_cpu<T, C>(gates, c_prev, h, c);
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
    cell_backward_cpu<T, C>(grad_h, grad_c, gates, c_prev, grad_gates, grad_c_prev);
  });
}

std::tuple<at::Tensor, at::Tensor> lstm_cell(const at::Tensor& gates, const at::Tensor& c_prev) {
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
