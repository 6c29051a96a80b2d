// Last-line checks inside fastseq._C (the Python ops check arguments first, with fuller messages).
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <utility>

namespace fastseq {

inline void check_contiguous(const char* op, std::initializer_list<std::pair<const char*, at::Tensor>> tensors) {
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(!t.defined() || t.is_contiguous(), op, ": ", name, " must be contiguous");
  }
}

}  // namespace fastseq
