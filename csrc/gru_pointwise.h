// The GRU cell's pointwise maths, written once for every backend, as
// lstm_pointwise.h is for the LSTM (whose activations it shares): templates
// over a scalar (CUDA, CPU tails) or an at::vec::Vectorized (CPU SIMD body).
//
// Gate order everywhere is r, z, n (torch.nn.GRU's). Per element, with the
// input projections gi = W_i x + b_i and the recurrent ones gh = W_h h + b_h:
//   r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z)
//   n = tanh(gi_n + r * gh_n),  h' = n + z * (h - n)   (= (1 - z) n + z h)
// gh_n (the "hidden n", W_hn h + b_hn) sits inside r * (...), so unlike the
// LSTM's gates it cannot be summed into the input projection: the forward
// keeps it for the backward.
#pragma once

#include "lstm_pointwise.h"

namespace lstm_ext {

// Forward of one element: the summed pre-activations of r and z, the input
// projection of n and the hidden n in; the activated gates and h out.
template <typename T>
LSTM_HOST_DEVICE void gru_forward_point(const T& pre_r, const T& pre_z, const T& input_n, const T& hidden_n,
                                        const T& h_prev, T& r, T& z, T& n, T& h) {
  r = lstm_sigmoid(pre_r);
  z = lstm_sigmoid(pre_z);
  n = lstm_tanh(input_n + r * hidden_n);
  h = n + z * (h_prev - n);
}

// Backward of one element. Inputs: the activated gates, the hidden n and
// h_prev saved by the forward, and the gradient of h. Outputs: the gradients
// of the pre-activations of r, z and n (the input projection's gradient; the
// recurrent product's is the same for r and z), of the hidden n (the
// recurrent product's n part), and the direct part of h_prev's gradient,
// grad_h * z (the rest reaches h_prev through the recurrent product).
template <typename T>
LSTM_HOST_DEVICE void gru_backward_point(const T& r, const T& z, const T& n, const T& hidden_n, const T& h_prev,
                                         const T& grad_h, T& grad_pre_r, T& grad_pre_z, T& grad_pre_n,
                                         T& grad_hidden_n, T& grad_h_prev) {
  const T one(1);
  grad_pre_n = grad_h * (one - z) * (one - n * n);
  grad_pre_z = grad_h * (h_prev - n) * z * (one - z);
  grad_pre_r = grad_pre_n * hidden_n * r * (one - r);
  grad_hidden_n = grad_pre_n * r;
  grad_h_prev = grad_h * z;
}

}  // namespace lstm_ext
