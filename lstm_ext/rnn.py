"""``lstm_ext.LSTM`` and ``lstm_ext.GRU``: drop-ins for torch.nn.LSTM and
torch.nn.GRU with the time loop in one operator, on one module base."""
from __future__ import annotations

import math
import numbers
import warnings
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from lstm_ext import _ops  # noqa: F401  (operators and their fake implementations)
from lstm_ext._native import native
from lstm_ext.functional import _describe, _direct, _require_pair

_layer_forward = torch.ops.lstm_ext.layer_forward.default
_layer_inference = torch.ops.lstm_ext.layer_inference.default
_lstm = torch.ops.lstm_ext.lstm.default
_gru_layer_forward = torch.ops.lstm_ext.gru_layer_forward.default
_gru_layer_inference = torch.ops.lstm_ext.gru_layer_inference.default
_gru = torch.ops.lstm_ext.gru.default


def _needs_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lstm_layer(input: Tensor, hx: Tuple[Tensor, Tensor], weight_ih: Tensor, weight_hh: Tensor,
               bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
               reverse: bool = False, weight_hr: Optional[Tensor] = None,
               batch_sizes: Optional[Tensor] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One layer and direction over a whole sequence. Differentiable.

    Args:
        input: (T, B, I).
        hx: the pair (h_0, c_0), each (B, H); h_0 (B, P) with projections.
        weight_ih: [4H, I]; weight_hh: [4H, H] ([4H, P] with projections);
            bias_ih, bias_hh: [4H] or None. Gate blocks in torch.nn.LSTM's
            order i, f, g, o.
        reverse: run the time loop from step T-1 down to 0.
        weight_hr: [P, H] or None: torch.nn.LSTM's projections (proj_size P),
            h_t = weight_hr @ (o_t * tanh(c_t)).
        batch_sizes: a PackedSequence's batch_sizes (int64 CPU, one entry per
            step, non-increasing), with input its data (N, I) of sequences
            sorted by length: each step runs over its own sequences, and h_n,
            c_n are each sequence's state at its own end; the reverse
            direction starts each sequence at its own last step.

    Returns:
        (output (T, B, H), (h_n, c_n)), each state (B, H), in the input's
        dtype; output and h_n have P features with projections; output is
        (N, H) packed as the input with batch_sizes.
    """
    _require_pair(hx, "lstm_ext.lstm_layer", "(h_0, c_0)")
    tensors = (input, *hx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes)
    if _direct(tensors):
        return native.layer_forward(input, hx[0], hx[1], weight_ih, weight_hh, bias_ih, bias_hh, reverse, weight_hr,
                                    batch_sizes)
    if not _needs_grad(tensors):
        # Nothing to differentiate: the operator that keeps nothing for a backward.
        output, h_n, c_n = _layer_inference(input, hx[0], hx[1], weight_ih, weight_hh, bias_ih, bias_hh, reverse,
                                            weight_hr, batch_sizes)
        return output, (h_n, c_n)
    output, h_n, c_n, _, _ = _layer_forward(input, hx[0], hx[1], weight_ih, weight_hh, bias_ih, bias_hh, reverse,
                                            weight_hr, batch_sizes)
    return output, (h_n, c_n)


def gru_layer(input: Tensor, h_0: Tensor, weight_ih: Tensor, weight_hh: Tensor,
              bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
              reverse: bool = False, batch_sizes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One GRU layer and direction over a whole sequence. Differentiable.

    Args:
        input: (T, B, I).
        h_0: (B, H).
        weight_ih: [3H, I]; weight_hh: [3H, H]; bias_ih, bias_hh: [3H] or None.
            Gate blocks in torch.nn.GRU's order r, z, n.
        reverse: run the time loop from step T-1 down to 0.
        batch_sizes: a PackedSequence's, as for lstm_layer: input (N, I) its
            data, output (N, H).

    Returns:
        (output (T, B, H), h_n (B, H)), in the input's dtype.
    """
    if not isinstance(h_0, Tensor):
        raise TypeError(f"lstm_ext.gru_layer: h_0 must be a Tensor of shape (batch, hidden_size), got "
                        f"{_describe(h_0)}")
    tensors = (input, h_0, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes)
    if _direct(tensors):
        return native.gru_layer_forward(input, h_0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes)
    if not _needs_grad(tensors):
        return _gru_layer_inference(input, h_0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes)
    output, h_n, _, _ = _gru_layer_forward(input, h_0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes)
    return output, h_n


def _check_config(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                  proj_size) -> None:
    """torch.nn.LSTM's checks of its constructor's arguments, with its messages."""
    if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
        raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                         "element being zeroed")
    for name, value in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers),
                        ("proj_size", proj_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if input_size <= 0:
        raise ValueError("input_size must be greater than zero")
    if hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")
    if dropout > 0 and num_layers == 1:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                      f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                      stacklevel=3)


class _RNNBase(nn.Module):
    """What LSTM and GRU share: torch.nn's constructor, parameters and their
    names, initialisation, the flat weight list the operators take, and the
    conversions. A subclass sets the gate count, its torch.nn module and name,
    and writes forward."""

    _gates = 4
    _torch_module = nn.LSTM
    mode = "LSTM"  # as torch.nn's modules, for code that reads it

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        super().__init__()
        _check_config(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size)
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        directions = 2 if bidirectional else 1
        gate_rows = self._gates * hidden_size
        state_size = proj_size or hidden_size  # the width of h
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else state_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"weight_ih": (gate_rows, layer_input), "weight_hh": (gate_rows, state_size)}
                if bias:
                    shapes.update({"bias_ih": (gate_rows,), "bias_hh": (gate_rows,)})
                if proj_size > 0:  # torch.nn.LSTM's order: the projection last
                    shapes["weight_hr"] = (proj_size, hidden_size)
                for name, shape in shapes.items():
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **factory)))
                self._all_weights.append([name + suffix for name in shapes])
                self._flat_weights_names.extend(self._all_weights[-1])
        self.reset_parameters()

    @property
    def _flat_weights(self) -> List[Optional[Tensor]]:
        """The parameters in torch.nn's flat order, as the forward reads them.

        Each is read as an attribute, so parametrizations (weight_norm,
        register_parametrization) and the WeightDrop pattern (the Parameter
        deleted, a plain tensor of the same name set before each forward) see
        their tensor used, as with torch.nn's modules.
        """
        params = self._parameters
        try:  # the usual case, without nn.Module.__getattr__ per parameter
            return [params[name] for name in self._flat_weights_names]
        except KeyError:
            return [getattr(self, name, None) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> List[List[Tensor]]:
        """The parameters per layer and direction: [[weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0], ...]."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling it.
        raise RuntimeError(
            f"lstm_ext.{type(self).__name__} does not support torch.jit.script (TorchScript is in maintenance mode "
            "in PyTorch). Use torch.jit.trace(module, example_inputs) or torch.export.export(module, (x,)), which "
            "both capture its operators, or torch.compile(module)")

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(hidden_size), as torch.nn's modules."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """No-op, for code written for torch.nn's modules (cuDNN's flat buffer is not used)."""

    # torch.nn.RNNBase's public checking helpers, for code that subclasses
    # torch.nn's modules and calls them (the forward itself checks in the
    # operator). torch's own functions: they read only the attributes both
    # classes share, so their results and messages follow the installed torch.
    check_input = nn.RNNBase.check_input
    get_expected_hidden_size = nn.RNNBase.get_expected_hidden_size
    check_hidden_size = nn.RNNBase.check_hidden_size
    check_forward_args = nn.RNNBase.check_forward_args
    permute_hidden = nn.RNNBase.permute_hidden

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s

    def _check_input(self, input) -> None:
        if not isinstance(input, Tensor):
            raise ValueError(f"lstm_ext.{type(self).__name__}: expected input of shape (seq_len, input_size) "
                             f"unbatched or (seq_len, batch, input_size), got {_describe(input)}")

    def _op_args(self, params) -> tuple:
        return (params, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional,
                self.batch_first)

    @classmethod
    def from_torch(cls, module: nn.Module):
        """The same module as a torch.nn one (parameters copied)."""
        first = next(module.parameters())
        extra = {"proj_size": module.proj_size} if cls._torch_module is nn.LSTM else {}
        rnn = cls(module.input_size, module.hidden_size, module.num_layers, module.bias, module.batch_first,
                  module.dropout, module.bidirectional, device=first.device, dtype=first.dtype, **extra)
        rnn.load_state_dict(module.state_dict())
        return rnn.train(module.training)

    def to_torch(self) -> nn.Module:
        """The torch.nn module with these parameters (copied), on their device and dtype."""
        first = next(self.parameters())
        extra = {"proj_size": self.proj_size} if self._torch_module is nn.LSTM else {}
        module = self._torch_module(self.input_size, self.hidden_size, self.num_layers, self.bias,
                                    self.batch_first, self.dropout, self.bidirectional, device=first.device,
                                    dtype=first.dtype, **extra)
        module.load_state_dict(self.state_dict())
        return module.train(self.training)


class LSTM(_RNNBase):
    r"""A multi-layer LSTM over a sequence: torch.nn.LSTM's interface, parameters
    and results, each layer and direction one fused operator.

    For each step t, in torch.nn.LSTM's gate order::

        i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh, 4)
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(c_t)          # proj_size > 0: h_t = W_hr (sigmoid(o) * tanh(c_t))

    Args:
        input_size: features of the input x (I).
        hidden_size: features of the state h (H).
        num_layers: stacked layers; layer k > 0 takes layer k-1's output.
        bias: with the biases b_ih and b_hh.
        batch_first: input and output as (B, T, feature) instead of (T, B, feature).
        dropout: dropout on each layer's output but the last one's, in training.
        bidirectional: a second direction per layer, run from the last step to the
            first; outputs of the two directions are concatenated.
        proj_size: if > 0, an LSTM with projections (LSTMP): h is projected to
            proj_size (P < H) features by weight_hr, as in torch.nn.LSTM.
        device, dtype: of the parameters (float32, float64, bfloat16, float16).
        zoneout_cell, zoneout_hidden (keyword only): zoneout's rates (Krueger et
            al. 2016), which torch.nn.LSTM does not have: in training each
            element of c (h) keeps its previous value with this probability
            per step, in eval it is mixed by the rate; see
            lstm_ext.LayerNormLSTM. 0 (the default): none, and the module is
            exactly torch.nn.LSTM. Not with proj_size.

    Inputs: ``input, (h_0, c_0)``
        * input: (T, B, I), (B, T, I) when batch_first, or (T, I) unbatched; or a
          ``torch.nn.utils.rnn.PackedSequence``.
        * h_0, c_0: (D * num_layers, B, H), or (D * num_layers, H) unbatched, D = 2
          if bidirectional else 1; h_0 has P features with projections. Zeros
          when hx is omitted.

    Outputs: ``output, (h_n, c_n)``
        * output: (T, B, D * H) (batch_first: (B, T, D * H)), each step's h of the
          last layer (D * P features with projections); a PackedSequence for a
          PackedSequence input.
        * h_n, c_n: (D * num_layers, B, H), each layer's and direction's last
          state; h_n has P features with projections.

    Attributes:
        weight_ih_l{k}[_reverse]: [4H, I] for k = 0, [4H, D * H] for k > 0
            ([4H, D * P] with projections).
        weight_hh_l{k}[_reverse]: [4H, H] ([4H, P] with projections).
        bias_ih_l{k}[_reverse], bias_hh_l{k}[_reverse]: [4H].
        weight_hr_l{k}[_reverse]: [P, H], with projections only.
        All initialised uniform in (-1/sqrt(H), 1/sqrt(H)), as torch.nn.LSTM; the
        state_dict is interchangeable with torch.nn.LSTM's.

    Per layer and direction one operator runs the whole sequence: one matrix
    product for all steps' input projections, then per step one recurrent
    product and one fused pointwise pass; the backward runs through time in the
    same way and forms only the gradients autograd asks for. A PackedSequence
    runs the same one operator call per layer and direction, each step over
    the sequences it still has. Works with torch.compile(fullgraph=True), torch.jit.trace,
    torch.export, autocast, DDP, parametrizations and meta-device init.

    Example::

        >>> rnn = lstm_ext.LSTM(10, 20, num_layers=2, batch_first=True)
        >>> output, (h_n, c_n) = rnn(torch.randn(3, 5, 10))
        >>> output.shape, h_n.shape
        (torch.Size([3, 5, 20]), torch.Size([2, 3, 20]))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, zoneout_cell: float = 0.0,
                 zoneout_hidden: float = 0.0) -> None:
        from lstm_ext.layernorm import _check_rate

        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype)
        self.zoneout_cell = _check_rate("zoneout_cell", zoneout_cell)
        self.zoneout_hidden = _check_rate("zoneout_hidden", zoneout_hidden)
        if proj_size > 0 and (self.zoneout_cell or self.zoneout_hidden):
            raise NotImplementedError("lstm_ext.LSTM: zoneout with proj_size > 0 is not supported")

    def extra_repr(self) -> str:
        s = super().extra_repr()
        for name in ("zoneout_cell", "zoneout_hidden"):
            if getattr(self, name, 0.0):
                s += f", {name}={getattr(self, name)}"
        return s

    def to_torch(self) -> nn.Module:
        if getattr(self, "zoneout_cell", 0.0) or getattr(self, "zoneout_hidden", 0.0):
            raise ValueError("lstm_ext.LSTM.to_torch: torch.nn.LSTM has no zoneout; set zoneout_cell and "
                             "zoneout_hidden to 0 first (the parameters are the same)")
        return super().to_torch()

    def _op_args(self, params) -> tuple:
        return super()._op_args(params) + (getattr(self, "zoneout_cell", 0.0), getattr(self, "zoneout_hidden", 0.0))

    def _zoneout_forward(self, input, hx):
        """A PackedSequence with zoneout: each layer and direction through
        layer_norm_lstm_layer without its layer norms (a padded input runs
        them from the lstm operator)."""
        from lstm_ext.layernorm import run_stacked

        layers = []
        for names in self._all_weights:
            p = [getattr(self, name) for name in names]
            layers.append({"weight_ih": p[0], "weight_hh": p[1], "bias": p[2] + p[3] if self.bias else None})
        return run_stacked(self, input, hx, layers, "LSTM")

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Union[Tensor, PackedSequence], Tuple[Tensor, Tensor]]:
        """(output, (h_n, c_n)) as torch.nn.LSTM returns them (shapes in the class
        docstring); a PackedSequence input gives a PackedSequence output."""
        if hx is not None:
            _require_pair(hx, "lstm_ext.LSTM", "(h_0, c_0)")
            for name, state in zip(("h_0", "c_0"), hx):
                if not isinstance(state, Tensor):
                    raise ValueError(f"lstm_ext.LSTM: expected {name} to be a tensor, got {_describe(state)}")
        if isinstance(input, PackedSequence):
            if getattr(self, "zoneout_cell", 0.0) or getattr(self, "zoneout_hidden", 0.0):
                return self._zoneout_forward(input, hx)
            from lstm_ext.packed import rnn_packed  # packed.py imports this module

            output, (h_n, c_n) = rnn_packed(self, input, hx)
            return output, (h_n, c_n)
        self._check_input(input)
        params = self._flat_weights
        # Shapes, dtypes and devices are checked by the operator, which also
        # runs the layers (csrc/lstm_layers.cpp).
        args = self._op_args(params)
        if _direct((input, *params) if hx is None else (input, *hx, *params)):
            return native.lstm(input, hx, *args)
        output, h_n, c_n = _lstm(input, [] if hx is None else list(hx), *args)
        return output, (h_n, c_n)

    # torch.nn.LSTM's versions of the helpers (h and c; see _RNNBase).
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden


class GRU(_RNNBase):
    r"""A multi-layer GRU over a sequence: torch.nn.GRU's interface, parameters
    and results, each layer and direction one fused operator, on the LSTM's
    engine.

    For each step t, in torch.nn.GRU's gate order::

        r = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn))
        h_t = (1 - z) * n + z * h_{t-1}

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout,
        bidirectional, device, dtype: as torch.nn.GRU (and lstm_ext.LSTM).

    Inputs: ``input, h_0``
        * input: (T, B, I), (B, T, I) when batch_first, or (T, I) unbatched; or a
          ``torch.nn.utils.rnn.PackedSequence``.
        * h_0: (D * num_layers, B, H), or (D * num_layers, H) unbatched, D = 2 if
          bidirectional else 1. Zeros when omitted.

    Outputs: ``output, h_n``
        * output: (T, B, D * H) (batch_first: (B, T, D * H)); a PackedSequence
          for a PackedSequence input.
        * h_n: (D * num_layers, B, H).

    Attributes:
        weight_ih_l{k}[_reverse]: [3H, I] for k = 0, [3H, D * H] for k > 0.
        weight_hh_l{k}[_reverse]: [3H, H].
        bias_ih_l{k}[_reverse], bias_hh_l{k}[_reverse]: [3H].
        Gate blocks r, z, n; initialised uniform in (-1/sqrt(H), 1/sqrt(H)); the
        state_dict is interchangeable with torch.nn.GRU's.

    Per layer and direction: one matrix product for all steps' input
    projections (b_ih and b_hh's r, z parts folded in), then per step the
    recurrent product and one fused pointwise pass. torch.nn.GRU has no
    oneDNN path on the CPU and runs ATen's per-step loop.

    Example::

        >>> rnn = lstm_ext.GRU(10, 20, num_layers=2, batch_first=True)
        >>> output, h_n = rnn(torch.randn(3, 5, 10))
        >>> output.shape, h_n.shape
        (torch.Size([3, 5, 20]), torch.Size([2, 3, 20]))
    """

    _gates = 3
    _torch_module = nn.GRU
    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype)

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None
                ) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
        """(output, h_n) as torch.nn.GRU returns them (shapes in the class
        docstring); a PackedSequence input gives a PackedSequence output."""
        if hx is not None and not isinstance(hx, Tensor):
            raise TypeError(f"lstm_ext.GRU: hx must be a Tensor h_0 of shape (D * num_layers, batch, "
                            f"hidden_size), got {_describe(hx)}")
        if isinstance(input, PackedSequence):
            from lstm_ext.packed import rnn_packed  # packed.py imports this module

            output, (h_n,) = rnn_packed(self, input, None if hx is None else (hx,))
            return output, h_n
        self._check_input(input)
        params = self._flat_weights
        args = self._op_args(params)
        if _direct((input, *params) if hx is None else (input, hx, *params)):
            return native.gru(input, hx, *args)
        return _gru(input, [] if hx is None else [hx], *args)
