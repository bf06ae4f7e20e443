"""ONNX export of lstm_ext's layers as ONNX's own ``LSTM`` operator, and of the
cell as its ONNX graph (MatMul, Sigmoid, Tanh, ...).

    import lstm_ext.onnx
    program = lstm_ext.onnx.export(model, (x,), dynamic_shapes={"x": {0: "batch", 1: "time"}})
    program.save("model.onnx")

``export`` is ``torch.onnx.export(..., dynamo=True)`` with
``custom_translation_table=lstm_ext.onnx.TRANSLATIONS`` added; pass that
table yourself to call torch.onnx.export directly. Each layer and direction
becomes one ONNX ``LSTM`` node: torch's gate order i, f, g, o is reordered
to ONNX's i, o, f, c, the two biases become ONNX's ``[W_b, R_b]``, and the
reverse direction is ``direction="reverse"``. Needs the ``onnx`` and
``onnxscript`` packages (``pip install onnx onnxscript``); lstm_ext itself
never imports this module.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from onnxscript import opset18 as op

from lstm_ext import _ops  # noqa: F401  (the operators)

# torch's gate blocks i, f, g, o, taken in ONNX's order i, o, f, c.
_ONNX_GATE_ORDER = (0, 3, 1, 2)


def _reorder_gates(tensor, axis: int = 0):
    blocks = op.Split(tensor, axis=axis, num_outputs=4)
    return op.Concat(*[blocks[k] for k in _ONNX_GATE_ORDER], axis=axis)


def _onnx_lstm(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse: bool):
    """One layer and direction: (output [T, B, H], h_n [B, H], c_n [B, H])."""
    hidden = weight_hh.shape[1]
    axis0 = op.Constant(value_ints=[0])
    w = op.Unsqueeze(_reorder_gates(weight_ih), axis0)
    r = op.Unsqueeze(_reorder_gates(weight_hh), axis0)
    b = None  # ONNX's optional input, left out
    if bias_ih is not None or bias_hh is not None:
        zeros = op.Mul(bias_ih if bias_ih is not None else bias_hh, op.CastLike(op.Constant(value_float=0.0),
                                                                             weight_hh))
        b = op.Unsqueeze(op.Concat(_reorder_gates(bias_ih if bias_ih is not None else zeros),
                                   _reorder_gates(bias_hh if bias_hh is not None else zeros), axis=0), axis0)
    y, y_h, y_c = op.LSTM(input, w, r, b, None, op.Unsqueeze(h0, axis0), op.Unsqueeze(c0, axis0),
                          hidden_size=hidden, direction="reverse" if reverse else "forward")
    # Y is [T, num_directions = 1, B, H].
    return op.Squeeze(y, op.Constant(value_ints=[1])), op.Squeeze(y_h, axis0), op.Squeeze(y_c, axis0)


def _no_projections(weight_hr) -> None:
    if weight_hr is not None:  # ONNX's LSTM has no projection: never export without it
        raise NotImplementedError("lstm_ext.onnx: an LSTM with projections (proj_size > 0) has no ONNX LSTM node; "
                                  "its export is not implemented")


def _layer_inference(input, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse: bool = False,
                     weight_hr=None):
    _no_projections(weight_hr)
    return _onnx_lstm(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse)


def _layer_forward(input, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse: bool = False,
                   weight_hr=None):
    # A program exported with grad on holds layer_forward; its gates and
    # cells (saved for a backward) have no use in an ONNX inference graph.
    _no_projections(weight_hr)
    output, h_n, c_n = _onnx_lstm(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse)
    gates = op.Concat(output, output, output, output, axis=2)  # placeholders of the schema's shapes, unused
    return output, h_n, c_n, gates, op.Identity(output)


def _cell_forward(input, hx, cx, weight, bias=None):
    """One cell step in ONNX ops: (h, c, gates activated [B, 4H], cat(input, hx))."""
    input_hidden = op.Concat(input, hx, axis=1)
    preact = op.MatMul(input_hidden, op.Transpose(weight, perm=[1, 0]))
    if bias is not None:
        preact = op.Add(preact, bias)
    pre_i, pre_f, pre_g, pre_o = op.Split(preact, axis=1, num_outputs=4)
    i, f, g, o = op.Sigmoid(pre_i), op.Sigmoid(pre_f), op.Tanh(pre_g), op.Sigmoid(pre_o)
    c = op.Add(op.Mul(f, cx), op.Mul(i, g))
    return op.Mul(o, op.Tanh(c)), c, op.Concat(i, f, g, o, axis=1), input_hidden


TRANSLATIONS: Dict[Any, Any] = {
    torch.ops.lstm_ext.cell_forward.default: _cell_forward,
    torch.ops.lstm_ext.layer_inference.default: _layer_inference,
    torch.ops.lstm_ext.layer_forward.default: _layer_forward,
}


def export(model: torch.nn.Module, args: tuple, kwargs: Optional[dict] = None, **options):
    """``torch.onnx.export(model, args, kwargs, dynamo=True, ...)`` with lstm_ext's translations;
    returns the ONNXProgram. ``options`` go to torch.onnx.export (``dynamic_shapes``, ``f``, ...)."""
    for module in model.modules():
        if getattr(module, "proj_size", 0):
            raise NotImplementedError(f"lstm_ext.onnx.export: {type(module).__name__} with proj_size="
                                      f"{module.proj_size}: an LSTM with projections has no ONNX LSTM node; its "
                                      "export is not implemented")
    table = dict(TRANSLATIONS)
    table.update(options.pop("custom_translation_table", None) or {})
    with torch.no_grad():  # inference: layer_inference, which keeps nothing for a backward
        return torch.onnx.export(model, args, kwargs=kwargs, dynamo=True, custom_translation_table=table, **options)
