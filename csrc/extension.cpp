// fastseq._C: registers the compiled kernels as torch ops in the namespace fastseq_ext (for CPU
// tensors always, for CUDA tensors when built with CUDA), and tells Python how it was built.
// The public ops (fastseq::*, with their fake implementations and autograd) are defined in
// fastseq/ops and call these.
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#include "ops.h"

#ifdef FASTSEQ_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace fastseq {
namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = TORCH_VERSION;
#ifdef FASTSEQ_WITH_CUDA
  info["with_cuda"] = true;
  info["cuda_runtime"] = CUDART_VERSION;
#else
  info["with_cuda"] = false;
  info["cuda_runtime"] = pybind11::none();
#endif
  return info;
}

}  // namespace
}  // namespace fastseq

TORCH_LIBRARY(fastseq_ext, m) {
  m.def("lstm_cell_forward(Tensor gates, Tensor c_prev) -> (Tensor, Tensor)");
  m.def("lstm_cell_backward(Tensor grad_h, Tensor grad_c, Tensor gates, Tensor c_prev) -> (Tensor, Tensor)");
  m.def(
      "lstm_layer_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? bias, Tensor? w_hr, "
      "Tensor? lengths, bool reverse, bool training) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_layer_backward(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, Tensor x, Tensor h0, Tensor c0, "
      "Tensor w_ih, Tensor w_hh, Tensor? bias, Tensor? w_hr, Tensor? lengths, bool reverse, Tensor y, "
      "Tensor gates_ws, Tensor c_ws) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "additive_attention_forward(Tensor query_proj, Tensor key_proj, Tensor v, Tensor values, Tensor? lengths, "
      "Tensor? key_padding_mask) -> (Tensor, Tensor)");
  m.def(
      "additive_attention_backward(Tensor grad_context, Tensor query_proj, Tensor key_proj, Tensor v, "
      "Tensor values, Tensor? lengths, Tensor? key_padding_mask, Tensor context, Tensor lse) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "additive_attention_decode(Tensor query_proj, Tensor key_proj, Tensor v, Tensor values, Tensor? lengths, "
      "Tensor? key_padding_mask) -> Tensor");
  m.def(
      "attention_decode(Tensor q, Tensor k, Tensor v, Tensor? lengths, Tensor? key_padding_mask, float scale) "
      "-> Tensor");
}

#define FASTSEQ_IMPL(m)                                             \
  m.impl("lstm_cell_forward", &fastseq::lstm_cell_forward);         \
  m.impl("lstm_cell_backward", &fastseq::lstm_cell_backward);       \
  m.impl("lstm_layer_forward", &fastseq::lstm_layer_forward);       \
  m.impl("lstm_layer_backward", &fastseq::lstm_layer_backward);

TORCH_LIBRARY_IMPL(fastseq_ext, CPU, m) { FASTSEQ_IMPL(m) }
#ifdef FASTSEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(fastseq_ext, CUDA, m) {
  FASTSEQ_IMPL(m)
  m.impl("additive_attention_forward", &fastseq::additive_attention_forward);
  m.impl("additive_attention_backward", &fastseq::additive_attention_backward);
  m.impl("additive_attention_decode", &fastseq::additive_attention_decode);
  m.impl("attention_decode", &fastseq::attention_decode);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastseq's compiled kernels (registered as torch.ops.fastseq_ext.*)";
  m.def("build_info", &fastseq::build_info, "How this extension was built");
}
