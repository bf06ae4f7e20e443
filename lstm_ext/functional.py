"""The fused cell as a differentiable function."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from lstm_ext import _ops  # noqa: F401  (operators and their fake implementations)
from lstm_ext._native import native

# The overloads themselves: calling the packet resolves the overload on every call.
_cell_forward = torch.ops.lstm_ext.cell_forward.default
_cell_backward = torch.ops.lstm_ext.cell_backward.default


def _direct(tensors: tuple) -> bool:
    """Whether to call an operator through its direct binding in lstm_ext._C (the
    same operator, without torch.ops' argument parsing: ~10-25 us per call on a
    slow CPU) rather than through torch.ops, which torch.compile traces and
    __torch_function__ overrides (modes, tensor subclasses) see."""
    return not torch.compiler.is_compiling() and not torch._C._has_torch_function(tensors)


class LSTMCellFunction(torch.autograd.Function):
    """The cell's autograd in Python, over the forward and backward operators.

    ``apply(input, hx, cx, weight, bias)`` returns ``(h, c, gates, input_hidden)``;
    the last two are what the backward needs and are not differentiable.

    The operator ``torch.ops.lstm_ext.cell_forward`` is itself differentiable
    through the same maths registered in C++ (csrc/lstm_autograd.cpp), which
    ``lstm_cell`` and the modules use: it saves the ~60 us that any Python
    autograd.Function costs per call. This class is the readable equivalent,
    tested to give the same gradients.

    The backward is differentiable: with ``create_graph=True`` (gradient
    penalties, meta-learning) it is written in torch ops from the saved
    inputs (:func:`_cell_backward_differentiable`), so second derivatives are
    exact; otherwise it is the fused backward operator.
    """

    @staticmethod
    def forward(input: Tensor, hx: Tensor, cx: Tensor, weight: Tensor, bias: Optional[Tensor]):
        """input (B, I), hx and cx (B, H), weight [4H, I+H], bias [4H] or None ->
        (h, c, gates [B, 4H], input_hidden [B, I+H])."""
        return _cell_forward(input, hx, cx, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        """Saves the inputs (for a differentiable backward) and what the fused backward reads."""
        input, hx, cx, weight, bias = inputs
        _, c, gates, input_hidden = output
        ctx.mark_non_differentiable(gates, input_hidden)
        ctx.set_materialize_grads(False)  # no zero-filled [B, 4H] gradients for the saved outputs
        ctx.save_for_backward(input, hx, cx, weight, bias, c, gates, input_hidden)

    @staticmethod
    def backward(ctx, grad_h, grad_c, _grad_gates=None, _grad_input_hidden=None):
        """Gradients of input, hx, cx, weight and bias; differentiable under create_graph=True."""
        input, hx, cx, weight, bias, c, gates, input_hidden = ctx.saved_tensors
        if grad_h is None:
            grad_h = torch.zeros_like(c)
        if grad_c is None:
            grad_c = torch.zeros_like(c)
        if torch.is_grad_enabled():  # create_graph=True: the backward must itself be differentiable
            grads = _cell_backward_differentiable(input, hx, cx, weight, bias, grad_h, grad_c)
        else:
            grads = _cell_backward(grad_h, grad_c, cx, c, gates, input_hidden, weight)
        grad_input, grad_hx, grad_cx, grad_weight, grad_bias = grads
        return grad_input, grad_hx, grad_cx, grad_weight, grad_bias if bias is not None else None


def _cell_backward_differentiable(input: Tensor, hx: Tensor, cx: Tensor, weight: Tensor, bias: Optional[Tensor],
                                  grad_h: Tensor, grad_c: Tensor):
    """The cell's backward in differentiable torch ops: the gates recomputed from
    the inputs, then the chain rule of h = o * tanh(c), c = f * cx + i * g.
    Returns (grad_input, grad_hx, grad_cx, grad_weight, grad_bias)."""
    input_hidden = torch.cat((input, hx), 1)
    preact = input_hidden @ weight.t()
    if bias is not None:
        preact = preact + bias
    pre_i, pre_f, pre_g, pre_o = preact.chunk(4, 1)
    i, f, g, o = torch.sigmoid(pre_i), torch.sigmoid(pre_f), torch.tanh(pre_g), torch.sigmoid(pre_o)
    tanh_c = torch.tanh(f * cx + i * g)
    grad_c_total = grad_c + grad_h * o * (1 - tanh_c * tanh_c)
    grad_gates = torch.cat((grad_c_total * g * i * (1 - i),  # i
                            grad_c_total * cx * f * (1 - f),  # f
                            grad_c_total * i * (1 - g * g),  # g
                            grad_h * tanh_c * o * (1 - o)), 1)  # o
    grad_input, grad_hx = (grad_gates @ weight).split([input.shape[1], hx.shape[1]], 1)
    return grad_input, grad_hx, grad_c_total * f, grad_gates.t() @ input_hidden, grad_gates.sum(0)


def lstm_cell(input: Tensor, hx: Tuple[Tensor, Tensor], weight: Tensor,
              bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One LSTM step: ``(h, c)`` from ``input`` (B, I), ``hx = (h_prev, c_prev)``
    (B, H each), the packed ``weight`` [4H, I+H] over ``cat(input, h_prev)``
    and ``bias`` [4H], gates in the order i, f, g, o."""
    _require_pair(hx, "lstm_ext.lstm_cell", "(h_prev, c_prev)")
    if _direct((input, *hx, weight, bias)):
        return native.cell_forward(input, hx[0], hx[1], weight, bias)
    h, c, _, _ = _cell_forward(input, hx[0], hx[1], weight, bias)
    return h, c


def _require_pair(hx, where: str, names: str) -> None:
    """A state must be a pair of tensors, never one tensor that would be unpacked along dim 0."""
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"{where}: hx must be a pair {names}, got {_describe(hx)}")


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__
