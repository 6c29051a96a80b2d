// fastseq_ext::lstm_layer and lstm_layer_backward on CUDA tensors: the persistent kernel of
// kernels/lstm_persistent.cu (one launch for the whole sequence, W_hh in registers), with the input
// projection before it and the weight gradients after it as GEMMs. What the kernel cannot serve
// (kernels/lstm_persistent_plan.h) is refused by name before anything runs; the Python op asks the same
// plan first and lets the next backend serve such calls. Semantics: fastseq/ops/lstm/reference.py.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

#include "../kernels/lstm_persistent.h"
#include "cuda_types.h"

namespace fastseq {
namespace {

constexpr const char* kOp = "lstm_layer (backend 'cuda')";

kernels::LstmDeviceLimits device_limits(int device) {
  kernels::LstmDeviceLimits limits;
  int optin = 0;
  check_launch(cudaDeviceGetAttribute(&limits.multiprocessors, cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute");
  check_launch(cudaDeviceGetAttribute(&limits.major, cudaDevAttrComputeCapabilityMajor, device),
               "cudaDeviceGetAttribute");
  check_launch(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
               "cudaDeviceGetAttribute");
  limits.max_cluster = limits.major >= 9 ? 16 : 1;
  limits.shared_per_block = optin;
  return limits;
}

struct Launch {
  kernels::LstmPersistentPlan plan;
  kernels::LstmElement element;
  kernels::LstmExchange exchange;
  int launched = 0;
};

// The plan for this call and how the device takes it; refuses by name what the kernel cannot serve.
Launch plan(const at::Tensor& x, int64_t H, int64_t P, bool backward) {
  Launch out;
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, kOp,
              ": the persistent kernel serves bfloat16 and float16, got ", x.scalar_type());
  out.element = x.scalar_type() == at::kBFloat16 ? kernels::LstmElement::kBFloat16 : kernels::LstmElement::kFloat16;
  out.plan = kernels::plan_lstm_persistent(static_cast<int>(H), static_cast<int>(P), static_cast<int>(x.size(1)), 2,
                                           backward, device_limits(x.get_device()));
  TORCH_CHECK(out.plan.refusal == nullptr, kOp, ": ", out.plan.refusal);
  const char* forced = std::getenv("FASTSEQ_LSTM_EXCHANGE");  // "grid": the global-memory exchange (tests)
  if (forced != nullptr && std::string(forced) == "grid") out.plan.exchange = kernels::LstmExchange::kGrid;
  const cudaError_t err =
      kernels::lstm_persistent_launch_shape(out.plan, out.element, backward, &out.exchange, &out.launched);
  TORCH_CHECK(err == cudaSuccess, kOp, ": the device cannot hold one group of ", out.plan.ctas,
              " blocks at once (", cudaGetErrorString(err), ")");
  return out;
}

at::Tensor device_lengths(const std::optional<at::Tensor>& lengths, const at::Tensor& x) {
  if (!lengths.has_value()) return at::Tensor();
  TORCH_CHECK(lengths->is_cpu() && lengths->scalar_type() == at::kLong && lengths->numel() == x.size(1), kOp,
              ": lengths must be an int64 CPU tensor of shape (B,)");
  return lengths->to(x.options().dtype(at::kInt), /*non_blocking=*/true);
}

// h_prev[t]: the h step t consumed (the previous output, h0 at a row's first step: in reverse, a row starts
// at its own last position).
at::Tensor previous_outputs(const at::Tensor& y, const at::Tensor& h0, const std::optional<at::Tensor>& lengths,
                            bool reverse) {
  const int64_t T = y.size(0), B = y.size(1);
  at::Tensor h_prev = reverse ? at::cat({y.narrow(0, 1, T - 1), h0.unsqueeze(0)})
                              : at::cat({h0.unsqueeze(0), y.narrow(0, 0, T - 1)});
  if (lengths.has_value() && reverse) {
    const auto len = lengths->accessor<int64_t, 1>();
    for (int64_t b = 0; b < B; ++b) {
      if (len[b] >= 1 && len[b] < T) h_prev[len[b] - 1][b].copy_(h0[b]);
    }
  }
  return h_prev;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_persistent(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& lengths,
    bool reverse, bool training) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(0) / 4;
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : H;
  const c10::cuda::CUDAGuard guard(x.device());
  const Launch run = plan(x, H, P, /*backward=*/false);
  const at::Tensor x2 = x.reshape({T * B, I});
  const at::Tensor zx = (bias.has_value() ? at::addmm(*bias, x2, w_ih.t()) : at::mm(x2, w_ih.t())).contiguous();
  const at::Tensor w = w_hh.contiguous(), h0c = h0.contiguous(), c0c = c0.to(x.scalar_type()).contiguous();
  const at::Tensor len = device_lengths(lengths, x);
  at::Tensor y = at::empty({T, B, H}, x.options()), h_n = at::empty({B, H}, x.options());
  at::Tensor c_n = at::empty({B, H}, x.options());
  at::Tensor gates_ws = training ? at::empty({T, B, 4 * H}, x.options()) : at::empty({0}, x.options());
  at::Tensor c_ws = at::empty({training ? T : 0, B, H}, x.options().dtype(at::kFloat));
  const bool grid = run.exchange == kernels::LstmExchange::kGrid;
  at::Tensor exchange = at::empty({grid ? int64_t{run.launched} * 2 * H * run.plan.batch_tile : 0}, x.options());
  at::Tensor flags = at::zeros({grid ? int64_t{run.launched} * run.plan.ctas : 0}, x.options().dtype(at::kInt));

  kernels::LstmPersistentForward args;
  args.zx = zx.const_data_ptr();
  args.w_hh = w.const_data_ptr();
  args.h0 = h0c.const_data_ptr();
  args.c0 = c0c.const_data_ptr();
  args.lengths = len.defined() ? len.const_data_ptr<int32_t>() : nullptr;
  args.y = y.mutable_data_ptr();
  args.h_n = h_n.mutable_data_ptr();
  args.c_n = c_n.mutable_data_ptr();
  args.gates_ws = training ? gates_ws.mutable_data_ptr() : nullptr;
  args.c_ws = training ? c_ws.mutable_data_ptr<float>() : nullptr;
  args.exchange = grid ? exchange.mutable_data_ptr() : nullptr;
  args.flags = grid ? reinterpret_cast<uint32_t*>(flags.mutable_data_ptr<int32_t>()) : nullptr;
  args.T = static_cast<int>(T);
  args.B = static_cast<int>(B);
  args.reverse = reverse;
  check_launch(kernels::lstm_persistent_forward(args, run.plan, run.element, run.exchange, run.launched,
                                                c10::cuda::getCurrentCUDAStream().stream()),
               "lstm_persistent_forward");
  return {y, h_n, c_n, gates_ws, c_ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_backward_persistent(const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                               const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& lengths,
                               bool reverse, const at::Tensor& y, const at::Tensor& gates, const at::Tensor& c_ws) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(0) / 4;
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : H;
  TORCH_CHECK(gates.dim() == 3 && c_ws.dim() == 3 && c_ws.scalar_type() == at::kFloat, kOp,
              ": the forward pass saved no workspace (it ran with training=False)");
  const c10::cuda::CUDAGuard guard(x.device());
  const Launch run = plan(x, H, P, /*backward=*/true);
  const at::Tensor gy = grad_y.contiguous(), gh = grad_h_n.to(x.scalar_type()).contiguous();
  const at::Tensor gc = grad_c_n.to(x.scalar_type()).contiguous();
  const at::Tensor w = w_hh.contiguous(), c0c = c0.to(x.scalar_type()).contiguous();
  const at::Tensor len = device_lengths(lengths, x);
  at::Tensor dz = at::empty({T, B, 4 * H}, x.options());
  at::Tensor grad_h0 = at::empty({B, H}, x.options()), grad_c0 = at::empty({B, H}, x.options());
  const bool grid = run.exchange == kernels::LstmExchange::kGrid;
  const int64_t slots = int64_t{run.launched} * 2 * run.plan.ctas * run.plan.ctas * run.plan.units * run.plan.batch_tile;
  at::Tensor exchange = at::empty({grid ? slots : 0}, x.options().dtype(at::kFloat));
  at::Tensor flags = at::zeros({grid ? int64_t{run.launched} * run.plan.ctas : 0}, x.options().dtype(at::kInt));

  kernels::LstmPersistentBackward args;
  args.grad_y = gy.const_data_ptr();
  args.grad_h_n = gh.const_data_ptr();
  args.grad_c_n = gc.const_data_ptr();
  args.gates_ws = gates.contiguous().const_data_ptr();
  args.c_ws = c_ws.const_data_ptr<float>();
  args.c0 = c0c.const_data_ptr();
  args.w_hh = w.const_data_ptr();
  args.lengths = len.defined() ? len.const_data_ptr<int32_t>() : nullptr;
  args.dz_ws = dz.mutable_data_ptr();
  args.grad_h0 = grad_h0.mutable_data_ptr();
  args.grad_c0 = grad_c0.mutable_data_ptr();
  args.exchange = grid ? exchange.mutable_data_ptr<float>() : nullptr;
  args.flags = grid ? reinterpret_cast<uint32_t*>(flags.mutable_data_ptr<int32_t>()) : nullptr;
  args.T = static_cast<int>(T);
  args.B = static_cast<int>(B);
  args.reverse = reverse;
  check_launch(kernels::lstm_persistent_backward(args, run.plan, run.element, run.exchange, run.launched,
                                                 c10::cuda::getCurrentCUDAStream().stream()),
               "lstm_persistent_backward");

  // the weight gradients: one GEMM each over every step, as every backend computes them
  const at::Tensor dz2 = dz.view({T * B, 4 * H});
  at::Tensor grad_x = at::mm(dz2, w_ih).view({T, B, I});
  at::Tensor grad_w_ih = at::mm(dz2.t(), x.reshape({T * B, I}));
  at::Tensor grad_w_hh = at::mm(dz2.t(), previous_outputs(y, h0, lengths, reverse).view({T * B, H}));
  at::Tensor grad_bias = bias.has_value() ? at::sum(dz2, {0}, false, at::kFloat).to(bias->scalar_type())
                                          : at::empty({0}, x.options());
  return {grad_x, grad_h0, grad_c0.to(c0.scalar_type()), grad_w_ih, grad_w_hh, grad_bias, at::empty({0}, x.options())};
}

}  // namespace fastseq

// The schemas of fastseq_ext::* are declared once, in fastseq/ops (registry.py).
TORCH_LIBRARY_IMPL(fastseq_ext, CUDA, m) {
  m.impl("lstm_layer", &fastseq::lstm_layer_persistent);
  m.impl("lstm_layer_backward", &fastseq::lstm_layer_backward_persistent);
}
