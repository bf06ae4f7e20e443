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
