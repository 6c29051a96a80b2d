// The machine probes of kernels/machine_probes.h, as fastseq._C functions (CUDA builds only): each runs on
// the current device and stream and returns what it measured, timed with CUDA events or the device's timer.
#pragma once

#include <cstdint>
#include <string>

namespace fastseq {

// tanh results per second of `kind` ("mufu_f32", "mufu_bf16x2", "fma_exp", "fma_product"), every
// multiprocessor filled `waves` times over.
double probe_tanh_rate(const std::string& kind, int64_t iters, int64_t waves);

// Nanoseconds per barrier of clusters of `cluster` blocks ("sync", "sync_exchange", "relaxed",
// "fenced_exchange"), as many clusters as fit the device at once, the median cluster's.
double probe_cluster_barrier_ns(int64_t cluster, const std::string& kind, int64_t iters);

// Nanoseconds per grid-wide barrier of one block per multiprocessor.
double probe_grid_barrier_ns(int64_t iters);

}  // namespace fastseq
