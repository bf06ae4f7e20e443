// A PackedSequence's batch_sizes as the layer operators take them (the
// LSTM's and GRU's in lstm_ops.cpp, the LayerNorm LSTM's in
// layernorm_lstm_ops.cpp): checked, with the row indices a layer needs.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "lstm_kernels.h"

namespace lstm_ext {

using at::Tensor;

// A PackedSequence's batch_sizes, checked against the layer's rows (input
// [N, I], h0 [B, ...]), and the row indices the layer needs from them.
struct PackedRows {
  std::vector<int64_t> sizes;  // per step, non-increasing, the first B
  cpu::StepLayout layout;
  int64_t batch;

  PackedRows(const char* op, const Tensor& batch_sizes, int64_t rows, int64_t batch_rows)
      : sizes(checked(op, batch_sizes, rows, batch_rows)),
        layout(static_cast<int64_t>(sizes.size()), batch_rows, sizes.data()),
        batch(batch_rows) {}

  static std::vector<int64_t> checked(const char* op, const Tensor& batch_sizes, int64_t rows, int64_t batch) {
    TORCH_CHECK_TYPE(batch_sizes.scalar_type() == at::kLong && batch_sizes.dim() == 1 && batch_sizes.is_cpu(), op,
                     ": batch_sizes must be a 1-D int64 CPU tensor (a PackedSequence's), got a ",
                     batch_sizes.dim(), "-D ", batch_sizes.scalar_type(), " tensor on ", batch_sizes.device());
    const Tensor c = batch_sizes.contiguous();
    const int64_t* p = c.const_data_ptr<int64_t>();
    std::vector<int64_t> sizes(p, p + c.numel());
    TORCH_CHECK_VALUE(!sizes.empty() && sizes[0] == batch, op, ": batch_sizes must start with the batch size ",
                      batch, " (h_0's rows), got ", c.numel() == 0 ? std::string("no steps") : std::to_string(sizes[0]));
    int64_t sum = 0;
    for (size_t t = 0; t < sizes.size(); ++t) {
      TORCH_CHECK_VALUE(sizes[t] > 0 && (t == 0 || sizes[t] <= sizes[t - 1]), op,
                        ": batch_sizes must be positive and non-increasing (sequences sorted by length, longest "
                        "first), got ", sizes[t], " at step ", t, t > 0 ? " after " + std::to_string(sizes[t - 1]) : "");
      sum += sizes[t];
    }
    TORCH_CHECK_VALUE(sum == rows, op, ": batch_sizes sum to ", sum, " but input has ", rows,
                      " rows (a PackedSequence's data)");
    return sizes;
  }
  int64_t steps() const { return static_cast<int64_t>(sizes.size()); }
  // Steps of sequence b: how many batch sizes exceed b.
  int64_t length(int64_t b) const {
    return std::partition_point(sizes.begin(), sizes.end(), [b](int64_t n) { return n > b; }) - sizes.begin();
  }
  // row(t, b) for every row (t, b) in packed order, or (per_sequence) for
  // each sequence's last step.
  std::vector<int64_t> indices(const std::function<int64_t(int64_t t, int64_t b)>& row,
                               bool per_sequence = false) const {
    std::vector<int64_t> out(per_sequence ? batch : layout.offset.back() + sizes.back());
    if (per_sequence) {
      for (int64_t b = 0; b < batch; ++b) out[b] = row(length(b) - 1, b);
    } else {
      for (int64_t t = 0; t < steps(); ++t)
        for (int64_t b = 0; b < sizes[t]; ++b) out[layout.offset[t] + b] = row(t, b);
    }
    return out;
  }
  // Row of (t, b) after each sequence is reversed within its length: the
  // reverse direction runs as a forward one over those rows (its own inverse).
  std::vector<int64_t> reversal() const {
    return indices([&](int64_t t, int64_t b) { return layout.offset[length(b) - 1 - t] + b; });
  }
  // Row of each sequence's last step, [B].
  std::vector<int64_t> last_rows() const {
    return indices([&](int64_t t, int64_t b) { return layout.offset[t] + b; }, true);
  }
};

// Row indices as an int64 tensor on the device of the tensors they index.
inline Tensor index_of(const std::vector<int64_t>& rows, const at::Device& device) {
  return at::tensor(rows, at::TensorOptions().dtype(at::kLong)).to(device);
}

}  // namespace lstm_ext
