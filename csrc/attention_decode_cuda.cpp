// fastseq_ext::attention_decode on CUDA tensors: the workspace and the launch of
// kernels/attention_decode.cu. Semantics: fastseq/ops/attention/reference.py (attention_decode).
// The Python op has checked shapes, dtypes and devices; this checks what only these kernels limit.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../kernels/attention_decode.h"
#include "cuda_types.h"

namespace fastseq {
namespace {

constexpr const char* kOp = "attention_decode (backend 'cuda')";

// k, v: (B, Hkv, Tk, D) with each (row, head) block's positions contiguous; returns where the blocks lie.
// Any batch and head strides serve (a cache's first positions, an expanded batch, one head's odd stride).
kernels::CacheStrides cache_strides(const Tensor& t, const char* name) {
  const int64_t T = t.size(2), D = t.size(3);
  TORCH_CHECK((D == 1 || t.stride(3) == 1) && (T == 1 || t.stride(2) == D), kOp, ": ", name,
              " must hold each (batch row, head)'s positions contiguously, got strides ", t.strides(),
              " for sizes ", t.sizes());
  return {t.stride(0), t.stride(1)};
}

}  // namespace

Tensor attention_decode(const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& lengths,
                        const std::optional<Tensor>& key_padding_mask, double scale) {
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k.size(1), Tk = k.size(2), Dv = v.size(3);
  TORCH_CHECK(q.is_contiguous(), kOp, ": q must be contiguous");
  TORCH_CHECK(D <= kernels::kAttentionDecodeMaxDim && Dv <= kernels::kAttentionDecodeMaxDim, kOp,
              ": the CUDA kernel takes head dims up to ", kernels::kAttentionDecodeMaxDim, ", got D = ", D, ", Dv = ",
              Dv, "; use fastseq.backends.use(cuda=\"triton\")");
  const kernels::CacheStrides k_strides = cache_strides(k, "k"), v_strides = cache_strides(v, "v");
  const int32_t* len = nullptr;
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->scalar_type() == at::kInt && lengths->is_contiguous(), kOp, ": lengths must be contiguous int32");
    len = lengths->const_data_ptr<int32_t>();
  }
  const uint8_t* mask = nullptr;
  if (key_padding_mask.has_value()) {
    TORCH_CHECK(key_padding_mask->scalar_type() == at::kBool && key_padding_mask->is_contiguous(), kOp,
                ": key_padding_mask must be contiguous bool");
    mask = reinterpret_cast<const uint8_t*>(key_padding_mask->const_data_ptr<bool>());
  }
  const c10::cuda::CUDAGuard guard(q.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  int sms = 0;
  check_launch(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.get_device()), "cudaDeviceGetAttribute");
  const int64_t n_splits = kernels::attention_decode_splits(B * Hq, Tk, sms);
  Tensor output = at::empty({B, Hq, Dv}, q.options());
  Tensor part_out = at::empty({B * Hq * n_splits * Dv}, q.options().dtype(at::kFloat));
  Tensor part_lse = at::empty({B * Hq * n_splits}, q.options().dtype(at::kFloat));
  auto run = [&](auto t) {
    using T = decltype(t);
    check_launch(kernels::attention_decode(in<T>(q), in<T>(k), in<T>(v), len, mask, out<T>(output),
                                           part_out.mutable_data_ptr<float>(), part_lse.mutable_data_ptr<float>(), B,
                                           Hq, Hkv, Tk, D, Dv, k_strides, v_strides, static_cast<float>(scale), n_splits,
                                           stream),
                 "attention_decode");
  };
  switch (q.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kHalf: run(at::Half{}); break;
    case at::kBFloat16: run(at::BFloat16{}); break;
    default:
      TORCH_CHECK(false, kOp, ": the CUDA kernel serves float32, float16 and bfloat16, got ", q.scalar_type(),
                  "; use fastseq.backends.use(cuda=\"triton\") or \"reference\" for it");
  }
  return output;
}

}  // namespace fastseq

// The schema of fastseq_ext::attention_decode is declared once, in fastseq/ops (registry.py).
TORCH_LIBRARY_IMPL(fastseq_ext, CUDA, m) { m.impl("attention_decode", &fastseq::attention_decode); }
