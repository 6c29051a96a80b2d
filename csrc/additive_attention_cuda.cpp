// fastseq_ext::additive_attention{,_backward,_decode} on CUDA tensors: outputs, the workspace,
// and the launch of kernels/additive_attention.cu. Semantics: fastseq/ops/additive/reference.py.
// The Python op has checked shapes, dtypes and devices; this checks what only these kernels limit.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../kernels/additive_attention.h"
#include "checks.h"
#include "cuda_types.h"

namespace fastseq {
namespace {

constexpr const char* kOp = "additive_attention (backend 'cuda')";

const int32_t* lengths_ptr(const std::optional<Tensor>& lengths) {
  if (!lengths.has_value()) return nullptr;
  TORCH_CHECK(lengths->scalar_type() == at::kInt && lengths->is_contiguous(), kOp, ": lengths must be contiguous int32");
  return lengths->const_data_ptr<int32_t>();
}

const uint8_t* mask_ptr(const std::optional<Tensor>& mask) {
  if (!mask.has_value()) return nullptr;
  TORCH_CHECK(mask->scalar_type() == at::kBool && mask->is_contiguous(), kOp, ": key_padding_mask must be contiguous bool");
  return reinterpret_cast<const uint8_t*>(mask->const_data_ptr<bool>());
}

// Calls f(T{}) for the element types the kernels serve; a clear error for the others and for sizes
// past the kernels' register budget.
template <typename F> void dispatch(const Tensor& q, int64_t H, int64_t Dv, F&& f) {
  TORCH_CHECK(H <= kernels::kAdditiveAttentionMaxDim && Dv <= kernels::kAdditiveAttentionMaxDim, kOp,
              ": the CUDA kernels take H and Dv up to ", kernels::kAdditiveAttentionMaxDim, ", got H = ", H,
              ", Dv = ", Dv, "; use fastseq.backends.use(cuda=\"triton\") for larger sizes");
  switch (q.scalar_type()) {
    case at::kFloat: return f(float{});
    case at::kHalf: return f(at::Half{});
    case at::kBFloat16: return f(at::BFloat16{});
    default:
      TORCH_CHECK(false, kOp, ": the CUDA kernels serve float32, float16 and bfloat16, got ", q.scalar_type(),
                  "; use fastseq.backends.use(cuda=\"triton\") or \"reference\" for it");
  }
}

void launch_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& values,
                    const std::optional<Tensor>& lengths, const std::optional<Tensor>& mask, const Tensor& context,
                    float* lse, int64_t Tq) {
  check_contiguous(kOp, {{"query_proj", q}, {"key_proj", k}, {"v", v}, {"values", values}});
  const c10::cuda::CUDAGuard guard(q.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int64_t B = k.size(0), Tk = k.size(1), H = k.size(2), Dv = values.size(2);
  dispatch(q, H, Dv, [&](auto t) {
    using T = decltype(t);
    check_launch(kernels::additive_attention_forward(in<T>(q), in<T>(k), in<T>(v), in<T>(values), lengths_ptr(lengths),
                                                     mask_ptr(mask), out<T>(context), lse, B, Tq, Tk, H, Dv, stream),
                 "additive_attention_forward");
  });
}

}  // namespace

std::tuple<Tensor, Tensor> additive_attention(const Tensor& query_proj, const Tensor& key_proj, const Tensor& v,
                                              const Tensor& values, const std::optional<Tensor>& lengths,
                                              const std::optional<Tensor>& key_padding_mask) {
  const int64_t B = query_proj.size(0), Tq = query_proj.size(1);
  Tensor context = at::empty({B, Tq, values.size(2)}, query_proj.options());
  Tensor lse = at::empty({B, Tq}, query_proj.options().dtype(at::kFloat));
  launch_forward(query_proj, key_proj, v, values, lengths, key_padding_mask, context, lse.mutable_data_ptr<float>(), Tq);
  return {context, lse};
}

Tensor additive_attention_decode(const Tensor& query_proj, const Tensor& key_proj, const Tensor& v,
                                 const Tensor& values, const std::optional<Tensor>& lengths,
                                 const std::optional<Tensor>& key_padding_mask) {
  Tensor context = at::empty({query_proj.size(0), values.size(2)}, query_proj.options());
  launch_forward(query_proj, key_proj, v, values, lengths, key_padding_mask, context, nullptr, 1);
  return context;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> additive_attention_backward(
    const Tensor& grad_context, const Tensor& query_proj, const Tensor& key_proj, const Tensor& v,
    const Tensor& values, const std::optional<Tensor>& lengths, const std::optional<Tensor>& key_padding_mask,
    const Tensor& context, const Tensor& lse) {
  check_contiguous(kOp, {{"grad_context", grad_context}, {"query_proj", query_proj}, {"key_proj", key_proj},
                         {"v", v}, {"values", values}, {"lse", lse}});
  TORCH_CHECK(lse.scalar_type() == at::kFloat, kOp, ": lse must be float32, got ", lse.scalar_type());
  const c10::cuda::CUDAGuard guard(query_proj.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int64_t B = key_proj.size(0), Tq = query_proj.size(1), Tk = key_proj.size(1), H = key_proj.size(2),
                Dv = values.size(2);
  const Tensor delta = (grad_context.to(at::kFloat) * context.to(at::kFloat)).sum(-1).contiguous();  // D_i = dc_i · c_i
  Tensor grad_q = at::empty_like(query_proj), grad_k = at::empty_like(key_proj), grad_values = at::empty_like(values);
  Tensor grad_v_partial =
      at::empty({B * kernels::additive_attention_grad_v_blocks(Tk), H}, query_proj.options().dtype(at::kFloat));
  dispatch(query_proj, H, Dv, [&](auto t) {
    using T = decltype(t);
    check_launch(kernels::additive_attention_backward(
                     in<T>(grad_context), in<T>(query_proj), in<T>(key_proj), in<T>(v), in<T>(values),
                     lengths_ptr(lengths), mask_ptr(key_padding_mask), lse.const_data_ptr<float>(),
                     delta.const_data_ptr<float>(), out<T>(grad_q), out<T>(grad_k),
                     grad_v_partial.mutable_data_ptr<float>(), out<T>(grad_values), B, Tq, Tk, H, Dv, stream),
                 "additive_attention_backward");
  });
  return {grad_q, grad_k, grad_v_partial.sum(0).to(v.scalar_type()), grad_values};
}

}  // namespace fastseq

// The schemas of fastseq_ext::* are declared once, in fastseq/ops (registry.py); these are the kernels.
TORCH_LIBRARY_IMPL(fastseq_ext, CUDA, m) {
  m.impl("additive_attention", &fastseq::additive_attention);
  m.impl("additive_attention_backward", &fastseq::additive_attention_backward);
  m.impl("additive_attention_decode", &fastseq::additive_attention_decode);
}
