// pack_padded_sequence and pad_packed_sequence as one gather and one scatter
// of rows (lstm_ext.pack_padded_sequence, lstm_ext.pad_packed_sequence).
//
// torch.nn.utils.rnn's versions are a sort, an index_select of the whole
// batch, a concatenation of per-step slices and, back, the slices' own
// backward: at the course's size (B=100, T=5) packing with its backward costs
// 48 us against our 26 (a padded LSTM forward+backward: ~62; AMD EPYC, Zen
// 5). Here the row of the padded batch that each packed row comes from is
// computed once (integers, on the CPU, by PackedRows), and the data move is
// one index_select (pack) or one index_copy_ (pad), each with autograd's own
// one-node backward. The results are torch's, bit for bit: the same sort, the
// same rows.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace lstm_ext {

// (data, batch_sizes, sorted_indices, unsorted_indices) of torch's
// pack_padded_sequence(input, lengths, batch_first, enforce_sorted); the
// indices are undefined tensors when enforce_sorted. nullopt where torch's
// own function should run to raise its error (lengths not a 1-D CPU int64
// tensor, an empty batch). Raises itself where the lengths do not fit the
// input (a count other than the batch's, a length outside [1, T], which
// torch's function does not check) or are unsorted with enforce_sorted.
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> pack_padded_rows(
    const at::Tensor& input, const at::Tensor& lengths, bool batch_first, bool enforce_sorted);

// (padded, lengths) of torch's pad_packed_sequence over a PackedSequence's
// fields (unsorted_indices undefined when the batch was sorted); total_length
// < 0 means the longest sequence's. nullopt where torch's own function should
// run (batch_sizes or unsorted_indices not on the CPU, total_length shorter
// than the longest sequence).
std::optional<std::tuple<at::Tensor, at::Tensor>> pad_packed_rows(
    const at::Tensor& data, const at::Tensor& batch_sizes, const at::Tensor& unsorted_indices, bool batch_first,
    double padding_value, int64_t total_length);

}  // namespace lstm_ext
