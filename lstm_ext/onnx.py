"""ONNX export of lstm_ext's layers as ONNX's own ``LSTM`` and ``GRU``
operators, and of the cells as their ONNX graphs.

    import lstm_ext.onnx
    program = lstm_ext.onnx.export(model, (x,), dynamic_shapes={"x": {0: "batch", 1: "time"}})
    program.save("model.onnx")

``export`` is ``torch.onnx.export(..., dynamo=True)`` with
``custom_translation_table=lstm_ext.onnx.TRANSLATIONS`` added; pass that
table yourself to call torch.onnx.export directly. Importing this module
also registers symbolic functions for torch.onnx's legacy TorchScript-based
exporter, so ``torch.onnx.export(model, args, f, dynamo=False,
dynamic_axes=...)`` works too (``export(..., dynamo=False)`` passes it on).

Each layer and direction becomes one ONNX ``LSTM`` or ``GRU`` node: torch's
gate order (LSTM i, f, g, o; GRU r, z, n) is reordered to ONNX's (i, o, f, c;
z, r, h), the two biases become ONNX's ``[W_b, R_b]``, the reverse direction
is ``direction="reverse"``, and the GRU's ``linear_before_reset=1`` is
torch's r * (W_hn h + b_hn). Needs the ``onnx`` and ``onnxscript`` packages
(``pip install onnx onnxscript``); lstm_ext itself never imports this module.
Not exported: projections (ONNX's LSTM has none), PackedSequence input,
zoneout, LayerNormLSTM.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from onnxscript import opset18 as op

from lstm_ext import _ops  # noqa: F401  (the operators)

# torch's gate blocks taken in ONNX's order: LSTM i, f, g, o -> i, o, f, c;
# GRU r, z, n -> z, r, h.
_ONNX_GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}


def _reorder_gates(tensor, order):
    blocks = op.Split(tensor, axis=0, num_outputs=len(order))
    return op.Concat(*[blocks[k] for k in order], axis=0)


def _onnx_rnn(kind: str, input, states, weight_ih, weight_hh, bias_ih, bias_hh, reverse: bool):
    """One layer and direction as ONNX's LSTM (states (h0, c0)) or GRU (states
    (h0,)): (output [T, B, H], *final states [B, H])."""
    order = _ONNX_GATE_ORDER[kind]
    hidden = weight_hh.shape[1]
    axis0 = op.Constant(value_ints=[0])
    w = op.Unsqueeze(_reorder_gates(weight_ih, order), axis0)
    r = op.Unsqueeze(_reorder_gates(weight_hh, order), axis0)
    b = None  # ONNX's optional input, left out
    if bias_ih is not None or bias_hh is not None:
        zeros = op.Mul(bias_ih if bias_ih is not None else bias_hh, op.CastLike(op.Constant(value_float=0.0),
                                                                             weight_hh))
        b = op.Unsqueeze(op.Concat(_reorder_gates(bias_ih if bias_ih is not None else zeros, order),
                                   _reorder_gates(bias_hh if bias_hh is not None else zeros, order), axis=0), axis0)
    initial = [op.Unsqueeze(state, axis0) for state in states]
    direction = "reverse" if reverse else "forward"
    if kind == "LSTM":
        outputs = op.LSTM(input, w, r, b, None, *initial, hidden_size=hidden, direction=direction)
    else:
        outputs = op.GRU(input, w, r, b, None, *initial, hidden_size=hidden, direction=direction,
                         linear_before_reset=1)
    # Y is [T, num_directions = 1, B, H], the final states [1, B, H].
    return (op.Squeeze(outputs[0], op.Constant(value_ints=[1])), *[op.Squeeze(y, axis0) for y in outputs[1:]])


def _no_layer_norm_lstm(*args, **kwargs):
    raise NotImplementedError("lstm_ext.onnx: the LayerNorm LSTM's operators (lstm_ext.LayerNormLSTM, and zoneout on "
                              "lstm_ext.LSTM) have no ONNX operator; their export is not implemented")


def _packed_unsupported(batch_sizes) -> None:
    if batch_sizes is not None:
        raise NotImplementedError("lstm_ext.onnx: PackedSequence input has no ONNX export (ONNX's LSTM and GRU take "
                                  "sequence_lens, not a packed batch); export the padded model")


def _no_projections(weight_hr) -> None:
    if weight_hr is not None:  # ONNX's LSTM has no projection: never export without it
        raise NotImplementedError("lstm_ext.onnx: an LSTM with projections (proj_size > 0) has no ONNX LSTM node; "
                                  "its export is not implemented")


def _layer_inference(input, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse: bool = False,
                     weight_hr=None, batch_sizes=None):
    _no_projections(weight_hr)
    _packed_unsupported(batch_sizes)
    return _onnx_rnn("LSTM", input, (h0, c0), weight_ih, weight_hh, bias_ih, bias_hh, reverse)


def _layer_forward(input, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse: bool = False,
                   weight_hr=None, batch_sizes=None):
    # A program exported with grad on holds layer_forward; its gates and
    # cells (saved for a backward) have no use in an ONNX inference graph.
    output, h_n, c_n = _layer_inference(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, weight_hr,
                                        batch_sizes)
    gates = op.Concat(output, output, output, output, axis=2)  # placeholders of the schema's shapes, unused
    return output, h_n, c_n, gates, op.Identity(output)


def _gru_layer_inference(input, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse: bool = False,
                         batch_sizes=None):
    _packed_unsupported(batch_sizes)
    return _onnx_rnn("GRU", input, (h0,), weight_ih, weight_hh, bias_ih, bias_hh, reverse)


def _gru_layer_forward(input, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse: bool = False,
                       batch_sizes=None):
    output, h_n = _gru_layer_inference(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes)
    gates = op.Concat(output, output, output, axis=2)  # placeholders of the schema's shapes, unused
    return output, h_n, gates, op.Identity(output)


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
    torch.ops.lstm_ext.gru_layer_inference.default: _gru_layer_inference,
    torch.ops.lstm_ext.gru_layer_forward.default: _gru_layer_forward,
    torch.ops.lstm_ext.ln_lstm_layer_forward.default: _no_layer_norm_lstm,
    torch.ops.lstm_ext.ln_lstm_layer_inference.default: _no_layer_norm_lstm,
}


# torch.onnx's legacy exporter traces the model (torch.jit.trace) and maps
# each recorded operator to ONNX nodes by a symbolic function. lstm_ext.LSTM
# and GRU record their whole-model `lstm` / `gru` operators, whose schemas
# are aten::lstm's and aten::gru's but for hx (a list, empty for zeros) and
# zoneout's rates: torch's own symbolic functions for those build the nodes.
# The cells record cell_forward (its ONNX graph) and, the GRU's, the layer
# operator over one step (one ONNX GRU node); lstm_layer and gru_layer
# record the layer operators (one node each).
_LEGACY_OPSET = 9  # the first opset with ONNX's LSTM and GRU as torch maps them


def _legacy_helpers():
    from torch.onnx import symbolic_helper, symbolic_opset9

    return symbolic_helper, symbolic_opset9


def _legacy_zero_states(g, input, weight_hh, count: int, batch_first: bool):
    """Zeros [count, B, H] of the input's dtype and (dynamic) batch size: the
    state of a call without hx."""
    helper, _ = _legacy_helpers()
    batch_axis = 0 if batch_first else 1
    batch = g.op("Gather", g.op("Shape", input), g.op("Constant", value_t=torch.tensor([batch_axis])), axis_i=0)
    hidden = g.op("Gather", g.op("Shape", weight_hh), g.op("Constant", value_t=torch.tensor([1])), axis_i=0)
    dims = g.op("Concat", g.op("Constant", value_t=torch.tensor([count])), batch, hidden, axis_i=0)
    dtype = helper._type_utils.JitScalarType.from_value(input).dtype()
    return g.op("ConstantOfShape", dims, value_t=torch.zeros(1, dtype=dtype))


def _legacy_whole_model(kind: str):
    def symbolic(g, input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first,
                 zoneout_cell=None, zoneout_hidden=None):
        helper, opset9 = _legacy_helpers()
        for rate in (zoneout_cell, zoneout_hidden):
            if rate is not None and helper._maybe_get_const(rate, "f"):
                _no_layer_norm_lstm()
        layers = helper._maybe_get_const(num_layers, "i") * (2 if helper._maybe_get_const(bidirectional, "i") else 1)
        weights = helper._unpack_list(params)
        if len(weights) != layers * (4 if helper._maybe_get_const(has_biases, "i") else 2):
            _no_projections(weights[-1])
        states = helper._unpack_list(hx)
        # Unbatched input (T, I) and states (layers, H): batch axis 1, as torch.nn does.
        unbatched = helper._get_tensor_rank(input) == 2
        if unbatched:
            input = helper._unsqueeze_helper(g, input, [1])
            states = [helper._unsqueeze_helper(g, state, [1]) for state in states]
        if not states:
            zeros = _legacy_zero_states(g, input, weights[1], layers,
                                        bool(helper._maybe_get_const(batch_first, "i")) and not unbatched)
            states = [zeros, zeros] if kind == "LSTM" else [zeros]
        args = (input, *((g.op("prim::ListConstruct", *states),) if kind == "LSTM" else states), params, has_biases,
                num_layers, dropout, train, bidirectional, batch_first)
        outputs = (opset9.lstm if kind == "LSTM" else opset9.gru)(g, *args)
        return tuple(helper._squeeze_helper(g, y, [1]) for y in outputs) if unbatched else outputs

    return symbolic


def _legacy_blocks(g, tensor, count: int, axis: int):
    """tensor's axis in `count` equal blocks (gate blocks), as a list."""
    helper, _ = _legacy_helpers()
    size = helper._get_tensor_sizes(tensor)[axis] // count
    return [helper._slice_helper(g, tensor, axes=[axis], starts=[k * size], ends=[(k + 1) * size])
            for k in range(count)]


def _legacy_rows(g, tensor, order):
    """tensor's first axis in len(order) equal blocks, concatenated in `order`."""
    blocks = _legacy_blocks(g, tensor, len(order), 0)
    return g.op("Concat", *[blocks[k] for k in order], axis_i=0)


def _legacy_layer(g, kind: str, input, states, weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes):
    """One layer and direction as ONNX's LSTM (states (h0, c0)) or GRU (states
    (h0,)), the legacy exporter's _onnx_rnn: (output [T, B, H], *final states)."""
    helper, opset9 = _legacy_helpers()
    if not helper._is_none(batch_sizes):
        _packed_unsupported(batch_sizes)
    order = _ONNX_GATE_ORDER[kind]
    hidden = helper._get_tensor_sizes(weight_hh)[1]
    w = helper._unsqueeze_helper(g, _legacy_rows(g, weight_ih, order), [0])
    r = helper._unsqueeze_helper(g, _legacy_rows(g, weight_hh, order), [0])
    biases = [b for b in (bias_ih, bias_hh) if not helper._is_none(b)]
    if biases:
        zeros = g.op("Sub", biases[0], biases[0])
        b = g.op("Concat", *[_legacy_rows(g, zeros if helper._is_none(v) else v, order)
                             for v in (bias_ih, bias_hh)], axis_i=0)
        b = helper._unsqueeze_helper(g, b, [0])
    else:
        b = opset9.unused(g)
    attributes = {"hidden_size_i": hidden,
                  "direction_s": "reverse" if helper._maybe_get_const(reverse, "i") else "forward"}
    if kind == "GRU":
        attributes["linear_before_reset_i"] = 1
    outputs = g.op(kind, input, w, r, b, opset9.unused(g), *[helper._unsqueeze_helper(g, s, [0]) for s in states],
                   outputs=1 + len(states), **attributes)
    return (helper._squeeze_helper(g, outputs[0], [1]), *[helper._squeeze_helper(g, y, [0]) for y in outputs[1:]])


def _legacy_lstm_layer(g, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, weight_hr=None,
                       batch_sizes=None):
    helper, _ = _legacy_helpers()
    _no_projections(None if helper._is_none(weight_hr) else weight_hr)
    return _legacy_layer(g, "LSTM", input, (h0, c0), weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes)


def _legacy_lstm_layer_forward(g, *args):
    output, h_n, c_n = _legacy_lstm_layer(g, *args)
    # gates and cells (saved for a backward): placeholders of the schema's shapes, unused.
    return output, h_n, c_n, g.op("Concat", output, output, output, output, axis_i=2), g.op("Identity", output)


def _legacy_gru_layer(g, input, h0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes=None):
    return _legacy_layer(g, "GRU", input, (h0,), weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes)


def _legacy_gru_layer_forward(g, *args):
    output, h_n = _legacy_gru_layer(g, *args)
    # gates and hidden_n (saved for a backward): placeholders of the schema's shapes, unused.
    return output, h_n, g.op("Concat", output, output, output, axis_i=2), g.op("Identity", output)


def _legacy_cell_forward(g, input, hx, cx, weight, bias):
    """One LSTM cell step as _cell_forward's graph."""
    helper, _ = _legacy_helpers()
    input_hidden = g.op("Concat", input, hx, axis_i=1)
    preact = g.op("MatMul", input_hidden, g.op("Transpose", weight, perm_i=[1, 0]))
    if not helper._is_none(bias):
        preact = g.op("Add", preact, bias)
    pre_i, pre_f, pre_g, pre_o = _legacy_blocks(g, preact, 4, 1)
    i, f, gate, o = g.op("Sigmoid", pre_i), g.op("Sigmoid", pre_f), g.op("Tanh", pre_g), g.op("Sigmoid", pre_o)
    c = g.op("Add", g.op("Mul", f, cx), g.op("Mul", i, gate))
    return g.op("Mul", o, g.op("Tanh", c)), c, g.op("Concat", i, f, gate, o, axis_i=1), input_hidden


_LEGACY_SYMBOLICS = {
    "lstm": _legacy_whole_model("LSTM"),
    "gru": _legacy_whole_model("GRU"),
    "cell_forward": _legacy_cell_forward,
    "layer_inference": _legacy_lstm_layer,
    "layer_forward": _legacy_lstm_layer_forward,
    "gru_layer_inference": _legacy_gru_layer,
    "gru_layer_forward": _legacy_gru_layer_forward,
    "ln_lstm_layer_forward": _no_layer_norm_lstm,
    "ln_lstm_layer_inference": _no_layer_norm_lstm,
}


def _register_legacy_symbolics() -> None:
    for name, symbolic in _LEGACY_SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(f"lstm_ext::{name}", symbolic, _LEGACY_OPSET)


_register_legacy_symbolics()


def export(model: torch.nn.Module, args: tuple, kwargs: Optional[dict] = None, dynamo: bool = True, **options):
    """``torch.onnx.export(model, args, kwargs, dynamo=True, ...)`` with lstm_ext's translations;
    returns the ONNXProgram. ``options`` go to torch.onnx.export (``dynamic_shapes``, ``f``, ...).
    ``dynamo=False``: torch.onnx's legacy exporter, through the symbolic functions
    this module registers (``f`` and ``dynamic_axes`` as torch.onnx.export takes
    them); returns what torch.onnx.export returns."""
    for module in model.modules():
        if getattr(module, "proj_size", 0):
            raise NotImplementedError(f"lstm_ext.onnx.export: {type(module).__name__} with proj_size="
                                      f"{module.proj_size}: an LSTM with projections has no ONNX LSTM node; its "
                                      "export is not implemented")
    if not dynamo:
        with torch.no_grad():
            return torch.onnx.export(model, args, kwargs=kwargs, dynamo=False, **options)
    table = dict(TRANSLATIONS)
    table.update(options.pop("custom_translation_table", None) or {})
    with torch.no_grad():  # inference: layer_inference, which keeps nothing for a backward
        return torch.onnx.export(model, args, kwargs=kwargs, dynamo=True, custom_translation_table=table, **options)
