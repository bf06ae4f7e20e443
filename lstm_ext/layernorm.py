"""``lstm_ext.LayerNormLSTM`` (a fused layer-normalized LSTM) and zoneout, for
it and for ``lstm_ext.LSTM``: what torch.nn does not have.

Each layer and direction is one operator call (csrc/layernorm_lstm_ops.cpp)
on the CPU and on CUDA (in a build with CUDA); on other devices the same
maths runs as a loop of torch ops
(``lstm_ext.reference.layer_norm_lstm_sequence``).
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from lstm_ext import _ops  # noqa: F401  (operators, fakes and autograd)
from lstm_ext._native import native as _C
from lstm_ext.functional import _describe, _direct, _require_pair
from lstm_ext.reference import layer_norm_lstm_sequence, layer_norm_lstm_stacked, zoneout_mask_pair

_ln_forward = torch.ops.lstm_ext.ln_lstm_layer_forward.default
_ln_inference = torch.ops.lstm_ext.ln_lstm_layer_inference.default
_LN_PARAMETERS = ("ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias")


def _fused_device(t: Tensor) -> bool:
    """Whether the fused operator takes tensors on t's device (meta and fake tensors: its fakes)."""
    return t.device.type in ("cpu", "meta") or (t.device.type == "cuda" and _C.with_cuda())


def layer_norm_lstm_layer(input: Tensor, hx: Tuple[Tensor, Tensor], weight_ih: Tensor, weight_hh: Tensor,
                          bias: Optional[Tensor] = None, ln_ih_weight: Optional[Tensor] = None,
                          ln_hh_weight: Optional[Tensor] = None, ln_c_weight: Optional[Tensor] = None,
                          ln_c_bias: Optional[Tensor] = None, zoneout_cell_mask: Optional[Tensor] = None,
                          zoneout_hidden_mask: Optional[Tensor] = None, zoneout_cell: float = 0.0,
                          zoneout_hidden: float = 0.0, reverse: bool = False,
                          batch_sizes: Optional[Tensor] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One LayerNorm LSTM layer and direction over a whole sequence. Differentiable.

    Args:
        input: (T, B, I). hx: (h_0, c_0), each (B, H).
        weight_ih: [4H, I]; weight_hh: [4H, H]; bias: [4H] or None (the one bias).
        ln_ih_weight, ln_hh_weight: [4H] gains; ln_c_weight, ln_c_bias: [H],
            the cell's gain and shift. All four None: the plain LSTM (bias
            then being b_ih + b_hh), with zoneout.
        zoneout_cell_mask, zoneout_hidden_mask: (T, B, H), zoneout's d per
            element and step (1 keeps the previous state); where None, the
            rate zoneout_cell / zoneout_hidden is used as d (eval mode's
            expectation; 0: no zoneout).
        reverse: run from step T-1 down to 0.
        batch_sizes: a PackedSequence's (int64 CPU, non-increasing), with
            input its data (N, I) of sequences sorted by length and the masks
            (N, H): each step runs over its own sequences, h_n and c_n are
            each sequence's state at its own end, and the reverse direction
            starts each sequence at its own last step (CPU and CUDA).

    Returns:
        (output (T, B, H), (h_n, c_n)); output (N, H) with batch_sizes. The
        maths is lstm_ext.reference.layer_norm_lstm_step's.
    """
    _require_pair(hx, "lstm_ext.layer_norm_lstm_layer", "(h_0, c_0)")
    args = (input, hx[0], hx[1], weight_ih, weight_hh, bias, ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias,
            zoneout_cell_mask, zoneout_hidden_mask, float(zoneout_cell), float(zoneout_hidden), reverse, batch_sizes)
    if not _fused_device(weight_hh):
        if batch_sizes is not None:
            raise NotImplementedError(f"lstm_ext.layer_norm_lstm_layer: PackedSequence input on {weight_hh.device} "
                                      "is not supported (the fused operator runs on the CPU and CUDA); pad the batch")
        return layer_norm_lstm_sequence(input, hx, weight_ih, weight_hh, bias, ln_ih_weight, ln_hh_weight,
                                        ln_c_weight, ln_c_bias, zoneout_cell_mask, zoneout_hidden_mask,
                                        zoneout_cell, zoneout_hidden, reverse)
    tensors = tuple(t for t in args[:12] if isinstance(t, Tensor))
    if _direct(tensors) and not torch.jit.is_tracing():
        return _C.ln_layer_forward(*args)  # the same operators, without torch.ops' argument parsing
    # A trace records one operator whatever grad mode its checks run in (else its graphs differ).
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if not (needs_grad or torch.jit.is_tracing()):
        output, h_n, c_n = _ln_inference(*args)
    else:
        output, h_n, c_n = _ln_forward(*args)[:3]
    return output, (h_n, c_n)


def _zoneout_mask_pair(rate_c: float, rate_h: float, shape, like: Tensor, training: bool):
    """A layer and direction's zoneout masks, as lstm_ext.reference.zoneout_mask_pair draws them; for plain
    CPU tensors in one native call (at the course's size the two draws through torch.ops
    cost ~5% of a LayerNormLSTM forward+backward)."""
    if training and (rate_c or rate_h) and like.device.type == "cpu" and _direct((like,)):
        return _C.zoneout_masks(like, list(shape), float(rate_c), float(rate_h))
    return zoneout_mask_pair(rate_c, rate_h, shape, like, training)


def _check_rate(name: str, value) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{name} should be a number in [0, 1] (the probability of keeping an element's previous "
                         f"state), got {value!r}")
    return float(value)


def run_stacked(module: nn.Module, input: Union[Tensor, PackedSequence], hx: Optional[Tuple[Tensor, Tensor]],
                layers: List[Dict[str, Optional[Tensor]]], name: str):
    """torch.nn.LSTM's conventions around the stacked layers of
    layer_norm_lstm_layer (lstm_ext.reference.layer_norm_lstm_stacked):
    checks, unbatched input, zero states, PackedSequence input (unsorted
    batches permuted once); layers holds each layer's and direction's
    tensors, in order."""
    directions = 2 if module.bidirectional else 1
    H, L = module.hidden_size, module.num_layers
    packed = isinstance(input, PackedSequence)
    if not packed and (not isinstance(input, Tensor) or input.dim() not in (2, 3)):
        raise ValueError(f"lstm_ext.{name}: expected input of shape (seq_len, input_size) unbatched or "
                         f"(seq_len, batch, input_size), or a PackedSequence, got {_describe(input)}")
    batched = packed or input.dim() == 3
    x = input.data if packed else input if batched else input.unsqueeze(1)
    B = int(input.batch_sizes[0]) if packed else x.shape[0 if batched and module.batch_first else 1]
    expected = (L * directions, B, H) if batched else (L * directions, H)
    if hx is not None:
        _require_pair(hx, f"lstm_ext.{name}", "(h_0, c_0)")
        for state_name, state in zip(("h_0", "c_0"), hx):
            if not isinstance(state, Tensor):
                raise ValueError(f"lstm_ext.{name}: expected {state_name} to be a tensor, got {_describe(state)}")
            if tuple(state.shape) != expected:
                raise ValueError(f"lstm_ext.{name}: {state_name} must have shape {expected} (num_layers * "
                                 f"num_directions, {'batch, ' if batched else ''}hidden_size), got "
                                 f"{tuple(state.shape)}")
        if not batched:
            hx = tuple(s.unsqueeze(1) for s in hx)
        elif packed and input.sorted_indices is not None:  # the states of the sequences in sorted order
            hx = tuple(s.index_select(1, input.sorted_indices) for s in hx)
    output, (h_n, c_n) = layer_norm_lstm_stacked(
        x.contiguous(), hx, layers, module.bidirectional, module.batch_first and batched and not packed,
        module.dropout, module.training, module.zoneout_cell, module.zoneout_hidden, layer_fn=layer_norm_lstm_layer,
        batch_sizes=input.batch_sizes if packed else None, masks_fn=_zoneout_mask_pair)
    if packed:
        if input.unsorted_indices is not None:
            h_n, c_n = h_n.index_select(1, input.unsorted_indices), c_n.index_select(1, input.unsorted_indices)
        return PackedSequence(output, input.batch_sizes, input.sorted_indices, input.unsorted_indices), (h_n, c_n)
    if not batched:
        return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
    return output, (h_n, c_n)


class LayerNormLSTM(nn.Module):
    r"""A multi-layer LSTM with layer normalization and zoneout, fused: the
    conventions of torch.nn.LSTM (shapes, batch_first, bidirectional, dropout,
    (h_0, c_0)), one operator per layer and direction.

    For each step t (gates i, f, g, o in torch's order)::

        a = LN(W_ih x_t; g_ih) + LN(W_hh h_{t-1}; g_hh) + b
        c~_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h~_t = sigmoid(o) * tanh(LN(c~_t; g_c, b_c))
        c_t = d_c * c_{t-1} + (1 - d_c) * c~_t,   h_t = d_h * h_{t-1} + (1 - d_h) * h~_t

    LN normalizes each row over its 4H (or H) entries (mean, biased
    variance, eps 1e-5) and applies the gain g (and the shift b_c). Zoneout
    (Krueger et al. 2016): in training d_c, d_h ~ Bernoulli(zoneout_cell,
    zoneout_hidden) per element and step, from torch's generator; in eval
    d is the rate (the expectation). Rates 0 (the default): no zoneout.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout,
        bidirectional, device, dtype: as torch.nn.LSTM.
        zoneout_cell, zoneout_hidden: zoneout's rates for c and h.

    Inputs ``input, (h_0, c_0)`` and outputs ``output, (h_n, c_n)``: as
    torch.nn.LSTM's (no projections); a PackedSequence input (CPU) gives a
    PackedSequence output, each sequence run over its own length.

    Attributes (each with ``_reverse`` for the second direction):
        weight_ih_l{k} [4H, I_k], weight_hh_l{k} [4H, H]: uniform in +-1/sqrt(H).
        bias_l{k} [4H]: the one bias; zeros, the forget gate's quarter ones.
        ln_ih_weight_l{k}, ln_hh_weight_l{k} [4H]: gains, ones.
        ln_c_weight_l{k}, ln_c_bias_l{k} [H]: the cell's gain (ones) and shift (zeros).

    On the CPU and CUDA each layer and direction is one fused operator
    (float32, float64; bfloat16 and float16 computed in float32 inside);
    on other devices a loop of torch ops with the same maths.

    Example::

        >>> rnn = lstm_ext.LayerNormLSTM(10, 20, num_layers=2, batch_first=True, zoneout_cell=0.1)
        >>> output, (h_n, c_n) = rnn(torch.randn(3, 5, 10))
        >>> output.shape, h_n.shape
        (torch.Size([3, 5, 20]), torch.Size([2, 3, 20]))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 zoneout_cell: float = 0.0, zoneout_hidden: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        from lstm_ext.rnn import _check_config

        _check_config(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0)
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        self.zoneout_cell = _check_rate("zoneout_cell", zoneout_cell)
        self.zoneout_hidden = _check_rate("zoneout_hidden", zoneout_hidden)
        directions = 2 if bidirectional else 1
        H = hidden_size
        self._layer_names: List[Dict[str, str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else H * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"weight_ih": (4 * H, layer_input), "weight_hh": (4 * H, H)}
                if bias:
                    shapes["bias"] = (4 * H,)
                shapes.update({"ln_ih_weight": (4 * H,), "ln_hh_weight": (4 * H,), "ln_c_weight": (H,),
                               "ln_c_bias": (H,)})
                for name, shape in shapes.items():
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **factory)))
                self._layer_names.append({name: name + suffix for name in shapes})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights uniform in +-1/sqrt(H); gains 1, shifts 0; bias 0 but the forget gate's 1."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        H = self.hidden_size
        with torch.no_grad():
            for names in self._layer_names:
                for role, name in names.items():
                    p = getattr(self, name)
                    if role.startswith("weight"):
                        nn.init.uniform_(p, -bound, bound)
                    elif role in ("ln_ih_weight", "ln_hh_weight", "ln_c_weight"):
                        nn.init.ones_(p)
                    else:
                        nn.init.zeros_(p)
                        if role == "bias":
                            p[H:2 * H] = 1.0

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("zoneout_cell", 0.0), ("zoneout_hidden", 0.0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Union[Tensor, PackedSequence], Tuple[Tensor, Tensor]]:
        """(output, (h_n, c_n)) with torch.nn.LSTM's shapes; PackedSequence in, PackedSequence out."""
        layers = [{role: getattr(self, name) for role, name in names.items()} for names in self._layer_names]
        return run_stacked(self, input, hx, layers, "LayerNormLSTM")
