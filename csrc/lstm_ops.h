// The operators' ATen-level implementations, shared by the CPU and CUDA
// dispatch keys: matrix products and allocation through ATen, pointwise work
// through the backend's launcher in lstm_kernels.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace lstm_ext {

using at::Tensor;

// Returns (h, c, gates, input_hidden): the new state, then what the backward
// needs (the activated gates [B, 4H] and cat(input, hx) [B, I+H]).
std::tuple<Tensor, Tensor, Tensor, Tensor> cell_forward(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& weight,
    const std::optional<Tensor>& bias);

// Returns (grad_input, grad_hx, grad_cx, grad_weight, grad_bias).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> cell_backward(
    const Tensor& grad_h, const Tensor& grad_c, const Tensor& cx, const Tensor& c_new,
    const Tensor& gates, const Tensor& input_hidden, const Tensor& weight);

// One layer, one direction, the whole sequence: input [T, B, I], state [B, H],
// weight_ih [4H, I], weight_hh [4H, H]. Returns (output [T, B, H], h_n, c_n,
// gates [T, B, 4H] activated, cells [T, B, H]); the last two are saved for the
// backward. reverse runs the time loop from T-1 down to 0. With weight_hr
// [P, H] (torch.nn.LSTM's proj_size P), h is projected, h_t = W_hr (o_t *
// tanh(c_t)): weight_hh is [4H, P], and h0, h_n and output have P columns.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> layer_forward(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, bool reverse, const std::optional<Tensor>& weight_hr,
    const std::optional<Tensor>& batch_sizes);

// layer_forward without what a backward needs: the same output, h_n and c_n
// (bitwise), but no gates or cells returned, and only two steps' c kept while
// it runs. For calls that need no gradient (no_grad, inference_mode, nothing
// requiring grad); called where one is needed, its Autograd kernel runs
// layer_forward instead, so the outputs are differentiable.
std::tuple<Tensor, Tensor, Tensor> layer_inference(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, bool reverse, const std::optional<Tensor>& weight_hr,
    const std::optional<Tensor>& batch_sizes);

// Backpropagation through time for layer_forward. Returns (grad_input,
// grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias); grad_bias is
// the gradient of both bias_ih and bias_hh. A missing grad_h_n or grad_c_n
// (nothing used h_n or c_n, the usual case) counts as zeros. output_mask, as
// in ATen's RNN backwards, says which gradients to form: (input, h0, c0,
// weights); the others are returned undefined and their products skipped.
// With weight_hr, grad_weight_hr follows (undefined without it).
//
// batch_sizes (the LSTM's and the GRU's layer operators): the sequences of
// a PackedSequence, sorted by length (batch_sizes its int64 CPU tensor, one
// non-increasing entry per step, the first B): input [N, I] its data (N the
// sum of batch_sizes), output [N, H] packed alike, gates and cells [N, ...],
// each step over its own sequences only; h_n and c_n are each sequence's
// state at its own last step, and the reverse direction starts each
// sequence at its own last step.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layer_backward(
    const std::optional<Tensor>& grad_output, const std::optional<Tensor>& grad_h_n,
    const std::optional<Tensor>& grad_c_n, const Tensor& input, const Tensor& h0, const Tensor& c0,
    const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& output, const Tensor& gates,
    const Tensor& cells, bool reverse, std::array<bool, 4> output_mask, const std::optional<Tensor>& weight_hr,
    const std::optional<Tensor>& batch_sizes);

// The GRU's layer operators, over the same engine (gates r, z, n; no c):
// input [T, B, I], h0 [B, H], weight_ih [3H, I], weight_hh [3H, H], biases
// [3H]. gru_layer_forward returns (output, h_n, gates [T, B, 3H] activated,
// hidden_n [T, B, H]: each step's W_hn h + b_hn), the last two saved for the
// backward; gru_layer_inference keeps neither. gru_layer_backward's
// output_mask is (input, h0, weights); it returns (grad_input, grad_h0,
// grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh).
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_layer_forward(
    const Tensor& input, const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh, bool reverse,
    const std::optional<Tensor>& batch_sizes);
std::tuple<Tensor, Tensor> gru_layer_inference(
    const Tensor& input, const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh, bool reverse,
    const std::optional<Tensor>& batch_sizes);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_layer_backward(
    const std::optional<Tensor>& grad_output, const std::optional<Tensor>& grad_h_n, const Tensor& input,
    const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& output, const Tensor& gates,
    const Tensor& hidden_n, bool reverse, std::array<bool, 3> output_mask, const std::optional<Tensor>& batch_sizes);

// torch.nn.LSTM's forward (lstm_layers.cpp): input (T, B, I), (B, T, I) when
// batch_first, or (T, I) unbatched; hx empty (zero states) or (h_0, c_0),
// each (layers * directions, B, H); params per layer and direction
// weight_ih, weight_hh[, bias_ih, bias_hh]. Returns (output, h_n, c_n). A
// composite of layer_forward calls, so autograd and torch.compile see those.
// With a zoneout rate above 0, each layer and direction runs
// ln_lstm_layer_forward without layer norms instead, with masks drawn from
// torch's generator in training (lstm_ext.reference.zoneout_masks' draws).
std::tuple<Tensor, Tensor, Tensor> lstm(const Tensor& input, at::TensorList hx, at::TensorList params,
                                        bool has_biases, int64_t num_layers, double dropout, bool train,
                                        bool bidirectional, bool batch_first, double zoneout_cell = 0.0,
                                        double zoneout_hidden = 0.0);

// torch.nn.GRU's forward, the same driver over the GRU's layer operators:
// hx empty or (h_0,); params per layer and direction weight_ih, weight_hh[,
// bias_ih, bias_hh]. Returns (output, h_n).
std::tuple<Tensor, Tensor> gru(const Tensor& input, at::TensorList hx, at::TensorList params, bool has_biases,
                               int64_t num_layers, double dropout, bool train, bool bidirectional, bool batch_first);

// The two drivers over a PackedSequence (data (N, I), batch_sizes,
// sorted_indices and unsorted_indices, the last two none for a batch that
// came sorted): output (N, D * H) packed the same way, h_n (and c_n) each
// sequence's state at its own end; hx and the states in the caller's
// order, as torch.nn's. Not operators (a
// fake of them would need batch_sizes' values for the states' batch): the
// eager modules' direct path; under torch.compile lstm_ext.packed runs the
// same layers from Python.
std::tuple<Tensor, Tensor, Tensor> lstm_packed(const Tensor& data, const Tensor& batch_sizes,
                                               const std::optional<Tensor>& sorted_indices,
                                               const std::optional<Tensor>& unsorted_indices, at::TensorList hx,
                                               at::TensorList params, bool has_biases, int64_t num_layers,
                                               double dropout, bool train, bool bidirectional);
std::tuple<Tensor, Tensor> gru_packed(const Tensor& data, const Tensor& batch_sizes,
                                      const std::optional<Tensor>& sorted_indices,
                                      const std::optional<Tensor>& unsorted_indices, at::TensorList hx,
                                      at::TensorList params, bool has_biases, int64_t num_layers, double dropout,
                                      bool train, bool bidirectional);

// An uninitialised tensor; on the CPU from 1 MiB up its memory comes from
// the buffer pool (buffer_pool.cpp), not a fresh mmap whose page faults cost
// more than filling it.
Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Switches CPU tensors between the CPU's own code (true, the default) and
// the device-generic path that CUDA tensors take (ATen products, one ATen
// product and one pointwise launch per step), so that the tests check that
// path's logic on a machine without a GPU. Returns the previous setting.
bool set_cpu_specialized(bool enabled);

// Whether a tensor takes the CPU's own code (the fused time loop, small and
// packed products, plain copies) rather than the device-generic path that
// CUDA tensors take: on the CPU, unless tests switched to the generic path.
bool cpu_specialized(const Tensor& t);

// The products of a whole sequence as the layer operators form them (on the
// CPU: packed brgemm panels for float with many rows, the long-K path for
// weight gradients, small products on the calling thread; else ATen's):
// [bias +] a @ b for a [M, K], b [K, N]; and grad^T @ rows, [N, C], for grad
// [K, N] contiguous and rows [K, C] (K = the sequence's rows).
Tensor sequence_product(const Tensor& a, const Tensor& b, const Tensor& bias = Tensor());
Tensor sequence_weight_grad(const Tensor& grad, const Tensor& rows);
// grad^T @ (the h each step started from), [N, R], for grad [T*B, N] and a
// padded output [T, B, R]: without a copy of the shifted outputs before the
// long-K path's transpose.
Tensor recurrent_weight_grad(const Tensor& grad, const Tensor& output, const Tensor& h0, bool reverse);

// The layer operators' small pieces, shared by every cell (on the CPU plain
// loops and copies where an ATen call costs more than the work at small
// sizes): the bias gradient, the column sums of grad_gates [rows, G];
// step t of a contiguous [T, B, H] sequence as a tensor of its own; and the
// h each step started from, in time order [T, B, H] (h_0, then the outputs
// shifted by one step; the other way round when reverse).
Tensor bias_grad(const Tensor& grad_gates);
Tensor copy_step(const Tensor& sequence, int64_t t);
// A new contiguous copy of t in dtype; a new zero-filled tensor.
Tensor owned_copy(const Tensor& t, at::ScalarType dtype);
Tensor zeros_of(at::IntArrayRef sizes, const at::TensorOptions& options);
Tensor previous_states(const Tensor& output, const Tensor& h0, bool reverse);
// Rows of first [M, C] (indices below M) and then of second, as a new
// [rows, C] tensor: on the CPU one memcpy per row (at small sizes an
// index_select and its index tensor cost more than the copies), else cat and
// index_select.
Tensor take_rows(const Tensor& first, const std::vector<int64_t>& rows, const Tensor& second = Tensor());

// For a PackedSequence's batch_sizes: the row of (t, b) once each sequence is
// reversed within its length (what the reverse direction runs over; its own
// inverse).
std::vector<int64_t> packed_reversal(const Tensor& batch_sizes);

// An operator's handle through the dispatcher (all its keys, autograd
// included: a caller below them holds an AutoDispatchBelowADInplaceOrView).
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The handles of the operators above, each looked up once for the library
// (layernorm_lstm_ops.h makes its operators' the same way).
#define LSTM_EXT_OPERATOR_HANDLE(NAME)                                      \
  inline const c10::TypedOperatorHandle<decltype(NAME)>& NAME##_op() {      \
    static const auto op = find_op<decltype(NAME)>("lstm_ext::" #NAME);     \
    return op;                                                              \
  }
LSTM_EXT_OPERATOR_HANDLE(cell_forward)
LSTM_EXT_OPERATOR_HANDLE(cell_backward)
LSTM_EXT_OPERATOR_HANDLE(layer_forward)
LSTM_EXT_OPERATOR_HANDLE(layer_inference)
LSTM_EXT_OPERATOR_HANDLE(layer_backward)
LSTM_EXT_OPERATOR_HANDLE(lstm)
LSTM_EXT_OPERATOR_HANDLE(gru_layer_forward)
LSTM_EXT_OPERATOR_HANDLE(gru_layer_inference)
LSTM_EXT_OPERATOR_HANDLE(gru_layer_backward)
LSTM_EXT_OPERATOR_HANDLE(gru)

// The Autograd-key kernels (lstm_autograd.cpp).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> layer_forward_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, bool reverse, const std::optional<Tensor>& weight_hr,
    const std::optional<Tensor>& batch_sizes);
std::tuple<Tensor, Tensor, Tensor> layer_inference_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, bool reverse, const std::optional<Tensor>& weight_hr,
    const std::optional<Tensor>& batch_sizes);
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_layer_forward_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh, bool reverse,
    const std::optional<Tensor>& batch_sizes);
std::tuple<Tensor, Tensor> gru_layer_inference_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh, bool reverse,
    const std::optional<Tensor>& batch_sizes);
// layer_forward_autograd and gru_layer_forward_autograd, with h_n (and c_n)
// returned and given to the graph as [1, B, ...] where leading_one (the
// layer's node takes their gradients so): run_stack's final states for one
// layer and direction without a view node between them and the layer's.
// Only where the dispatcher would call the Autograd kernel itself
// (dispatches_to_autograd).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> layer_forward_graph(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, bool reverse, const std::optional<Tensor>& weight_hr,
    const std::optional<Tensor>& batch_sizes, bool leading_one);
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_layer_forward_graph(
    const Tensor& input, const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh, bool reverse,
    const std::optional<Tensor>& batch_sizes, bool leading_one);
// Whether a call with these tensors needs a graph node: grad mode on and one
// of them requiring grad (forward-mode AD is an error).
bool needs_graph(const char* op, std::initializer_list<const Tensor*> tensors,
                 std::initializer_list<const std::optional<Tensor>*> optional);
std::tuple<Tensor, Tensor, Tensor, Tensor> cell_forward_autograd(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& weight,
    const std::optional<Tensor>& bias);

}  // namespace lstm_ext
