// Host side of the machine probes (csrc/machine_probes.h): buffers, launches, events.
#include "machine_probes.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <vector>

#include "../kernels/machine_probes.h"
#include "cuda_types.h"

namespace fastseq {
namespace {

int multiprocessors() {
  int device = 0, sms = 0;
  check_launch(cudaGetDevice(&device), "cudaGetDevice");
  check_launch(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return sms;
}

kernels::TanhProbe tanh_kind(const std::string& kind) {
  if (kind == "mufu_f32") return kernels::TanhProbe::kMufuF32;
  if (kind == "mufu_bf16x2") return kernels::TanhProbe::kMufuBf16x2;
  if (kind == "fma_exp") return kernels::TanhProbe::kFmaExp;
  if (kind == "fma_product") return kernels::TanhProbe::kFmaProduct;
  TORCH_CHECK(false, "probe_tanh_rate: kind must be mufu_f32, mufu_bf16x2, fma_exp or fma_product, got ", kind);
}

kernels::ClusterProbe cluster_kind(const std::string& kind) {
  if (kind == "sync") return kernels::ClusterProbe::kSync;
  if (kind == "sync_exchange") return kernels::ClusterProbe::kSyncExchange;
  if (kind == "relaxed") return kernels::ClusterProbe::kRelaxed;
  if (kind == "fenced_exchange") return kernels::ClusterProbe::kFencedExchange;
  TORCH_CHECK(false, "probe_cluster_barrier_ns: kind must be sync, sync_exchange, relaxed or fenced_exchange, got ",
              kind);
}

}  // namespace

double probe_tanh_rate(const std::string& kind, int64_t iters, int64_t waves) {
  TORCH_CHECK(iters > 0 && waves > 0, "probe_tanh_rate: iters and waves must be positive");
  const int threads = 256, blocks = static_cast<int>(multiprocessors() * 8 * waves);  // 8 blocks of 256 fill an SM
  at::Tensor data = at::rand({static_cast<int64_t>(blocks) * threads * kernels::kTanhChains},
                             at::TensorOptions().device(at::kCUDA).dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const kernels::TanhProbe probe = tanh_kind(kind);
  check_launch(kernels::tanh_chain(data.data_ptr<float>(), blocks, threads, 4, probe, stream), "tanh_chain");  // warm
  cudaEvent_t start, stop;
  check_launch(cudaEventCreate(&start), "cudaEventCreate");
  check_launch(cudaEventCreate(&stop), "cudaEventCreate");
  check_launch(cudaEventRecord(start, stream), "cudaEventRecord");
  check_launch(kernels::tanh_chain(data.data_ptr<float>(), blocks, threads, static_cast<int>(iters), probe, stream),
               "tanh_chain");
  check_launch(cudaEventRecord(stop, stream), "cudaEventRecord");
  check_launch(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  check_launch(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return static_cast<double>(blocks) * threads * kernels::kTanhChains * iters / (ms * 1e-3);
}

double probe_cluster_barrier_ns(int64_t cluster, const std::string& kind, int64_t iters) {
  TORCH_CHECK(cluster >= 1 && cluster <= 16 && iters > 0, "probe_cluster_barrier_ns: cluster must be in [1, 16]");
  const int clusters = std::max(1, multiprocessors() / static_cast<int>(cluster));
  at::Tensor elapsed = at::zeros({clusters}, at::TensorOptions().device(at::kCUDA).dtype(at::kLong));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  check_launch(kernels::cluster_barrier(elapsed.data_ptr<int64_t>(), static_cast<int>(cluster), clusters,
                                        static_cast<int>(iters), cluster_kind(kind), stream),
               "cluster_barrier");
  std::vector<int64_t> ns(clusters);
  check_launch(cudaMemcpyAsync(ns.data(), elapsed.data_ptr<int64_t>(), clusters * sizeof(int64_t),
                               cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync");
  check_launch(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  std::nth_element(ns.begin(), ns.begin() + clusters / 2, ns.end());
  return static_cast<double>(ns[clusters / 2]) / static_cast<double>(iters);
}

double probe_grid_barrier_ns(int64_t iters) {
  TORCH_CHECK(iters > 0, "probe_grid_barrier_ns: iters must be positive");
  const auto options = at::TensorOptions().device(at::kCUDA);
  at::Tensor state = at::zeros({2}, options.dtype(at::kInt));
  at::Tensor elapsed = at::zeros({1}, options.dtype(at::kLong));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  check_launch(kernels::grid_barrier(reinterpret_cast<unsigned*>(state.data_ptr<int32_t>()), elapsed.data_ptr<int64_t>(),
                                     multiprocessors(), 128, static_cast<int>(iters), stream),
               "grid_barrier");
  return static_cast<double>(elapsed.cpu().item<int64_t>()) / static_cast<double>(iters);
}

}  // namespace fastseq
