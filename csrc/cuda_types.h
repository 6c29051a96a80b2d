// Host-side helpers for the CUDA launchers: ATen element types -> the CUDA types the kernels are
// instantiated for, typed data pointers, launch-error checks. CUDA builds only.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace fastseq {

using at::Tensor;

template <typename T> struct Device { using type = T; };
template <> struct Device<at::Half> { using type = __half; };
template <> struct Device<at::BFloat16> { using type = __nv_bfloat16; };
template <typename T> using device_t = typename Device<T>::type;

// A tensor's data as the kernels' element type; null for an undefined tensor.
template <typename T> const device_t<T>* in(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<const device_t<T>*>(t.const_data_ptr<T>()) : nullptr;
}
template <typename T> device_t<T>* out(const at::Tensor& t) {
  return reinterpret_cast<device_t<T>*>(t.mutable_data_ptr<T>());
}

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed to launch: ", cudaGetErrorString(err));
}

}  // namespace fastseq
