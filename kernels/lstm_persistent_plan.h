// How the persistent LSTM layer (lstm_persistent.cu) lays one layer over the GPU, or why it cannot: a pure
// function of the sizes and the device's limits, shared by the launcher (csrc/lstm_persistent_cuda.cpp)
// and, through fastseq._C.lstm_persistent_plan, by the chooser, `fastseq info` and the tests. Torch-free and
// CUDA-free.
//
// The layer's recurrent weights W_hh (4H x P) stay on chip for the whole sequence, split over a group of
// `ctas` blocks: block c owns hidden units [c*units, (c+1)*units) and the four gate rows of each, held in
// its threads' registers as tensor-core operand fragments. Each step a block multiplies its rows by h_{t-1}
// (the batch tile's, in shared memory), updates the cell of its units and sends its slice of h_t to every
// block of the group: into their shared memory within a thread-block cluster (`kCluster`, sm_90), else
// through global memory with per-block step flags (`kGrid`, a cooperative launch). Batch tiles run on
// replicas of the group. The backward runs the same way back in time: each block multiplies its rows'
// dz by its W_hh slice and sends each block the partial sums of that block's units.
#pragma once

#include <cstdint>

namespace fastseq {
namespace kernels {

enum class LstmExchange : int { kCluster = 0, kGrid = 1 };

constexpr int kLstmPersistentWarps = 8;    // every block: 8 warps, 256 threads
constexpr int kLstmPersistentMaxBatchTile = 64;
constexpr int kLstmWeightRegisterBudget = 128;  // 32-bit registers a thread gives to W_hh's fragments

struct LstmDeviceLimits {
  int multiprocessors = 0;
  int major = 0;                      // compute capability
  int max_cluster = 0;                // largest cluster a launch may take (16 with the non-portable opt-in on sm_90)
  int64_t shared_per_block = 0;       // bytes of shared memory one block may opt in to
};

struct LstmPersistentPlan {
  const char* refusal = nullptr;      // why the kernel cannot serve the call; nullptr when it can
  LstmExchange exchange = LstmExchange::kCluster;
  int ctas = 0;                       // blocks holding W_hh together (a group)
  int units = 0;                      // hidden units per block
  int m_tiles = 0;                    // 16-row tensor-core tiles of a block's gate rows, forward
  int k_split = 0;                    // warps sharing one forward m-tile's K (partial sums added in shared memory)
  int batch_tile = 0;                 // batch rows a group carries (a multiple of 8)
  int groups = 0;                     // groups in all (batch tiles)
  int resident_groups = 0;            // groups the device runs at once; more wait for a free place
  int64_t shared_bytes = 0;           // dynamic shared memory per block
  int weight_registers = 0;           // 32-bit registers per thread holding W_hh
};

// Padding of a [rows][batch_tile] 16-bit buffer's rows, in elements, that makes ldmatrix.trans conflict-free:
// the row stride in 16-byte units must be odd.
constexpr int lstm_row_pad(int batch_tile) { return (batch_tile / 8) % 2 == 0 ? 8 : 16; }

// Dynamic shared memory of a block (at least what the kernel's layout takes; lstm_persistent.cu checks it
// at compile time): forward, h_{t-1} and h_t ([P][tile] each), two staging slices of its own h
// ([units][tile]), the k-split partial sums; backward, dz by iteration parity ([4*units][tile] each), two
// receive buffers of the partial sums from every block ([ctas][units][tile] fp32); the mbarriers.
constexpr int64_t lstm_persistent_shared_bytes(int hidden, int units, int ctas, int batch_tile, int k_split,
                                               bool backward) {
  const int64_t row = batch_tile + lstm_row_pad(batch_tile);
  const int64_t barriers = 64;
  if (!backward) {
    const int64_t partial = k_split > 1 ? int64_t{4} * units * batch_tile * 4 : 0;
    return 2 * hidden * row * 2 + 2 * int64_t{units} * batch_tile * 2 + partial + barriers;
  }
  return 2 * int64_t{4} * units * row * 2 + 2 * int64_t{ctas} * units * batch_tile * 4 + barriers;
}

// The layer sizes the kernel's tiles cover, with the units a block owns (8 warps: 8 forward m-tiles of 4
// units, or 4 m-tiles whose K two warps share).
inline bool lstm_persistent_tiles(int hidden, int* units, int* k_split) {
  switch (hidden) {
    case 128: *units = 32; *k_split = 1; return true;
    case 256: *units = 32; *k_split = 1; return true;
    case 512: *units = 32; *k_split = 1; return true;
    case 1024: *units = 16; *k_split = 2; return true;  // 64 blocks: more than a cluster takes
    default: return false;
  }
}

// The largest batch tile whose accumulators stay in registers beside W_hh's fragments (no spills: checked
// from ptxas's report by tests/test_compile_checks.py for every instantiated tile).
constexpr int lstm_persistent_max_tile(int hidden, bool backward) {
  return backward ? (hidden >= 1024 ? 8 : 16) : (hidden >= 512 ? 32 : kLstmPersistentMaxBatchTile);
}

inline LstmPersistentPlan plan_lstm_persistent(int hidden, int proj, int batch, int element_bytes, bool backward,
                                               const LstmDeviceLimits& device) {
  LstmPersistentPlan plan;
  if (element_bytes != 2) {
    plan.refusal = "the persistent kernel computes on tensor cores in 16-bit types (bfloat16, float16)";
    return plan;
  }
  if (proj != hidden) {
    plan.refusal = "proj_size: the persistent kernel runs layers without a projection";
    return plan;
  }
  if (!lstm_persistent_tiles(hidden, &plan.units, &plan.k_split)) {
    plan.refusal = "hidden_size: the persistent kernel's tiles cover 128, 256, 512 and 1024";
    return plan;
  }
  if (device.major < 8) {
    plan.refusal = "the persistent kernel needs sm_80 or newer";
    return plan;
  }
  if (batch < 1) {
    plan.refusal = "an empty batch";
    return plan;
  }
  plan.ctas = hidden / plan.units;
  plan.m_tiles = 4 * plan.units / 16;
  plan.weight_registers = hidden / 16 / plan.k_split * 4;
  if (plan.ctas > device.multiprocessors) {
    plan.refusal = "the persistent kernel needs more co-resident blocks than the device has multiprocessors";
    return plan;
  }
  plan.exchange = device.major >= 9 && plan.ctas <= device.max_cluster ? LstmExchange::kCluster : LstmExchange::kGrid;
  plan.resident_groups = device.multiprocessors / plan.ctas;
  // the largest tile the registers (forward accumulators; backward partial sums) and shared memory take
  int most = lstm_persistent_max_tile(hidden, backward);
  while (most > 8 && lstm_persistent_shared_bytes(hidden, plan.units, plan.ctas, most, plan.k_split, backward) >
                         device.shared_per_block) {
    most /= 2;
  }
  if (lstm_persistent_shared_bytes(hidden, plan.units, plan.ctas, most, plan.k_split, backward) >
      device.shared_per_block) {
    plan.refusal = "the persistent kernel's buffers exceed the shared memory a block may take";
    return plan;
  }
  // spread the batch over the groups the device holds at once: a tile of 8, 16, 32 or 64 rows
  const int per_group = (batch + plan.resident_groups - 1) / plan.resident_groups;
  int tile = 8;
  while (tile < per_group && tile < most) tile *= 2;
  plan.batch_tile = tile;
  plan.groups = (batch + tile - 1) / tile;
  plan.shared_bytes = lstm_persistent_shared_bytes(hidden, plan.units, plan.ctas, tile, plan.k_split, backward);
  return plan;
}

}  // namespace kernels
}  // namespace fastseq
