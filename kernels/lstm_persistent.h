// The persistent LSTM layer (no projection, bfloat16 or float16): the whole sequence in one launch, W_hh in
// registers for all of it (kernels/lstm_persistent_plan.h says how a layer is laid out, and what it
// refuses). Torch-free: raw pointers, sizes, a stream. Semantics: fastseq/ops/lstm/reference.py; the
// algorithm step by step: fastseq/ops/lstm/persistent.py.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "lstm_persistent_plan.h"

namespace fastseq {
namespace kernels {

enum class LstmElement : int { kBFloat16 = 0, kFloat16 = 1 };

struct LstmPersistentForward {
  const void* zx = nullptr;         // (T, B, 4H): the input projection of every step, bias included
  const void* w_hh = nullptr;       // (4H, H)
  const void* h0 = nullptr;         // (B, H)
  const void* c0 = nullptr;         // (B, H)
  const int32_t* lengths = nullptr; // (B,) sorted or not; null: every row runs all T steps
  void* y = nullptr;                // (T, B, H): zero where a row is inactive
  void* h_n = nullptr;              // (B, H)
  void* c_n = nullptr;              // (B, H)
  void* gates_ws = nullptr;         // (T, B, 4H) the pre-activations, or null (no gradient needed)
  float* c_ws = nullptr;            // (T, B, H) the cell state after each step, or null
  void* exchange = nullptr;         // grid exchange: [launched groups][2][H][tile] elements
  uint32_t* flags = nullptr;        // grid exchange: [launched groups][ctas], zeroed
  int T = 0, B = 0;
  bool reverse = false;
};

struct LstmPersistentBackward {
  const void* grad_y = nullptr;     // (T, B, H)
  const void* grad_h_n = nullptr;   // (B, H)
  const void* grad_c_n = nullptr;   // (B, H)
  const void* gates_ws = nullptr;   // (T, B, 4H)
  const float* c_ws = nullptr;      // (T, B, H)
  const void* c0 = nullptr;         // (B, H)
  const void* w_hh = nullptr;       // (4H, H)
  const int32_t* lengths = nullptr;
  void* dz_ws = nullptr;            // (T, B, 4H): the gates' gradients, for the weight GEMMs after
  void* grad_h0 = nullptr;          // (B, H)
  void* grad_c0 = nullptr;          // (B, H)
  float* exchange = nullptr;        // grid exchange: [launched groups][2][ctas][ctas][units][tile] partial sums
  uint32_t* flags = nullptr;        // grid exchange: [launched groups][ctas], zeroed
  int T = 0, B = 0;
  bool reverse = false;
};

// The number of groups a launch runs at once (`plan.groups` when all fit) and the exchange it takes, after
// asking the device what it can hold: a cluster exchange whose clusters the device cannot place becomes
// the grid exchange. Fails (cudaErrorNotSupported) when neither can hold one group.
cudaError_t lstm_persistent_launch_shape(const LstmPersistentPlan& plan, LstmElement element, bool backward,
                                         LstmExchange* exchange, int* launched_groups);

cudaError_t lstm_persistent_forward(const LstmPersistentForward& args, const LstmPersistentPlan& plan,
                                    LstmElement element, LstmExchange exchange, int launched_groups,
                                    cudaStream_t stream);

cudaError_t lstm_persistent_backward(const LstmPersistentBackward& args, const LstmPersistentPlan& plan,
                                     LstmElement element, LstmExchange exchange, int launched_groups,
                                     cudaStream_t stream);

}  // namespace kernels
}  // namespace fastseq
