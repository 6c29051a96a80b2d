// The ops fastseq._C registers (torch.ops.fastseq_ext.*): one declaration each, defined next to
// their kernels. Schemas are in extension.cpp; semantics in fastseq/reference.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace fastseq {

using at::Tensor;

std::tuple<Tensor, Tensor> lstm_cell_forward(const Tensor& gates, const Tensor& c_prev);
std::tuple<Tensor, Tensor> lstm_cell_backward(const Tensor& grad_h, const Tensor& grad_c, const Tensor& gates,
                                              const Tensor& c_prev);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_forward(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& bias, const std::optional<Tensor>& w_hr, const std::optional<Tensor>& lengths,
    bool reverse, bool training);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& x, const Tensor& h0,
    const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& w_hr, const std::optional<Tensor>& lengths, bool reverse, const Tensor& y,
    const Tensor& gates, const Tensor& c_ws);

#ifdef FASTSEQ_WITH_CUDA
// Additive attention: CUDA tensors only (the CPU is served by the reference and Triton's interpreter).
std::tuple<Tensor, Tensor> additive_attention_forward(const Tensor& query_proj, const Tensor& key_proj,
                                                      const Tensor& v, const Tensor& values,
                                                      const std::optional<Tensor>& lengths,
                                                      const std::optional<Tensor>& key_padding_mask);
std::tuple<Tensor, Tensor, Tensor, Tensor> additive_attention_backward(
    const Tensor& grad_context, const Tensor& query_proj, const Tensor& key_proj, const Tensor& v,
    const Tensor& values, const std::optional<Tensor>& lengths, const std::optional<Tensor>& key_padding_mask,
    const Tensor& context, const Tensor& lse);
Tensor additive_attention_decode(const Tensor& query_proj, const Tensor& key_proj, const Tensor& v,
                                 const Tensor& values, const std::optional<Tensor>& lengths,
                                 const std::optional<Tensor>& key_padding_mask);
// Decoding attention: one query per (batch row, head) against a KV cache (view).
Tensor attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& lengths,
                        const std::optional<Tensor>& key_padding_mask, double scale);
#endif

}  // namespace fastseq
