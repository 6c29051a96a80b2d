// One LSTM layer in one direction over a whole sequence, forward and backward, with the time loop in
// C++: the `cpu` backend's layer. GEMMs through ATen (MKL/oneDNN) and the fused cell of lstm_cell.h for the
// pointwise work (the `cuda` backend's layer is the persistent kernel: lstm_persistent_cuda.cpp). The math and the workspace contract are those of
// fastseq/ops/lstm/reference.py; variable lengths (sorted non-increasing) become per-step row counts, so
// inactive rows cost nothing and keep their state untouched.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "lstm_cell.h"

namespace fastseq {
namespace {

using at::Tensor;

// rows[t]: how many (leading) rows are active at step t.
std::vector<int64_t> active_rows(const std::optional<Tensor>& lengths, int64_t T, int64_t B) {
  std::vector<int64_t> rows(T, B);
  if (!lengths.has_value()) return rows;
  TORCH_CHECK(lengths->is_cpu() && lengths->scalar_type() == at::kLong && lengths->numel() == B,
              "lstm_layer: lengths must be an int64 CPU tensor of shape (B,)");
  const auto len = lengths->accessor<int64_t, 1>();
  for (int64_t t = 0; t < T; ++t) {
    int64_t n = 0;
    while (n < B && len[n] > t) ++n;
    rows[t] = n;
  }
  return rows;
}

at::ScalarType acc_type(const Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Multiply-adds of one step's recurrent GEMM below which the time loop runs on the calling thread alone:
// a step that small gains little from a second thread, and on a loaded machine each step's parallel
// region waits for whichever of its threads was descheduled.
constexpr int64_t kSerialStepMacs = int64_t{1} << 20;

// The time loop's intra-op threads: one while alive when the step is small (OpenMP's and MKL's thread
// counts are the calling thread's own, so other threads keep theirs); restored on every exit.
class LoopThreads {
 public:
  LoopThreads(const Tensor& x, int64_t B, int64_t H, int64_t P)
      : saved_(at::get_num_threads()), serial_(x.is_cpu() && saved_ > 1 && B * 4 * H * P < kSerialStepMacs) {
    if (serial_) at::set_num_threads(1);
  }
  ~LoopThreads() {
    if (serial_) at::set_num_threads(saved_);
  }
  LoopThreads(const LoopThreads&) = delete;
  LoopThreads& operator=(const LoopThreads&) = delete;

 private:
  int saved_;
  bool serial_;
};

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& bias, const std::optional<Tensor>& w_hr, const std::optional<Tensor>& lengths,
    bool reverse, bool training) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(0) / 4, P = h0.size(1);
  const auto rows = active_rows(lengths, T, B);
  const auto acc = x.options().dtype(acc_type(x));

  // Input projection of every step in one GEMM; each step then adds W_hh r_{t-1} in place, so this
  // buffer ends up holding exactly the pre-activations the cell saw: the gates workspace.
  const Tensor x2 = x.reshape({T * B, I});
  Tensor gates = (bias.has_value() ? at::addmm(*bias, x2, w_ih.t()) : at::mm(x2, w_ih.t())).view({T, B, 4 * H});
  Tensor y = lengths.has_value() ? at::zeros({T, B, P}, x.options()) : at::empty({T, B, P}, x.options());
  Tensor c_ws = training ? at::empty({T, B, H}, acc) : at::empty({2, B, H}, acc);
  Tensor h_raw = w_hr.has_value() ? at::empty({B, H}, x.options()) : Tensor();
  Tensor h = h0.clone();
  Tensor c_prev = c0.to(acc_type(x)).contiguous();
  // On a CPU the cell runs allocation-free on workspaces made once here; without a projection the
  // recurrent input is the previous step's output rows themselves when every row active now was active
  // then (no lengths, or lengths running forwards), and h keeps only each row's final output.
  const bool cpu = x.is_cpu();
  Tensor act = cpu ? at::empty({B, 4 * H}, acc) : Tensor();
  Tensor tanh_c = cpu ? at::empty({B, H}, acc) : Tensor();
  const bool chain = !w_hr.has_value() && (!lengths.has_value() || !reverse);

  {
    const LoopThreads threads(x, B, H, P);
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const int64_t n = rows[t];
      Tensor c = training ? c_ws[t] : c_ws[s % 2];
      if (n < B) c.narrow(0, n, B - n).copy_(c_prev.narrow(0, n, B - n));  // inactive rows carry their state
      if (n == 0) {
        c_prev = c;
        continue;
      }
      Tensor z = gates[t].narrow(0, 0, n);
      const int64_t before = reverse ? t + 1 : t - 1;  // the step run just before this one
      z.addmm_(chain && s > 0 ? y[before].narrow(0, 0, n) : h.narrow(0, 0, n), w_hh.t());
      Tensor y_t = y[t].narrow(0, 0, n);
      Tensor c_t = c.narrow(0, 0, n);
      Tensor out = w_hr.has_value() ? h_raw.narrow(0, 0, n) : y_t;
      if (cpu) {
        lstm_cell_forward_ws(z, c_prev.narrow(0, 0, n), out, c_t, act.narrow(0, 0, n), tanh_c.narrow(0, 0, n));
      } else {
        lstm_cell_forward_out(z, c_prev.narrow(0, 0, n), out, c_t);
      }
      if (w_hr.has_value()) at::mm_out(y_t, out, w_hr->t());
      // the rows whose last step this is (all of them at the last step); every row each step unless chained
      const int64_t next = s + 1 < T ? rows[reverse ? t - 1 : t + 1] : 0;
      const int64_t keep = chain ? std::min(next, n) : 0;
      if (keep < n) h.narrow(0, keep, n - keep).copy_(y_t.narrow(0, keep, n - keep));
      c_prev = c;
    }
  }
  Tensor c_n = c_prev.to(x.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  if (!training) return {y, h, c_n, at::empty({0}, x.options()), at::empty({0}, acc)};
  return {y, h, c_n, gates, c_ws};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& x, const Tensor& h0,
    const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& w_hr, const std::optional<Tensor>& lengths, bool reverse, const Tensor& y,
    const Tensor& gates, const Tensor& c_ws) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(0) / 4, P = h0.size(1);
  const auto rows = active_rows(lengths, T, B);
  TORCH_CHECK(gates.dim() == 3 && c_ws.dim() == 3,
              "lstm_layer_backward: the forward pass saved no workspace (it ran with training=False)");

  Tensor dh = grad_h_n.clone();
  Tensor dc = grad_c_n.to(acc_type(x), /*non_blocking=*/false, /*copy=*/true);
  Tensor dz = at::zeros({T, B, 4 * H}, x.options());
  Tensor dr = w_hr.has_value() ? at::zeros({T, B, P}, x.options()) : Tensor();
  // h_prev[t]: the recurrent input of step t (rows inactive at t are never read: their dz is zero).
  Tensor h_prev = reverse ? at::cat({y.narrow(0, 1, T - 1), h0.unsqueeze(0)}) : at::cat({h0.unsqueeze(0), y.narrow(0, 0, T - 1)});
  const Tensor c0_acc = c0.to(acc_type(x));

  {
    const LoopThreads threads(x, B, H, P);
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? s : T - 1 - s;
      const int64_t p = reverse ? t + 1 : t - 1;  // the step the forward pass ran just before t
      const bool first = p < 0 || p >= T;
      const int64_t n = rows[t];
      if (n == 0) continue;
      if (!first && rows[p] < n) {  // reverse direction: these rows start at t, from h0
        h_prev[t].narrow(0, rows[p], n - rows[p]).copy_(h0.narrow(0, rows[p], n - rows[p]));
      }
      Tensor dh_t = dh.narrow(0, 0, n);
      dh_t.add_(grad_y[t].narrow(0, 0, n));
      Tensor dh_raw = dh_t;
      if (w_hr.has_value()) {
        dr[t].narrow(0, 0, n).copy_(dh_t);
        dh_raw = at::mm(dh_t, *w_hr);
      }
      Tensor dc_t = dc.narrow(0, 0, n);
      Tensor dz_t = dz[t].narrow(0, 0, n);
      const Tensor c_prev = (first ? c0_acc : c_ws[p]).narrow(0, 0, n);
      lstm_cell_backward_out(dh_raw, dc_t, gates[t].narrow(0, 0, n), c_prev, dz_t, dc_t);
      at::mm_out(dh_t, dz_t, w_hh);
    }
  }

  // Weight gradients: one GEMM each over all steps, after the loop.
  const Tensor dz2 = dz.view({T * B, 4 * H});
  Tensor grad_x = at::mm(dz2, w_ih).view({T, B, I});
  Tensor grad_w_ih = at::mm(dz2.t(), x.reshape({T * B, I}));
  Tensor grad_w_hh = at::mm(dz2.t(), h_prev.view({T * B, P}));
  Tensor grad_bias = bias.has_value() ? at::sum(dz2, {0}, false, acc_type(x)).to(bias->scalar_type())
                                      : at::empty({0}, x.options());
  Tensor grad_w_hr = at::empty({0}, x.options());
  if (w_hr.has_value()) {
    const Tensor o = at::sigmoid(gates.narrow(2, 3 * H, H).to(acc_type(x)));
    const Tensor h_raw = (o * at::tanh(c_ws)).to(x.scalar_type());
    grad_w_hr = at::mm(dr.view({T * B, P}).t(), h_raw.view({T * B, H}));
  }
  return {grad_x, dh, dc.to(c0.scalar_type()), grad_w_ih, grad_w_hh, grad_bias, grad_w_hr};
}

}  // namespace fastseq

// The schemas of fastseq_ext::* are declared once, in fastseq/ops (registry.py); these are the kernels. The
// cell is device-generic; a whole layer on CUDA tensors is the persistent kernel's (lstm_persistent_cuda.cpp).
TORCH_LIBRARY_IMPL(fastseq_ext, CPU, m) {
  m.impl("lstm_cell", &fastseq::lstm_cell);
  m.impl("lstm_cell_backward", &fastseq::lstm_cell_backward);
  m.impl("lstm_layer", &fastseq::lstm_layer);
  m.impl("lstm_layer_backward", &fastseq::lstm_layer_backward);
}
#ifdef FASTSEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(fastseq_ext, CUDA, m) {
  m.impl("lstm_cell", &fastseq::lstm_cell);
  m.impl("lstm_cell_backward", &fastseq::lstm_cell_backward);
}
#endif
