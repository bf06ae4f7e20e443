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
    """

    @staticmethod
    def forward(input: Tensor, hx: Tensor, cx: Tensor, weight: Tensor, bias: Optional[Tensor]):
        return _cell_forward(input, hx, cx, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, cx, weight, bias = inputs
        _, c, gates, input_hidden = output
        ctx.mark_non_differentiable(gates, input_hidden)
        ctx.set_materialize_grads(False)  # no zero-filled [B, 4H] gradients for the saved outputs
        ctx.save_for_backward(cx, c, gates, input_hidden, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_c, _grad_gates=None, _grad_input_hidden=None):
        cx, c, gates, input_hidden, weight = ctx.saved_tensors
        if grad_h is None:
            grad_h = torch.zeros_like(c)
        if grad_c is None:
            grad_c = torch.zeros_like(c)
        grad_input, grad_hx, grad_cx, grad_weight, grad_bias = _cell_backward(
            grad_h, grad_c, cx, c, gates, input_hidden, weight)
        return grad_input, grad_hx, grad_cx, grad_weight, grad_bias if ctx.has_bias else None


def lstm_cell(input: Tensor, hx: Tuple[Tensor, Tensor], weight: Tensor,
              bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One LSTM step: ``(h, c)`` from ``input`` (B, I), ``hx = (h_prev, c_prev)``
    (B, H each), the packed ``weight`` [4H, I+H] over ``cat(input, h_prev)``
    and ``bias`` [4H], gates in the order i, f, g, o."""
    _require_pair(hx, "lstm_ext.lstm_cell", "(h_prev, c_prev)")
    if _direct((input, *hx)):
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
