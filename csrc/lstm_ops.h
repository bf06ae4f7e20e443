// The operators' ATen-level implementations, shared by the CPU and CUDA
// dispatch keys: matrix products and allocation through ATen, pointwise work
// through the backend's launcher in lstm_kernels.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

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

// The Autograd-key kernel of cell_forward (lstm_autograd.cpp).
std::tuple<Tensor, Tensor, Tensor, Tensor> cell_forward_autograd(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& weight,
    const std::optional<Tensor>& bias);

}  // namespace lstm_ext
