// Device helpers shared by fastseq's kernels: element types, their accumulation type, activations.
// Torch-free: compiles standalone with nvcc.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fastseq {
namespace kernels {

// The type arithmetic on T is carried out in: double for double, float otherwise.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

template <typename A, typename T> __device__ __forceinline__ A load_as(const T* p) { return static_cast<A>(*p); }
template <> __device__ __forceinline__ float load_as<float, __half>(const __half* p) { return __half2float(*p); }
template <> __device__ __forceinline__ float load_as<float, __nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

template <typename T, typename A> __device__ __forceinline__ void store_from(T* p, A v) { *p = static_cast<T>(v); }
template <> __device__ __forceinline__ void store_from<__half, float>(__half* p, float v) { *p = __float2half_rn(v); }
template <> __device__ __forceinline__ void store_from<__nv_bfloat16, float>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }

}  // namespace kernels
}  // namespace fastseq
