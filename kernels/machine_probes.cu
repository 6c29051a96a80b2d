// The machine probes of machine_probes.h.
#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include "machine_probes.h"

namespace fastseq {
namespace kernels {
namespace {

namespace cg = cooperative_groups;

__device__ __forceinline__ int64_t global_ns() {
  int64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ float mufu_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t mufu_tanh_bf16x2(uint32_t x) {
  uint32_t y = x;
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  asm("tanh.approx.bf16x2 %0, %1;" : "=r"(y) : "r"(x));
#else
  __trap();  // sm_90's instruction; the launcher refuses older devices
#endif
  return y;
}

// 1 / d for d >= 1 on the FMA units: a first guess from the exponent bits, then three Newton steps.
__device__ __forceinline__ float fma_reciprocal(float d) {
  float r = __int_as_float(0x7EF311C3 - __float_as_int(d));
  r = r * fmaf(-d, r, 2.0f);
  r = r * fmaf(-d, r, 2.0f);
  return r * fmaf(-d, r, 2.0f);
}

// 2^y on the FMA units for |y| <= 30: y = n + f, |f| <= 1/2, 2^f by a degree-5 polynomial, n into the exponent.
__device__ __forceinline__ float fma_exp2(float y) {
  y = fminf(fmaxf(y, -30.0f), 30.0f);
  const float shifted = y + 12582912.0f;  // 1.5 * 2^23: rounds y to an integer in the low mantissa bits
  const float n = shifted - 12582912.0f;
  const float f = y - n;
  float p = 1.3333558e-3f;
  p = fmaf(p, f, 9.6181291e-3f);
  p = fmaf(p, f, 5.5504109e-2f);
  p = fmaf(p, f, 2.4022651e-1f);
  p = fmaf(p, f, 6.9314718e-1f);
  p = fmaf(p, f, 1.0f);
  return __int_as_float(__float_as_int(p) + (__float_as_int(shifted) << 23));
}

__device__ __forceinline__ float fma_tanh(float x) {
  return fmaf(-2.0f, fma_reciprocal(1.0f + fma_exp2(x * 2.885390082f)), 1.0f);  // 2 log2 e
}

template <TanhProbe kKind>
__global__ void tanh_chain_kernel(float* data, int iters) {
  const int64_t base = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kTanhChains;
  float x[kTanhChains];
#pragma unroll
  for (int c = 0; c < kTanhChains; ++c) x[c] = data[base + c];
  if constexpr (kKind == TanhProbe::kMufuBf16x2) {
    uint32_t v[kTanhChains / 2];
#pragma unroll
    for (int c = 0; c < kTanhChains / 2; ++c) {
      const __nv_bfloat162 pair = __floats2bfloat162_rn(x[2 * c], x[2 * c + 1]);
      v[c] = *reinterpret_cast<const uint32_t*>(&pair);
    }
    for (int i = 0; i < iters; ++i) {
#pragma unroll
      for (int c = 0; c < kTanhChains / 2; ++c) v[c] = mufu_tanh_bf16x2(v[c]);
    }
#pragma unroll
    for (int c = 0; c < kTanhChains / 2; ++c) {
      const float2 pair = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v[c]));
      x[2 * c] = pair.x;
      x[2 * c + 1] = pair.y;
    }
  } else {
    const float eb = 1.5f;  // the product form's second exponential, fixed: e^{2a} e^{2b}
    for (int i = 0; i < iters; ++i) {
#pragma unroll
      for (int c = 0; c < kTanhChains; ++c) {
        if constexpr (kKind == TanhProbe::kMufuF32) {
          x[c] = mufu_tanh(fmaf(x[c], 1.5f, 0.25f));
        } else if constexpr (kKind == TanhProbe::kFmaExp) {
          x[c] = fma_tanh(fmaf(x[c], 1.5f, 0.25f));
        } else {
          const float ea = fmaf(x[c], 0.5f, 1.0f);  // stands in for a precomputed e^{2a} in (0.5, 1.5)
          x[c] = fmaf(-2.0f, fma_reciprocal(fmaf(ea, eb, 1.0f)), 1.0f);
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < kTanhChains; ++c) data[base + c] = x[c];
}

__device__ __forceinline__ void cluster_arrive_relaxed() { asm volatile("barrier.cluster.arrive.relaxed;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait;" ::: "memory"); }
__device__ __forceinline__ void cluster_fence() { asm volatile("fence.acq_rel.cluster;" ::: "memory"); }

template <ClusterProbe kKind>
__global__ void cluster_barrier_kernel(int64_t* elapsed_ns, int iters) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters are sm_90's; the launcher refuses older devices before launching
#else
  constexpr bool kExchange = kKind == ClusterProbe::kSyncExchange || kKind == ClusterProbe::kFencedExchange;
  extern __shared__ uint4 inbox[];
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank();
  uint4* next = cluster.map_shared_rank(inbox, (rank + 1) % cluster.num_blocks());
  uint4 value = make_uint4(rank, threadIdx.x, 0, 0);
  inbox[threadIdx.x] = value;
  cluster.sync();
  const int64_t start = global_ns();
  for (int i = 0; i < iters; ++i) {
    if (kExchange) {
      value.z += inbox[threadIdx.x].x;  // what the previous block wrote, then this block's to the next
      next[threadIdx.x] = value;
    }
    if constexpr (kKind == ClusterProbe::kSync || kKind == ClusterProbe::kSyncExchange) {
      cluster.sync();
    } else {
      if (kExchange) cluster_fence();
      cluster_arrive_relaxed();
      cluster_wait();
    }
  }
  const int64_t stop = global_ns();
  if (rank == 0 && threadIdx.x == 0) elapsed_ns[blockIdx.x / cluster.num_blocks()] = stop - start + (value.z & 0u);
#endif
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// A sense-counting barrier over the grid's blocks: the last to arrive resets the count and moves the generation.
__device__ __forceinline__ void grid_sync(unsigned* count, unsigned* generation, unsigned blocks) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned seen = load_acquire(generation);
    __threadfence();
    if (atomicAdd(count, 1u) == blocks - 1) {
      atomicExch(count, 0u);
      __threadfence();
      atomicAdd(generation, 1u);
    } else {
      while (load_acquire(generation) == seen) {
      }
    }
  }
  __syncthreads();
}

__global__ void grid_barrier_kernel(unsigned* state, int64_t* elapsed_ns, int iters) {
  grid_sync(state, state + 1, gridDim.x);
  const int64_t start = global_ns();
  for (int i = 0; i < iters; ++i) grid_sync(state, state + 1, gridDim.x);
  const int64_t stop = global_ns();
  if (blockIdx.x == 0 && threadIdx.x == 0) elapsed_ns[0] = stop - start;
}

}  // namespace

cudaError_t tanh_chain(float* data, int blocks, int threads, int iters, TanhProbe kind, cudaStream_t stream) {
  if (kind == TanhProbe::kMufuBf16x2) {
    int device = 0, major = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (err != cudaSuccess) return err;
    if (major < 9) return cudaErrorNotSupported;  // tanh.approx.bf16x2 needs sm_90
  }
  switch (kind) {
    case TanhProbe::kMufuF32:
      tanh_chain_kernel<TanhProbe::kMufuF32><<<blocks, threads, 0, stream>>>(data, iters);
      break;
    case TanhProbe::kMufuBf16x2:
      tanh_chain_kernel<TanhProbe::kMufuBf16x2><<<blocks, threads, 0, stream>>>(data, iters);
      break;
    case TanhProbe::kFmaExp:
      tanh_chain_kernel<TanhProbe::kFmaExp><<<blocks, threads, 0, stream>>>(data, iters);
      break;
    case TanhProbe::kFmaProduct:
      tanh_chain_kernel<TanhProbe::kFmaProduct><<<blocks, threads, 0, stream>>>(data, iters);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <ClusterProbe kKind>
cudaError_t launch_cluster_barrier(int64_t* elapsed_ns, int cluster, int clusters, int iters, cudaStream_t stream) {
  constexpr int kThreads = 128;
  int device = 0, major = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err != cudaSuccess) return err;
  if (major < 9) return cudaErrorNotSupported;  // thread-block clusters need sm_90
  if (cluster > 8) {  // beyond the portable size of 8, a kernel must opt in
    err = cudaFuncSetAttribute(cluster_barrier_kernel<kKind>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (err != cudaSuccess) return err;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = static_cast<unsigned>(cluster * clusters);  // one-dimensional, as every launch here
  config.blockDim = kThreads;
  config.dynamicSmemBytes = kThreads * sizeof(uint4);
  config.stream = stream;
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = cluster;
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, cluster_barrier_kernel<kKind>, elapsed_ns, iters);
}

cudaError_t cluster_barrier(int64_t* elapsed_ns, int cluster, int clusters, int iters, ClusterProbe kind,
                            cudaStream_t stream) {
  switch (kind) {
    case ClusterProbe::kSync:
      return launch_cluster_barrier<ClusterProbe::kSync>(elapsed_ns, cluster, clusters, iters, stream);
    case ClusterProbe::kSyncExchange:
      return launch_cluster_barrier<ClusterProbe::kSyncExchange>(elapsed_ns, cluster, clusters, iters, stream);
    case ClusterProbe::kRelaxed:
      return launch_cluster_barrier<ClusterProbe::kRelaxed>(elapsed_ns, cluster, clusters, iters, stream);
    case ClusterProbe::kFencedExchange:
      return launch_cluster_barrier<ClusterProbe::kFencedExchange>(elapsed_ns, cluster, clusters, iters, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t grid_barrier(unsigned* state, int64_t* elapsed_ns, int blocks, int threads, int iters,
                         cudaStream_t stream) {
  void* args[] = {&state, &elapsed_ns, &iters};
  return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(grid_barrier_kernel), blocks, threads, args, 0,
                                     stream);
}

}  // namespace kernels
}  // namespace fastseq
