// fastseq_ext::additive_scores, additive_gradient_pass and additive_attention_decode on CUDA tensors: outputs,
// partial-sum buffers, the key splits, and the launches of kernels/additive_passes.cu and additive_decode.cu.
// fastseq/ops/additive_attention/cuda.py composes them with torch's softmax and GEMMs (passes.py). The Python side has
// checked shapes, dtypes and devices; this checks what only these kernels limit.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../kernels/additive_decode.h"
#include "../kernels/additive_passes.h"
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

const float* floats(const Tensor& t, int64_t h_fma, const char* name) {
  if (h_fma == 0) return nullptr;
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous(), kOp, ": ", name, " must be contiguous float32");
  return t.const_data_ptr<float>();
}

// Calls f(T{}, A{}) for the element types the passes serve.
template <typename F> void dispatch_passes(const Tensor& q, int64_t h_fma, F&& f) {
  TORCH_CHECK(h_fma % kernels::kAdditiveFmaColumns == 0 && h_fma >= 0, kOp, ": h_fma must be a multiple of ",
              kernels::kAdditiveFmaColumns, ", got ", h_fma);
  switch (q.scalar_type()) {
    case at::kFloat: return f(float{}, float{});
    case at::kHalf: return f(at::Half{}, float{});
    case at::kBFloat16: return f(at::BFloat16{}, float{});
    case at::kDouble:
      TORCH_CHECK(h_fma == 0, kOp, ": float64 takes no FMA columns (its tanh is exact), got h_fma = ", h_fma);
      return f(double{}, double{});
    default:
      TORCH_CHECK(false, kOp, ": the CUDA kernels serve float64, float32, float16 and bfloat16, got ", q.scalar_type());
  }
}

cudaStream_t stream_of(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

}  // namespace

Tensor additive_scores(const Tensor& query_proj, const Tensor& key_proj, const Tensor& v, const Tensor& a,
                       const Tensor& b, const Tensor& rows, const std::optional<Tensor>& lengths,
                       const std::optional<Tensor>& key_padding_mask, int64_t h_fma, int64_t tile) {
  check_contiguous(kOp, {{"query_proj", query_proj}, {"key_proj", key_proj}, {"v", v}, {"rows", rows}});
  TORCH_CHECK(tile >= 0 && tile < kernels::kAdditiveScoreTiles, kOp, ": tile must be in [0, ",
              kernels::kAdditiveScoreTiles, "), got ", tile);
  const int64_t B = query_proj.size(0), Tq = query_proj.size(1), Tk = key_proj.size(1), H = query_proj.size(2);
  TORCH_CHECK(rows.scalar_type() == at::kInt && rows.numel() == B, kOp, ": rows must be int32 of size ", B);
  const c10::cuda::CUDAGuard guard(query_proj.device());
  const auto acc = query_proj.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor s = at::empty({B, Tq, Tk}, query_proj.options().dtype(acc));
  dispatch_passes(query_proj, h_fma, [&](auto t, auto a_) {
    using T = decltype(t);
    using A = decltype(a_);
    check_launch(kernels::additive_scores<device_t<T>, A>(
                     in<T>(query_proj), in<T>(key_proj), in<T>(v), floats(a, h_fma, "a"), floats(b, h_fma, "b"),
                     rows.const_data_ptr<int32_t>(), lengths_ptr(lengths), mask_ptr(key_padding_mask),
                     s.mutable_data_ptr<A>(), B, Tq, Tk, H, h_fma, static_cast<int>(tile), stream_of(query_proj)),
                 "additive_scores");
  });
  return s;
}

// -> (dq, dk in their inputs' dtypes, dv in v's): dS (B, Tq, Tk) in the accumulation dtype, zero at keys not kept;
// key_proj's padded rows zeroed.
std::tuple<Tensor, Tensor, Tensor> additive_gradient_pass(const Tensor& ds, const Tensor& query_proj,
                                                          const Tensor& key_proj, const Tensor& v, const Tensor& a,
                                                          const Tensor& b, const Tensor& rows, int64_t h_fma) {
  check_contiguous(kOp, {{"ds", ds}, {"query_proj", query_proj}, {"key_proj", key_proj}, {"v", v}, {"rows", rows}});
  const c10::cuda::CUDAGuard guard(query_proj.device());
  const int64_t B = query_proj.size(0), Tq = query_proj.size(1), Tk = key_proj.size(1), H = query_proj.size(2);
  const auto acc = ds.scalar_type();
  TORCH_CHECK(acc == (query_proj.scalar_type() == at::kDouble ? at::kDouble : at::kFloat), kOp,
              ": ds must be in the accumulation dtype, got ", acc);
  const Tensor r = ds.sum(-1).contiguous(), c = ds.sum(1).contiguous();
  const int64_t n_qb = (Tq + kernels::kAdditiveGradientQueries - 1) / kernels::kAdditiveGradientQueries;
  const int64_t n_hb = (H + kernels::kAdditiveFmaColumns - 1) / kernels::kAdditiveFmaColumns;
  // Key splits: enough blocks for two of the GPU's waves, each split whole chunks of keys.
  int sms = 0;
  check_launch(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, query_proj.device().index()),
               "cudaDeviceGetAttribute");
  const int64_t chunk = kernels::kAdditiveGradientKeys, chunks = std::max<int64_t>(1, (Tk + chunk - 1) / chunk);
  const int64_t blocks = std::max<int64_t>(1, B * n_qb * n_hb);
  const int64_t wanted = std::min(chunks, std::max<int64_t>(1, (4 * int64_t{sms} + blocks - 1) / blocks));
  const int64_t per_split = (chunks + wanted - 1) / wanted * chunk, splits = std::max<int64_t>(1, (Tk + per_split - 1) / per_split);
  Tensor dq = at::empty_like(query_proj), dk = at::empty_like(key_proj);
  Tensor g_part = at::empty({splits > 1 ? splits : 0, B, Tq, H}, ds.options());
  Tensor f_part = at::empty({n_qb > 1 ? n_qb : 0, B, Tk, H}, ds.options());
  Tensor w_part = at::zeros({B, n_qb, splits, H}, ds.options());
  if (Tk == 0) dk.zero_();
  dispatch_passes(query_proj, h_fma, [&](auto t, auto a_) {
    using T = decltype(t);
    using A = decltype(a_);
    check_launch(kernels::additive_gradient_pass<device_t<T>, A>(
                     ds.const_data_ptr<A>(), in<T>(query_proj), in<T>(key_proj), in<T>(v), floats(a, h_fma, "a"),
                     floats(b, h_fma, "b"), rows.const_data_ptr<int32_t>(), r.const_data_ptr<A>(),
                     c.const_data_ptr<A>(), out<T>(dq), out<T>(dk), g_part.mutable_data_ptr<A>(),
                     f_part.mutable_data_ptr<A>(), w_part.mutable_data_ptr<A>(), B, Tq, Tk, H, h_fma, per_split,
                     splits, stream_of(query_proj)),
                 "additive_gradient_pass");
  });
  const Tensor w_acc = v.to(acc);
  if (splits > 1) dq.copy_(w_acc * (r.unsqueeze(-1) - g_part.sum(0)));  // the splits' partial G
  if (n_qb > 1) dk.copy_(w_acc * (c.unsqueeze(-1) - f_part.sum(0)));    // the query blocks' partial F
  return {dq, dk, w_part.sum({0, 1, 2}).to(v.scalar_type())};
}

Tensor additive_attention_decode(const Tensor& query_proj, const Tensor& key_proj, const Tensor& v,
                                 const Tensor& values, const std::optional<Tensor>& lengths,
                                 const std::optional<Tensor>& key_padding_mask) {
  check_contiguous(kOp, {{"query_proj", query_proj}, {"key_proj", key_proj}, {"v", v}, {"values", values}});
  const c10::cuda::CUDAGuard guard(query_proj.device());
  const int64_t B = key_proj.size(0), Tk = key_proj.size(1), H = key_proj.size(2), Dv = values.size(2);
  TORCH_CHECK(H <= kernels::kAdditiveDecodeMaxDim && Dv <= kernels::kAdditiveDecodeMaxDim, kOp,
              ": the CUDA decoder step takes H and Dv up to ", kernels::kAdditiveDecodeMaxDim, ", got H = ", H,
              ", Dv = ", Dv, "; use fastseq.backends.use(cuda=\"triton\") for larger sizes");
  Tensor context = at::empty({B, Dv}, query_proj.options());
  auto run = [&](auto t) {
    using T = decltype(t);
    check_launch(kernels::additive_attention_decode<device_t<T>, float>(
                     in<T>(query_proj), in<T>(key_proj), in<T>(v), in<T>(values), lengths_ptr(lengths),
                     mask_ptr(key_padding_mask), out<T>(context), B, Tk, H, Dv, stream_of(query_proj)),
                 "additive_attention_decode");
  };
  switch (query_proj.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kHalf: run(at::Half{}); break;
    case at::kBFloat16: run(at::BFloat16{}); break;
    default:
      TORCH_CHECK(false, kOp, ": the CUDA decoder step serves float32, float16 and bfloat16, got ",
                  query_proj.scalar_type(), "; use fastseq.backends.use(cuda=\"triton\") or \"reference\" for it");
  }
  return context;
}

}  // namespace fastseq

// The schemas of fastseq_ext::* are declared once, in fastseq/ops (registry.py); these are the kernels.
TORCH_LIBRARY_IMPL(fastseq_ext, CUDA, m) {
  m.impl("additive_scores", &fastseq::additive_scores);
  m.impl("additive_gradient_pass", &fastseq::additive_gradient_pass);
  m.impl("additive_attention_decode", &fastseq::additive_attention_decode);
}
