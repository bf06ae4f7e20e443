#include "sequence_packing.h"

#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <cstring>
#include <mutex>
#include <vector>

#include "autograd_node.h"
#include "lstm_ops.h"
#include "packed_rows.h"

namespace lstm_ext {
namespace {

// The row of the padded batch, flattened to [T * B, *] (or [B * T, *] batch
// first), of each packed row, on device. order[j] is the batch index of the
// j-th longest sequence (nullptr: j itself).
std::vector<int64_t> padded_row_list(const PackedRows& packed, const int64_t* order, int64_t time, bool batch_first) {
  return packed.indices([&](int64_t t, int64_t j) {
    const int64_t b = order != nullptr ? order[j] : j;
    return batch_first ? b * time + t : t * packed.batch + b;
  });
}

// The same as an index tensor on device.
at::Tensor padded_rows(const PackedRows& packed, const int64_t* order, int64_t time, bool batch_first,
                       const at::Device& device) {
  return index_of(padded_row_list(packed, order, time, batch_first), device);
}

// Undefined when permutation (contiguous) is not one of 0 .. n-1.
at::Tensor inverse_permutation(const at::Tensor& permutation) {
  const int64_t n = permutation.numel();
  at::Tensor inverse = at::full({n}, -1, permutation.options());
  const int64_t* p = permutation.data_ptr<int64_t>();
  int64_t* q = inverse.data_ptr<int64_t>();
  for (int64_t k = 0; k < n; ++k) {
    if (p[k] < 0 || p[k] >= n || q[p[k]] >= 0) return at::Tensor();
    q[p[k]] = k;
  }
  return inverse;
}

// The backward of gather_rows: each packed row's gradient copied back to
// the padded row it came from, zeros elsewhere (each padded row is taken at
// most once, so nothing adds up).
struct GatherRowsBackward final : torch::autograd::Node {
  std::vector<int64_t> rows;  // the padded row of each packed row
  std::vector<int64_t> padded_sizes;

  std::string name() const override { return "PackPaddedSequenceBackward"; }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return {at::Tensor()};
    if (at::GradMode::is_enabled()) {  // a double backward: differentiable ops
      std::vector<int64_t> shape = padded_sizes;
      shape.erase(shape.begin());
      shape[0] = padded_sizes[0] * padded_sizes[1];
      return {at::zeros(shape, grad.options()).index_copy(0, index_of(rows, grad.device()), grad).view(padded_sizes)};
    }
    const at::AutoDispatchBelowADInplaceOrView below;
    const at::Tensor source = grad.contiguous();
    at::Tensor padded = at::zeros(padded_sizes, grad.options());
    const int64_t row_bytes = rows.empty() ? 0 : source.nbytes() / static_cast<int64_t>(rows.size());
    const auto* from = static_cast<const char*>(source.const_data_ptr());
    auto* to = static_cast<char*>(padded.data_ptr());
    for (size_t j = 0; j < rows.size(); ++j) std::memcpy(to + rows[j] * row_bytes, from + j * row_bytes, row_bytes);
    return {padded};
  }
};

// input's rows (flattened to [T * B, *]) gathered into [rows.size(), *]: on
// a contiguous CPU tensor without forward-mode gradients, a memcpy a row
// and one hand-written node (GatherRowsBackward), where index_select over a
// reshaped view took a view node, an index_select node and, in its
// backward, zeros plus index_add_ (packing with its backward at the course's
// size, Zen 5: 25.5 -> 20 us; torch's function 48); elsewhere index_select.
at::Tensor gather_rows(const at::Tensor& input, const std::vector<int64_t>& rows) {
  std::vector<int64_t> shape(input.sizes().begin() + 1, input.sizes().end());
  shape[0] = input.size(0) * input.size(1);
  if (!input.is_cpu() || !input.is_contiguous() || !cpu_specialized(input) || input._fw_grad(0).defined()) {
    return input.reshape(shape).index_select(0, index_of(rows, input.device()));
  }
  shape[0] = static_cast<int64_t>(rows.size());
  at::Tensor packed;
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    const int64_t width = c10::multiply_integers(input.sizes().slice(2));
    packed = take_rows(input.view({input.size(0) * input.size(1), width}), rows).view(shape);
  }
  if (at::GradMode::is_enabled() && input.requires_grad()) {
    auto node = make_node<GatherRowsBackward>();
    node->rows = rows;
    node->padded_sizes = input.sizes().vec();
    node->set_next_edges(torch::autograd::collect_next_edges(input));
    torch::autograd::set_history(packed, node);
  }
  return packed;
}

bool is_cpu_long_vector(const at::Tensor& t) {
  return t.defined() && t.is_cpu() && t.dim() == 1 && t.scalar_type() == at::kLong && t.layout() == at::kStrided;
}

}  // namespace

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> pack_padded_rows(
    const at::Tensor& input, const at::Tensor& lengths, bool batch_first, bool enforce_sorted) {
  if (input.dim() < 2 || !is_cpu_long_vector(lengths)) return std::nullopt;
  const int64_t time = input.size(batch_first ? 1 : 0), batch = input.size(batch_first ? 0 : 1);
  if (batch == 0) return std::nullopt;
  // torch's function checks neither of these two: with more lengths than the
  // batch it fails in its sort's index_select, with fewer it packs the first
  // sequences only, and a length past T reads past the input's end.
  const char* batch_first_name = batch_first ? "True" : "False";
  TORCH_CHECK(lengths.size(0) == batch, "lstm_ext.pack_padded_sequence: lengths has ", lengths.size(0),
              " entries but input (shape ", input.sizes(), ", batch_first=", batch_first_name,
              ") holds a batch of ", batch);
  at::Tensor sorted_lengths = lengths.contiguous(), sorted_indices, unsorted_indices;
  if (!enforce_sorted) {
    // torch.sort(lengths, descending=True), as torch's pack_padded_sequence
    // sorts: the same order of equal lengths, so the same sorted_indices.
    std::tie(sorted_lengths, sorted_indices) = at::sort(lengths, /*dim=*/0, /*descending=*/true);
    sorted_indices = sorted_indices.contiguous();
    unsorted_indices = inverse_permutation(sorted_indices);
  }
  const int64_t* length = sorted_lengths.data_ptr<int64_t>();
  for (int64_t j = 0; j < batch; ++j) {
    TORCH_CHECK(length[j] > 0 && length[j] <= time,
                "lstm_ext.pack_padded_sequence: every entry of lengths must be in [1, ", time,
                "] (the input's time steps; input shape ", input.sizes(), ", batch_first=", batch_first_name, "), got ",
                length[j]);
    TORCH_CHECK(j == 0 || length[j] <= length[j - 1],
                "lstm_ext.pack_padded_sequence: `lengths` array must be sorted in decreasing order when "
                "`enforce_sorted` is True; pass enforce_sorted=False for unsorted sequences");
  }
  const int64_t steps = length[0];
  at::Tensor batch_sizes = at::empty({steps}, at::kLong);
  int64_t* batch_size = batch_sizes.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t t = 0, active = batch; t < steps; ++t) {
    while (length[active - 1] <= t) --active;  // length[0] > t: stops at 1
    batch_size[t] = active;
    total += active;
  }
  const PackedRows packed("lstm_ext.pack_padded_sequence", batch_sizes, total, batch);
  const int64_t* order = enforce_sorted ? nullptr : sorted_indices.data_ptr<int64_t>();
  at::Tensor data = gather_rows(input, padded_row_list(packed, order, time, batch_first));
  if (!enforce_sorted) {
    sorted_indices = sorted_indices.to(input.device());
    unsorted_indices = unsorted_indices.to(input.device());
  }
  return std::make_tuple(std::move(data), std::move(batch_sizes), std::move(sorted_indices),
                         std::move(unsorted_indices));
}

std::optional<std::tuple<at::Tensor, at::Tensor>> pad_packed_rows(
    const at::Tensor& data, const at::Tensor& batch_sizes, const at::Tensor& unsorted_indices, bool batch_first,
    double padding_value, int64_t total_length) {
  if (data.dim() < 1 || !is_cpu_long_vector(batch_sizes) || batch_sizes.size(0) == 0) return std::nullopt;
  if (unsorted_indices.defined() && !is_cpu_long_vector(unsorted_indices)) return std::nullopt;
  const int64_t steps = batch_sizes.size(0), batch = batch_sizes.const_data_ptr<int64_t>()[0];
  const int64_t time = total_length < 0 ? steps : total_length;
  if (time < steps) return std::nullopt;
  // batch_sizes that no pack produced (not positive and non-increasing, or
  // summing to other than data's rows): torch's function decides.
  std::optional<PackedRows> packed;
  try {
    packed.emplace("lstm_ext.pad_packed_sequence", batch_sizes, data.size(0), batch);
  } catch (const c10::Error&) {
    return std::nullopt;
  }
  if (unsorted_indices.defined() && unsorted_indices.size(0) != batch) return std::nullopt;
  // The j-th longest sequence's length, then each sequence's in the batch's order.
  at::Tensor lengths = at::empty({batch}, at::kLong);
  int64_t* length = lengths.data_ptr<int64_t>();
  for (int64_t j = 0; j < batch; ++j) length[j] = packed->length(j);
  at::Tensor sorted_indices;
  if (unsorted_indices.defined()) {
    const at::Tensor unsorted = unsorted_indices.contiguous();
    sorted_indices = inverse_permutation(unsorted);
    if (!sorted_indices.defined()) return std::nullopt;
    lengths = lengths.index_select(0, unsorted);
  }
  const int64_t* order = sorted_indices.defined() ? sorted_indices.data_ptr<int64_t>() : nullptr;
  std::vector<int64_t> shape(data.sizes().begin(), data.sizes().end());
  shape[0] = time * batch;
  at::Tensor padded = at::full(shape, padding_value, data.options());
  padded.index_copy_(0, padded_rows(*packed, order, time, batch_first, data.device()), data);
  shape[0] = batch_first ? batch : time;
  shape.insert(shape.begin() + 1, batch_first ? time : batch);
  return std::make_tuple(padded.view(shape), std::move(lengths));
}

}  // namespace lstm_ext
