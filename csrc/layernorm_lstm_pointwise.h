// The LayerNorm LSTM's and zoneout's elementwise maths, written once for
// every backend (templates over a scalar or an at::vec::Vectorized, as
// lstm_pointwise.h, whose activations they share). The row statistics of the
// layer norms are the callers' (a reduction over a row of 4H or H entries).
//
// Per step, gates i, f, g, o (torch.nn.LSTM's order):
//   a = LN(W_ih x; g_ih) + LN(W_hh h_prev; g_hh) + b
//   c~ = sigmoid(f) c_prev + sigmoid(i) tanh(g)
//   h~ = sigmoid(o) tanh(LN(c~; g_c, b_c))      (without layer norm: tanh(c~))
//   c = c~ + d_c (c_prev - c~),  h = h~ + d_h (h_prev - h~)
// where d is zoneout's mask (0 or 1) in training and its rate in eval.
#pragma once

#include "lstm_pointwise.h"

namespace lstm_ext {

// The candidate cell c~ from the activated gates: one expression, which the
// backward also uses to recompute c~ bitwise as the forward had it (its
// normalized value is then exact even where the row's variance is tiny and
// 1 / sqrt(var + eps) magnifies any rounding difference).
template <typename T>
LSTM_HOST_DEVICE T ln_lstm_candidate(const T& i, const T& f, const T& g, const T& c_prev) {
  return f * c_prev + i * g;
}

// Forward, first stage: the activated gates and the candidate cell c~.
template <typename T>
LSTM_HOST_DEVICE void ln_lstm_gates_point(const T& pre_i, const T& pre_f, const T& pre_g, const T& pre_o,
                                          const T& c_prev, T& i, T& f, T& g, T& o, T& c_candidate) {
  i = lstm_sigmoid(pre_i);
  f = lstm_sigmoid(pre_f);
  g = lstm_tanh(pre_g);
  o = lstm_sigmoid(pre_o);
  c_candidate = ln_lstm_candidate(i, f, g, c_prev);
}

// Zoneout: the state kept from the previous step with weight d.
template <typename T>
LSTM_HOST_DEVICE T zoneout_point(const T& candidate, const T& previous, const T& d) {
  return candidate + d * (previous - candidate);
}

// Backward through h~ = o * tanh(y) for the gradient grad_h~ of h~: the
// gradient of o's pre-activation and of y.
template <typename T>
LSTM_HOST_DEVICE void ln_lstm_output_backward_point(const T& o, const T& y, const T& grad_h_candidate,
                                                    T& grad_pre_o, T& grad_y) {
  const T one(1);
  const T tanh_y = lstm_tanh(y);
  grad_pre_o = grad_h_candidate * tanh_y * o * (one - o);
  grad_y = grad_h_candidate * o * (one - tanh_y * tanh_y);
}

// Backward through c~ = f c_prev + i g for the gradient grad_c~ of c~: the
// gradients of the pre-activations of i, f, g, and c~'s share of c_prev's.
template <typename T>
LSTM_HOST_DEVICE void ln_lstm_cell_backward_point(const T& i, const T& f, const T& g, const T& c_prev,
                                                  const T& grad_c_candidate, T& grad_pre_i, T& grad_pre_f,
                                                  T& grad_pre_g, T& grad_c_prev) {
  const T one(1);
  grad_pre_i = grad_c_candidate * g * i * (one - i);
  grad_pre_f = grad_c_candidate * c_prev * f * (one - f);
  grad_pre_g = grad_c_candidate * i * (one - g * g);
  grad_c_prev = grad_c_candidate * f;
}

// Backward through a row's normalization x^ = (v - mean) * rstd scaled by
// gain: the gradient of v from the gradient grad_x of x^ * gain (gx =
// grad_x * gain), with the row means mean_gx of gx and mean_gx_x of gx * x^.
template <typename T>
LSTM_HOST_DEVICE T layer_norm_backward_point(const T& gx, const T& x_hat, const T& rstd, const T& mean_gx,
                                             const T& mean_gx_x) {
  return rstd * (gx - mean_gx - x_hat * mean_gx_x);
}

}  // namespace lstm_ext
