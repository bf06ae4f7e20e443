// The LayerNorm LSTM's layer operators (layernorm_lstm_ops.cpp), schemas in
// registration.cpp, autograd and fakes in lstm_ext/_ops.py.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

#include "lstm_ops.h"

namespace lstm_ext {

using at::Tensor;

// The layer norms' gains and shift: all four or none (the plain LSTM).
struct LnParams {
  std::optional<Tensor> ih_weight, hh_weight, c_weight, c_bias;
};

// The layer operators' parameters, in their schema's order
// (LSTM_EXT_LN_LAYER_ARGS in registration.cpp), and their names.
#define LSTM_EXT_LN_LAYER_PARAMS                                                                                       \
  const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih, const Tensor& weight_hh,           \
      const std::optional<Tensor>& bias, const std::optional<Tensor>& ln_ih_weight,                                    \
      const std::optional<Tensor>& ln_hh_weight, const std::optional<Tensor>& ln_c_weight,                             \
      const std::optional<Tensor>& ln_c_bias, const std::optional<Tensor>& zoneout_cell_mask,                          \
      const std::optional<Tensor>& zoneout_hidden_mask, double zoneout_cell, double zoneout_hidden, bool reverse,      \
      const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& bias_hh
#define LSTM_EXT_LN_LAYER_NAMES                                                                                        \
  input, h0, c0, weight_ih, weight_hh, bias, ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias,                       \
      zoneout_cell_mask, zoneout_hidden_mask, zoneout_cell, zoneout_hidden, reverse, batch_sizes, bias_hh

// (output, h_n, c_n, gates, cells, ih, ih_mean, ih_rstd, hh_norm, stats).
using LnLayerOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// One layer and direction over the sequence: input [T, B, I], h0 and c0
// [B, H], weight_ih [4H, I], weight_hh [4H, H], bias [4H] (the one bias),
// ln_ih_weight and ln_hh_weight [4H], ln_c_weight and ln_c_bias [H] (all
// absent: no layer norm); zoneout masks [T, B, H] (d, 0 or 1, in training)
// or, where absent, the constant rate. Returns (output, h_n, c_n) and what
// the backward needs: gates [T, B, 4H] activated, cells [T, B, H] (the
// zoned c), ih [T, B, 4H] (W_ih x), ih_mean and ih_rstd [T, B, 1] (its layer
// norm's), hh_norm [T, B, 4H] (each step's normalized W_hh h), stats
// [T, B, 3] (rstd of that, mean and rstd of c~); the LN ones [0] without
// layer norm. In the compute type (float for the 16-bit types); output,
// h_n and c_n in the input's dtype. bias_hh: a second bias [4H], added to
// bias (the plain LSTM's b_hh beside b_ih; only with bias): one gradient,
// grad_bias, for both. batch_sizes: a PackedSequence's, as the
// LSTM's layer operators take it (lstm_ops.h): input [N, I], every [T, B,
// ...] buffer [N, ...] instead (masks included).
LnLayerOutputs ln_lstm_layer_forward(LSTM_EXT_LN_LAYER_PARAMS);

// The same output, h_n and c_n (bitwise), keeping nothing for a backward.
std::tuple<Tensor, Tensor, Tensor> ln_lstm_layer_inference(LSTM_EXT_LN_LAYER_PARAMS);

// Backpropagation through time. Returns (grad_input, grad_h0, grad_c0,
// grad_weight_ih, grad_weight_hh, grad_bias, grad_ln_ih_weight,
// grad_ln_hh_weight, grad_ln_c_weight, grad_ln_c_bias); grad_bias undefined
// unless has_bias, the LN ones without layer norm. A missing grad_h_n or
// grad_c_n counts as zeros.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ln_lstm_layer_backward(
    const Tensor& grad_output, const std::optional<Tensor>& grad_h_n, const std::optional<Tensor>& grad_c_n,
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih, const Tensor& weight_hh,
    bool has_bias, const std::optional<Tensor>& ln_ih_weight, const std::optional<Tensor>& ln_hh_weight,
    const std::optional<Tensor>& ln_c_weight, const std::optional<Tensor>& ln_c_bias,
    const std::optional<Tensor>& zoneout_cell_mask, const std::optional<Tensor>& zoneout_hidden_mask,
    double zoneout_cell, double zoneout_hidden, bool reverse, const Tensor& output, const Tensor& gates,
    const Tensor& cells, const Tensor& ih, const Tensor& ih_mean, const Tensor& ih_rstd, const Tensor& hh_norm,
    const Tensor& stats, const std::optional<Tensor>& batch_sizes);

// Their handles through the dispatcher, each looked up once (lstm_ops.h).
LSTM_EXT_OPERATOR_HANDLE(ln_lstm_layer_forward)
LSTM_EXT_OPERATOR_HANDLE(ln_lstm_layer_inference)
LSTM_EXT_OPERATOR_HANDLE(ln_lstm_layer_backward)

// The Autograd-key kernels (lstm_autograd.cpp): the forward's node calls
// ln_lstm_layer_backward; the inference operator runs as the forward where
// a graph is needed.
LnLayerOutputs ln_lstm_layer_forward_autograd(LSTM_EXT_LN_LAYER_PARAMS);
std::tuple<Tensor, Tensor, Tensor> ln_lstm_layer_inference_autograd(LSTM_EXT_LN_LAYER_PARAMS);

// Zoneout's masks: a tensor of `size` with like's dtype and device (CPU)
// holding 1 with probability rate, else 0, drawn by Philox4x32-10 from seed
// (one int64 on the CPU, itself drawn from torch's generator by the caller):
// several times faster than bernoulli_ (a full-rate draw per element).
Tensor zoneout_mask(const Tensor& like, const Tensor& seed, at::IntArrayRef size, double rate);

// Zoneout's masks (c's, then h's) for one layer and direction in training,
// of `size` ([T, B, H], or [N, H] packed), drawn as
// lstm_ext.reference.zoneout_masks draws them one after the other (the same
// numbers from torch's generator): none where a rate is 0. The lstm
// operator's driver and, through lstm_ext._C.zoneout_masks, LayerNormLSTM's.
std::array<std::optional<Tensor>, 2> zoneout_draws(const std::array<double, 2>& rates, const Tensor& like,
                                                   at::IntArrayRef size);

// zoneout_mask's kernel on a CPU tensor's options, the seed a value (the
// lstm operator's driver, which has it at hand: no dispatch, no item()).
Tensor philox_zoneout_mask(const Tensor& like, uint64_t seed, at::IntArrayRef size, double rate);

}  // namespace lstm_ext
