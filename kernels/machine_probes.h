// Probes of the machine's rates that fastseq's kernels are planned against (benchmarks/gpu_window.py,
// section 0): the tanh unit (MUFU.TANH on float32 and on bfloat16 pairs), tanh on the FMA units alone, a
// thread-block cluster's barrier (with and without a distributed-shared-memory exchange) and a grid-wide
// barrier in global memory. Torch-free: raw pointers, sizes, a stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastseq {
namespace kernels {

enum class TanhProbe : int {
  kMufuF32 = 0,      // tanh.approx.f32
  kMufuBf16x2 = 1,   // tanh.approx.bf16x2: two results an instruction
  kFmaExp = 2,       // 1 - 2 / (1 + 2^(2x log2 e)): exp2 by a polynomial, reciprocal by Newton steps
  kFmaProduct = 3,   // 1 - 2 / (1 + e^{2a} e^{2b}) from precomputed exponentials: one product, then Newton
};
constexpr int kTanhChains = 8;  // independent chains a thread carries (instruction-level parallelism)

// Each of blocks × threads threads runs kTanhChains chains of `iters` dependent tanh on registers, seeded
// from and written back to `data` (blocks × threads × kTanhChains floats).
cudaError_t tanh_chain(float* data, int blocks, int threads, int iters, TanhProbe kind, cudaStream_t stream);

enum class ClusterProbe : int {
  kSync = 0,            // cooperative_groups' cluster.sync()
  kSyncExchange = 1,    // each step a 16-byte store a thread into the next block's shared memory, then sync()
  kRelaxed = 2,         // barrier.cluster.arrive.relaxed + wait: the barrier alone
  kFencedExchange = 3,  // the exchange, fence.acq_rel.cluster, arrive.relaxed + wait
};

// `clusters` clusters of `cluster` blocks each pass the cluster barrier `iters` times, as `kind` says (the
// exchange stands for the recurrent step of a persistent kernel). elapsed_ns[c]: cluster c's time for all
// iterations (its first block's timer).
cudaError_t cluster_barrier(int64_t* elapsed_ns, int cluster, int clusters, int iters, ClusterProbe kind,
                            cudaStream_t stream);

// `blocks` co-resident blocks (a cooperative launch: it fails rather than deadlock when they cannot all be
// resident) pass a barrier in global memory `iters` times. state: 2 zeroed words (count, generation).
// elapsed_ns[0]: block 0's time for all iterations.
cudaError_t grid_barrier(unsigned* state, int64_t* elapsed_ns, int blocks, int threads, int iters,
                         cudaStream_t stream);

}  // namespace kernels
}  // namespace fastseq
