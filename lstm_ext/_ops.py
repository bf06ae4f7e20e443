"""Shapes of the native operators for torch.compile and meta tensors.

The operators themselves (schemas and CPU/CUDA kernels) are registered by the
native library in csrc/registration.cpp; autograd lives in functional.py.
"""
from __future__ import annotations

import torch

from lstm_ext._native import native  # noqa: F401  (registers the operators)


@torch.library.register_fake("lstm_ext::cell_forward")
def _cell_forward_fake(input, hx, cx, weight, bias):
    batch, hidden = input.shape[0], weight.shape[0] // 4
    return (
        input.new_empty(batch, hidden),
        input.new_empty(batch, hidden),
        input.new_empty(batch, 4 * hidden),
        input.new_empty(batch, input.shape[1] + hidden),
    )


@torch.library.register_fake("lstm_ext::cell_backward")
def _cell_backward_fake(grad_h, grad_c, cx, c, gates, input_hidden, weight):
    batch, hidden = c.shape
    input_size = input_hidden.shape[1] - hidden
    return (
        c.new_empty(batch, input_size),
        c.new_empty(batch, hidden),
        c.new_empty(batch, hidden),
        c.new_empty(weight.shape),
        c.new_empty(weight.shape[0]),
    )


@torch.library.register_fake("lstm_ext::layer_forward")
def _layer_forward_fake(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse):
    steps, batch = input.shape[0], input.shape[1]
    hidden = weight_hh.shape[1]
    return (
        input.new_empty(steps, batch, hidden),
        input.new_empty(batch, hidden),
        input.new_empty(batch, hidden),
        input.new_empty(steps, batch, 4 * hidden),
        input.new_empty(steps, batch, hidden),
    )


@torch.library.register_fake("lstm_ext::layer_backward")
def _layer_backward_fake(grad_output, grad_h_n, grad_c_n, input, h0, c0, weight_ih, weight_hh,
                         output, gates, cells, reverse, output_mask):
    want_input, want_h0, want_c0, want_weights = output_mask

    def like(wanted, tensor, shape):  # gradients outside output_mask are not formed
        return tensor.new_empty(shape) if wanted else None

    return (
        like(want_input, input, input.shape),
        like(want_h0, h0, h0.shape),
        like(want_c0, c0, c0.shape),
        like(want_weights, weight_ih, weight_ih.shape),
        like(want_weights, weight_hh, weight_hh.shape),
        like(want_weights, weight_hh, weight_hh.shape[0]),
    )
