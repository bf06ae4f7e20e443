"""Shapes of the native operators for torch.compile and meta tensors.

The operators themselves (schemas and CPU/CUDA kernels) are registered by the
native library in csrc/registration.cpp; autograd lives in csrc/lstm_autograd.cpp.

A fake implementation runs instead of a kernel whenever one tensor argument
is a meta or fake tensor (meta device, FakeTensorMode, torch.compile,
torch.export). Each one checks its arguments exactly as its kernel does, in
the same order and with the same messages (csrc/lstm_ops.cpp and
csrc/lstm_checks.h): a meta tensor among real ones is a device mismatch,
never uninitialised memory, and bad input reads the same on every path.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from lstm_ext._native import native  # noqa: F401  (registers the operators)

_FLOATING = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# c10's names of the layouts, as the C++ checks print them.
_LAYOUT_NAMES = {torch.sparse_coo: "Sparse", torch.sparse_csr: "SparseCsr", torch.sparse_csc: "SparseCsc",
                 torch.sparse_bsr: "SparseBsr", torch.sparse_bsc: "SparseBsc", torch._mkldnn: "Mkldnn"}


def _shape(sizes: Sequence) -> str:
    """[3, 5]: a shape as c10 prints it."""
    return "[" + ", ".join(str(s) for s in sizes) + "]"


def _unsupported_kind(t: Tensor) -> str:
    if t.is_quantized:
        return f"a quantized tensor ({t.dtype})"
    if t.layout != torch.strided:
        return f"a tensor of layout {_LAYOUT_NAMES.get(t.layout, str(t.layout))}"
    return "" if t.dtype in _FLOATING else str(t.dtype)


def check_floating(op: str, name: str, t: Tensor) -> None:
    kind = _unsupported_kind(t)
    if kind:
        raise TypeError(f"{op}: {name} must be a dense floating point tensor (float32, float64, bfloat16 or "
                        f"float16), got {kind}")


def check_like(op: str, name: str, t: Tensor, like_name: str, like: Tensor) -> None:
    check_floating(op, name, t)
    if t.dtype != like.dtype:
        raise TypeError(f"{op}: dtype mismatch: {name} is {t.dtype} but {like_name} is {like.dtype}")
    if t.device != like.device:
        raise ValueError(f"{op}: device mismatch: {name} is on {t.device} but {like_name} is on {like.device}")


def _check_shape(op: str, name: str, t: Tensor, expected: Sequence, meaning: str) -> None:
    if list(t.shape) != list(expected):
        raise ValueError(f"{op}: {name} must have shape {_shape(expected)} {meaning}, got {_shape(t.shape)}")


def _check_operand(op: str, name: str, t: Tensor, weight: Tensor, expected: Sequence, meaning: str) -> None:
    check_like(op, name, t, "weight", weight)
    _check_shape(op, name, t, expected, meaning)


def _check_packed_weight(op: str, weight: Tensor) -> int:
    if not (weight.dim() == 2 and weight.shape[0] % 4 == 0 and weight.shape[1] >= weight.shape[0] // 4):
        raise ValueError(f"{op}: weight must have shape [4*hidden_size, input_size + hidden_size], got "
                         f"{_shape(weight.shape)}")
    return weight.shape[0] // 4


def _check_recurrent_weight(op: str, weight_hh: Tensor, gates: int = 4) -> int:
    if not (weight_hh.dim() == 2 and weight_hh.shape[1] * gates == weight_hh.shape[0]):
        raise ValueError(f"{op}: weight_hh must have shape [{gates}*hidden_size, hidden_size], got "
                         f"{_shape(weight_hh.shape)}")
    return weight_hh.shape[1]


def _check_layer_input(op: str, input: Tensor, weight_ih: Tensor, h0: Tensor, gates: int, H: int, packed: bool):
    """check_layer_input (csrc/lstm_checks.h): input (T, B, I), or a PackedSequence's data (N, I) with the
    batch h0's rows, against weight_ih [gates*H, I]. Returns (I, B)."""
    if packed and input.dim() != 2:
        raise ValueError(f"{op}: with batch_sizes, input must be 2-D (sum of lengths, input_size): a "
                         f"PackedSequence's data, got {_shape(input.shape)}")
    if not packed and input.dim() != 3:
        raise ValueError(f"{op}: input must be 3-D (seq_len, batch, input_size) here, got {_shape(input.shape)}")
    if not (weight_ih.dim() == 2 and weight_ih.shape[0] == gates * H):
        raise ValueError(f"{op}: weight_ih must have shape [{gates}*hidden_size, input_size] = [{gates * H}, "
                         f"input_size], got {_shape(weight_ih.shape)}")
    I = weight_ih.shape[1]
    B = (h0.shape[0] if h0.dim() > 0 else 0) if packed else input.shape[1]
    if input.shape[-1] != I:
        raise ValueError(f"{op}: input has {input.shape[-1]} features but input_size is {I} (input shape "
                         f"{_shape(input.shape)})")
    return I, B


def _check_recurrent_weights(op: str, weight_hh: Tensor, weight_hr: Optional[Tensor], gates: int = 4):
    """(H, P): weight_hh [4H, P] and weight_hr [P, H] with projections (P = 0 without)."""
    if weight_hr is None:
        return _check_recurrent_weight(op, weight_hh, gates), 0
    if gates != 4:
        raise ValueError(f"{op}: weight_hr (projections) is for the LSTM only")
    if not (weight_hr.dim() == 2 and weight_hr.shape[0] > 0 and weight_hr.shape[1] > 0):
        raise ValueError(f"{op}: weight_hr must have shape [proj_size, hidden_size], got {_shape(weight_hr.shape)}")
    P, H = weight_hr.shape
    check_like(op, "weight_hr", weight_hr, "weight_hh", weight_hh)
    if list(weight_hh.shape) != [4 * H, P]:
        raise ValueError(f"{op}: with weight_hr of shape [proj_size, hidden_size] = {_shape(weight_hr.shape)}, "
                         f"weight_hh must have shape [4*hidden_size, proj_size] = [{4 * H}, {P}], got "
                         f"{_shape(weight_hh.shape)}")
    return H, P


@torch.library.register_fake("lstm_ext::cell_forward")
def _cell_forward_fake(input, hx, cx, weight, bias):
    op = "lstm_ext.lstm_cell"
    H = _check_packed_weight(op, weight)
    check_like(op, "weight", weight, "weight", weight)
    I = weight.shape[1] - H
    if input.dim() != 2:
        raise ValueError(f"{op}: input must be 2-D (batch, input_size), got a {input.dim()}-D tensor of shape "
                         f"{_shape(input.shape)}")
    B = input.shape[0]
    if input.shape[1] != I:
        raise ValueError(f"{op}: input has {input.shape[1]} features but the cell's input_size is {I} (input "
                         f"shape {_shape(input.shape)})")
    for name, t in (("input", input), ("hx (h_prev)", hx), ("cx (c_prev)", cx)):
        check_like(op, name, t, "weight", weight)
    for name, t in (("hx (h_prev)", hx), ("cx (c_prev)", cx)):
        _check_shape(op, name, t, (B, H), "(batch, hidden_size)")
    if bias is not None:
        _check_operand(op, "bias", bias, weight, (4 * H,), "(4*hidden_size,)")
    return (input.new_empty(B, H), input.new_empty(B, H), input.new_empty(B, 4 * H), input.new_empty(B, I + H))


@torch.library.register_fake("lstm_ext::cell_backward")
def _cell_backward_fake(grad_h, grad_c, cx, c, gates, input_hidden, weight):
    op = "lstm_ext.cell_backward"
    H = _check_packed_weight(op, weight)
    I = weight.shape[1] - H
    if c.dim() != 2:
        raise ValueError(f"{op}: c must be 2-D (batch, hidden_size), got {_shape(c.shape)}")
    B = c.shape[0]
    for name, t in (("grad_h", grad_h), ("grad_c", grad_c), ("cx", cx), ("c", c)):
        _check_operand(op, name, t, weight, (B, H), "(batch, hidden_size)")
    _check_operand(op, "gates", gates, weight, (B, 4 * H), "(batch, 4*hidden_size)")
    _check_operand(op, "input_hidden", input_hidden, weight, (B, I + H), "(batch, input_size + hidden_size)")
    return (c.new_empty(B, I), c.new_empty(B, H), c.new_empty(B, H), c.new_empty(weight.shape),
            c.new_empty(weight.shape[0]))


# c10's names of the dtypes, as the C++ checks print them.
_SCALAR_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.int32: "Int", torch.int64: "Long",
                 torch.float16: "Half", torch.bfloat16: "BFloat16", torch.bool: "Bool"}


def _check_batch_sizes(op, batch_sizes) -> None:
    """A PackedSequence's batch_sizes: its type here; its values (which a fake tensor does not have) in the kernel."""
    if batch_sizes is not None and not (batch_sizes.dtype == torch.int64 and batch_sizes.dim() == 1
                                        and batch_sizes.device.type == "cpu"):
        raise TypeError(f"{op}: batch_sizes must be a 1-D int64 CPU tensor (a PackedSequence's), got a "
                        f"{batch_sizes.dim()}-D {_SCALAR_NAMES.get(batch_sizes.dtype, batch_sizes.dtype)} tensor on "
                        f"{batch_sizes.device}")


def _check_layer(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, op="lstm_ext.LSTM", gates=4,
                 weight_hr=None, batch_sizes=None):
    """The layer operators' checks (LSTM; the GRU's with c0 None and 3 gates); returns (lead, B, H, R):
    lead the sequence buffers' leading shape, (T, B), or (N,) for packed sequences (batch_sizes), and R
    the width of h (proj_size with projections, else H)."""
    H, P = _check_recurrent_weights(op, weight_hh, weight_hr, gates)
    R = P or H
    check_like(op, "weight_hh", weight_hh, "weight", weight_hh)
    packed = batch_sizes is not None
    _, B = _check_layer_input(op, input, weight_ih, h0, gates, H, packed)
    states = (("h_0", h0),) if c0 is None else (("h_0", h0), ("c_0", c0))
    for name, t in (("input", input), ("weight_ih", weight_ih)) + states:
        check_like(op, name, t, "weight", weight_hh)
    for name, t in states:
        size, meaning = (R, "(batch, proj_size)") if name == "h_0" and P else (H, "(batch, hidden_size)")
        _check_shape(op, name, t, (B, size), meaning)
    for name, bias in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if bias is not None:
            _check_operand(op, name, bias, weight_hh, (gates * H,), f"({gates}*hidden_size,)")
    _check_batch_sizes(op, batch_sizes)
    return (input.shape[0],) if packed else (input.shape[0], B), B, H, R


@torch.library.register_fake("lstm_ext::layer_forward")
def _layer_forward_fake(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, weight_hr=None,
                        batch_sizes=None):
    lead, B, H, R = _check_layer(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr=weight_hr,
                                 batch_sizes=batch_sizes)
    saved = _saved_dtype(weight_hh)
    return (input.new_empty(*lead, R), input.new_empty(B, R), input.new_empty(B, H),
            input.new_empty(*lead, 4 * H, dtype=saved), input.new_empty(*lead, H, dtype=saved))


@torch.library.register_fake("lstm_ext::layer_inference")
def _layer_inference_fake(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, weight_hr=None,
                          batch_sizes=None):
    lead, B, H, R = _check_layer(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr=weight_hr,
                                 batch_sizes=batch_sizes)
    return input.new_empty(*lead, R), input.new_empty(B, R), input.new_empty(B, H)


def _saved_dtype(weight: Tensor) -> torch.dtype:
    """The dtype of a layer operator's saved gates and cells: float32 for a
    bfloat16 or float16 layer on the CPU, which runs in float32 inside
    (csrc/lstm_ops.cpp, runs_in_float), else the weight's."""
    if weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return weight.dtype


def _check_layer_backward(op, grad_output, grad_h_n, grad_c_n, input, h0, c0, weight_ih, weight_hh, output,
                          gates, cells, gates_per_unit=4, cells_name="cells", weight_hr=None, batch_sizes=None):
    """The layer backward operators' checks; returns H."""
    H, P = _check_recurrent_weights(op, weight_hh, weight_hr, gates_per_unit)
    R, width = (P, "proj_size") if P else (H, "hidden_size")
    packed = batch_sizes is not None
    if input.dim() != (2 if packed else 3):
        raise ValueError(f"{op}: input must be {'2-D (with batch_sizes)' if packed else '3-D'}, got "
                         f"{_shape(input.shape)}")
    I = input.shape[-1]
    B = (h0.shape[0] if h0.dim() > 0 else 0) if packed else input.shape[1]
    _check_batch_sizes(op, batch_sizes)
    lead, prefix = ((input.shape[0],), "(rows, ") if packed else ((input.shape[0], B), "(seq_len, batch, ")
    G = gates_per_unit
    for name, t in (("grad_output", grad_output), ("output", output)):
        if t is not None:  # grad_output None: zeros (an unused output)
            _check_operand(op, name, t, weight_hh, (*lead, R), f"{prefix}{width})")
    # The saved tensors are float32 where the forward ran in float32 inside.
    saved = weight_hh
    if _saved_dtype(weight_hh) != weight_hh.dtype and gates.dtype == cells.dtype == torch.float32:
        saved = weight_hh.new_empty(0, dtype=torch.float32)
    _check_operand(op, cells_name, cells, saved, (*lead, H), f"{prefix}hidden_size)")
    for name, t in (("grad_h_n", grad_h_n), ("h_0", h0)):
        if t is not None:
            _check_operand(op, name, t, weight_hh, (B, R), f"(batch, {width})")
    for name, t in (("grad_c_n", grad_c_n), ("c_0", c0)):
        if t is not None:
            _check_operand(op, name, t, weight_hh, (B, H), "(batch, hidden_size)")
    check_like(op, "input", input, "weight", weight_hh)
    _check_operand(op, "weight_ih", weight_ih, weight_hh, (G * H, I), f"({G}*hidden_size, input_size)")
    _check_operand(op, "gates", gates, saved, (*lead, G * H), f"{prefix}{G}*hidden_size)")
    return H


def _like(wanted: bool, tensor: Tensor, shape) -> Optional[Tensor]:
    """A gradient's fake, or None outside output_mask (where the kernel forms none)."""
    return tensor.new_empty(shape) if wanted else None


@torch.library.register_fake("lstm_ext::layer_backward")
def _layer_backward_fake(grad_output, grad_h_n, grad_c_n, input, h0, c0, weight_ih, weight_hh,
                         output, gates, cells, reverse, output_mask, weight_hr=None, batch_sizes=None):
    _check_layer_backward("lstm_ext.layer_backward", grad_output, grad_h_n, grad_c_n, input, h0, c0, weight_ih,
                          weight_hh, output, gates, cells, weight_hr=weight_hr, batch_sizes=batch_sizes)
    want_input, want_h0, want_c0, want_weights = output_mask
    return (_like(want_input, input, input.shape), _like(want_h0, h0, h0.shape), _like(want_c0, c0, c0.shape),
            _like(want_weights, weight_ih, weight_ih.shape), _like(want_weights, weight_hh, weight_hh.shape),
            _like(want_weights, weight_hh, weight_hh.shape[0]),
            None if weight_hr is None else _like(want_weights, weight_hr, weight_hr.shape))


_GRU = {"op": "lstm_ext.GRU", "gates": 3}


@torch.library.register_fake("lstm_ext::gru_layer_forward")
def _gru_layer_forward_fake(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes=None):
    lead, B, H, _ = _check_layer(input, h0, None, weight_ih, weight_hh, bias_ih, bias_hh, **_GRU,
                                 batch_sizes=batch_sizes)
    saved = _saved_dtype(weight_hh)
    return (input.new_empty(*lead, H), input.new_empty(B, H), input.new_empty(*lead, 3 * H, dtype=saved),
            input.new_empty(*lead, H, dtype=saved))


@torch.library.register_fake("lstm_ext::gru_layer_inference")
def _gru_layer_inference_fake(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes=None):
    lead, B, H, _ = _check_layer(input, h0, None, weight_ih, weight_hh, bias_ih, bias_hh, **_GRU,
                                 batch_sizes=batch_sizes)
    return input.new_empty(*lead, H), input.new_empty(B, H)


@torch.library.register_fake("lstm_ext::gru_layer_backward")
def _gru_layer_backward_fake(grad_output, grad_h_n, input, h0, weight_ih, weight_hh, output, gates, hidden_n,
                             reverse, output_mask, batch_sizes=None):
    H = _check_layer_backward("lstm_ext.gru_layer_backward", grad_output, grad_h_n, None, input, h0, None,
                              weight_ih, weight_hh, output, gates, hidden_n, 3, "hidden_n", batch_sizes=batch_sizes)
    want_input, want_h0, want_weights = output_mask
    return (_like(want_input, input, input.shape), _like(want_h0, h0, h0.shape),
            _like(want_weights, weight_ih, weight_ih.shape), _like(want_weights, weight_hh, weight_hh.shape),
            _like(want_weights, weight_hh, 3 * H), _like(want_weights, weight_hh, 3 * H))


# The LayerNorm LSTM's layer operators (csrc/layernorm_lstm_ops.cpp): fakes
# and autograd. Autograd is registered here, in Python, through
# torch.library: these operators are not on the small-size fast path that
# the LSTM's C++ autograd serves.
_LN_OP = "lstm_ext.LayerNormLSTM"
_LN_NAMES = ("ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias")


def _check_ln_layer(input, h0, c0, weight_ih, weight_hh, bias, ln, mask_c, mask_h, rate_c, rate_h, batch_sizes=None,
                    bias_hh=None):
    """The checks of check_ln_layer (csrc/layernorm_lstm_ops.cpp), in its order; returns (lead, B, H,
    layer_norm), lead the sequence buffers' leading shape: (T, B), or (N,) with batch_sizes."""
    op = _LN_OP
    check_floating(op, "weight_hh", weight_hh)
    H = _check_recurrent_weight(op, weight_hh)
    packed = batch_sizes is not None
    _, B = _check_layer_input(op, input, weight_ih, h0, 4, H, packed)
    check_like(op, "input", input, "weight_hh", weight_hh)
    check_like(op, "weight_ih", weight_ih, "weight_hh", weight_hh)

    def operand(name, t, expected, meaning):
        check_like(op, name, t, "weight_hh", weight_hh)
        _check_shape(op, name, t, expected, meaning)

    operand("h_0", h0, (B, H), "(batch, hidden_size)")
    operand("c_0", c0, (B, H), "(batch, hidden_size)")
    if bias is not None:
        operand("bias", bias, (4 * H,), "(4*hidden_size,)")
    present = sum(t is not None for t in ln)
    if present not in (0, 4):
        raise ValueError(f"{op}: ln_ih_weight, ln_hh_weight, ln_c_weight and ln_c_bias are given together or not "
                         f"at all ({present} of 4 given)")
    if present == 4:
        for name, t, size, meaning in zip(_LN_NAMES, ln, (4 * H, 4 * H, H, H),
                                          ("(4*hidden_size,)", "(4*hidden_size,)", "(hidden_size,)",
                                           "(hidden_size,)")):
            operand(name, t, (size,), meaning)
    lead = (input.shape[0],) if packed else (input.shape[0], B)
    for name, mask in (("zoneout_cell_mask", mask_c), ("zoneout_hidden_mask", mask_h)):
        if mask is not None:
            operand(name, mask, (*lead, H), "(rows, hidden_size)" if packed else "(seq_len, batch, hidden_size)")
    if not (0 <= rate_c <= 1 and 0 <= rate_h <= 1):
        raise ValueError(f"{op}: zoneout rates must be in [0, 1], got zoneout_cell={rate_c:g} and "
                         f"zoneout_hidden={rate_h:g}")
    _check_batch_sizes(op, batch_sizes)
    if bias_hh is not None:
        if bias is None:
            raise ValueError(f"{op}: bias_hh is given only with bias")
        operand("bias_hh", bias_hh, (4 * H,), "(4*hidden_size,)")
    return lead, B, H, present == 4


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.bfloat16, torch.float16) else t.dtype


@torch.library.register_fake("lstm_ext::ln_lstm_layer_forward")
def _ln_lstm_layer_forward_fake(input, h0, c0, weight_ih, weight_hh, bias, ln_ih_weight, ln_hh_weight, ln_c_weight,
                                ln_c_bias, zoneout_cell_mask, zoneout_hidden_mask, zoneout_cell, zoneout_hidden,
                                reverse, batch_sizes=None, bias_hh=None):
    lead, B, H, ln = _check_ln_layer(input, h0, c0, weight_ih, weight_hh, bias,
                                     (ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias), zoneout_cell_mask,
                                     zoneout_hidden_mask, zoneout_cell, zoneout_hidden, batch_sizes, bias_hh)
    saved = {"dtype": _compute_dtype(weight_hh), "device": input.device}

    def kept(last):
        return input.new_empty((*lead, last) if ln else (0,), **saved)

    return (input.new_empty(*lead, H), input.new_empty(B, H), input.new_empty(B, H),
            input.new_empty(*lead, 4 * H, **saved), input.new_empty(*lead, H, **saved), kept(4 * H), kept(1), kept(1),
            kept(4 * H), kept(3))


@torch.library.register_fake("lstm_ext::ln_lstm_layer_inference")
def _ln_lstm_layer_inference_fake(input, h0, c0, weight_ih, weight_hh, bias, ln_ih_weight, ln_hh_weight,
                                  ln_c_weight, ln_c_bias, zoneout_cell_mask, zoneout_hidden_mask, zoneout_cell,
                                  zoneout_hidden, reverse, batch_sizes=None, bias_hh=None):
    lead, B, H, _ = _check_ln_layer(input, h0, c0, weight_ih, weight_hh, bias,
                                    (ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias), zoneout_cell_mask,
                                    zoneout_hidden_mask, zoneout_cell, zoneout_hidden, batch_sizes, bias_hh)
    return input.new_empty(*lead, H), input.new_empty(B, H), input.new_empty(B, H)


@torch.library.register_fake("lstm_ext::ln_lstm_layer_backward")
def _ln_lstm_layer_backward_fake(grad_output, grad_h_n, grad_c_n, input, h0, c0, weight_ih, weight_hh, has_bias,
                                 ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias, zoneout_cell_mask,
                                 zoneout_hidden_mask, zoneout_cell, zoneout_hidden, reverse, output, gates, cells,
                                 ih, ih_mean, ih_rstd, hh_norm, stats, batch_sizes=None):
    ln = (ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias)
    lead, B, H, layer_norm = _check_ln_layer(input, h0, c0, weight_ih, weight_hh, None, ln, zoneout_cell_mask,
                                             zoneout_hidden_mask, zoneout_cell, zoneout_hidden, batch_sizes)
    op = _LN_OP
    meaning = "(rows, hidden_size)" if batch_sizes is not None else "(seq_len, batch, hidden_size)"
    for name, t in (("grad_output", grad_output), ("output", output)):
        check_like(op, name, t, "weight_hh", weight_hh)
        _check_shape(op, name, t, (*lead, H), meaning)
    for name, t in (("grad_h_n", grad_h_n), ("grad_c_n", grad_c_n)):
        if t is not None:
            check_like(op, name, t, "weight_hh", weight_hh)
            _check_shape(op, name, t, (B, H), "(batch, hidden_size)")
    dtype = _compute_dtype(weight_hh)

    def kept(last):
        return (*lead, last) if layer_norm else (0,)

    for name, t, expected in (("gates", gates, (*lead, 4 * H)), ("cells", cells, (*lead, H)), ("ih", ih, kept(4 * H)),
                              ("ih_mean", ih_mean, kept(1)), ("ih_rstd", ih_rstd, kept(1)),
                              ("hh_norm", hh_norm, kept(4 * H)), ("stats", stats, kept(3))):
        if t.dtype != dtype or t.device != weight_hh.device:
            raise ValueError(f"{op}: {name} must be what the forward saved ({dtype} on {weight_hh.device}), got "
                             f"{t.dtype} on {t.device}")
        _check_shape(op, name, t, expected, "(as the forward saved it)")
    return (input.new_empty(input.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            weight_ih.new_empty(weight_ih.shape), weight_hh.new_empty(weight_hh.shape),
            weight_hh.new_empty(4 * H) if has_bias else None,
            *((t.new_empty(t.shape) for t in ln) if layer_norm else (None,) * 4))


# Their autograd is in C++ (csrc/lstm_autograd.cpp, LnLayerBackward): torch.library's Python autograd
# cost ~0.3 ms per layer and direction at the course's size, more than the operators themselves.


@torch.library.register_fake("lstm_ext::zoneout_mask")
def _zoneout_mask_fake(like, seed, size, rate):
    if not 0 <= rate <= 1:
        raise ValueError(f"lstm_ext.zoneout_mask: rate must be in [0, 1], got {rate:g}")
    check_floating("lstm_ext.zoneout_mask", "like", like)
    return like.new_empty(size)
