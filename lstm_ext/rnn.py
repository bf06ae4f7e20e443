"""``lstm_ext.LSTM``: a drop-in for torch.nn.LSTM with the time loop in one operator."""
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


def lstm_layer(input: Tensor, hx: Tuple[Tensor, Tensor], weight_ih: Tensor, weight_hh: Tensor,
               bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
               reverse: bool = False) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One layer and direction over a whole sequence. Differentiable.

    Args:
        input: (T, B, I).
        hx: the pair (h_0, c_0), each (B, H).
        weight_ih: [4H, I]; weight_hh: [4H, H]; bias_ih, bias_hh: [4H] or None.
            Gate blocks in torch.nn.LSTM's order i, f, g, o.
        reverse: run the time loop from step T-1 down to 0.

    Returns:
        (output (T, B, H), (h_n, c_n)), each state (B, H), in the input's dtype.
    """
    _require_pair(hx, "lstm_ext.lstm_layer", "(h_0, c_0)")
    if _direct((input, *hx, weight_ih, weight_hh, bias_ih, bias_hh)):
        return native.layer_forward(input, hx[0], hx[1], weight_ih, weight_hh, bias_ih, bias_hh, reverse)
    tensors = (input, *hx, weight_ih, weight_hh, bias_ih, bias_hh)
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors):
        # Nothing to differentiate: the operator that keeps nothing for a backward.
        output, h_n, c_n = _layer_inference(input, hx[0], hx[1], weight_ih, weight_hh, bias_ih, bias_hh, reverse)
        return output, (h_n, c_n)
    output, h_n, c_n, _, _ = _layer_forward(input, hx[0], hx[1], weight_ih, weight_hh, bias_ih, bias_hh, reverse)
    return output, (h_n, c_n)


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
    if proj_size > 0:
        raise NotImplementedError("lstm_ext.LSTM: proj_size > 0 (LSTM with projections) is not supported yet; "
                                  "use torch.nn.LSTM for it")
    if dropout > 0 and num_layers == 1:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                      f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                      stacklevel=3)


class LSTM(nn.Module):
    r"""A multi-layer LSTM over a sequence: torch.nn.LSTM's interface, parameters
    and results, each layer and direction one fused operator.

    For each step t, in torch.nn.LSTM's gate order::

        i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh, 4)
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(c_t)

    Args:
        input_size: features of the input x (I).
        hidden_size: features of the state h (H).
        num_layers: stacked layers; layer k > 0 takes layer k-1's output.
        bias: with the biases b_ih and b_hh.
        batch_first: input and output as (B, T, feature) instead of (T, B, feature).
        dropout: dropout on each layer's output but the last one's, in training.
        bidirectional: a second direction per layer, run from the last step to the
            first; outputs of the two directions are concatenated.
        proj_size: must be 0 (projections are not supported yet).
        device, dtype: of the parameters (float32, float64, bfloat16, float16).

    Inputs: ``input, (h_0, c_0)``
        * input: (T, B, I), (B, T, I) when batch_first, or (T, I) unbatched; or a
          ``torch.nn.utils.rnn.PackedSequence``.
        * h_0, c_0: (D * num_layers, B, H), or (D * num_layers, H) unbatched, D = 2
          if bidirectional else 1. Zeros when hx is omitted.

    Outputs: ``output, (h_n, c_n)``
        * output: (T, B, D * H) (batch_first: (B, T, D * H)), each step's h of the
          last layer; a PackedSequence for a PackedSequence input.
        * h_n, c_n: (D * num_layers, B, H), each layer's and direction's last state.

    Attributes:
        weight_ih_l{k}[_reverse]: [4H, I] for k = 0, [4H, D * H] for k > 0.
        weight_hh_l{k}[_reverse]: [4H, H].
        bias_ih_l{k}[_reverse], bias_hh_l{k}[_reverse]: [4H].
        All initialised uniform in (-1/sqrt(H), 1/sqrt(H)), as torch.nn.LSTM; the
        state_dict is interchangeable with torch.nn.LSTM's.

    Per layer and direction one operator runs the whole sequence: one matrix
    product for all steps' input projections, then per step one recurrent
    product and one fused pointwise pass; the backward runs through time in the
    same way and forms only the gradients autograd asks for. A PackedSequence
    runs one operator call per stretch of steps over which the batch does not
    shrink. Works with torch.compile(fullgraph=True), torch.jit.trace,
    torch.export, autocast, DDP, parametrizations and meta-device init.

    Example::

        >>> rnn = lstm_ext.LSTM(10, 20, num_layers=2, batch_first=True)
        >>> output, (h_n, c_n) = rnn(torch.randn(3, 5, 10))
        >>> output.shape, h_n.shape
        (torch.Size([3, 5, 20]), torch.Size([2, 3, 20]))
    """

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
        self.proj_size = 0
        self.mode = "LSTM"  # as torch.nn.LSTM, for code that reads it
        directions = 2 if bidirectional else 1
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"weight_ih": (4 * hidden_size, layer_input), "weight_hh": (4 * hidden_size, hidden_size)}
                if bias:
                    shapes.update({"bias_ih": (4 * hidden_size,), "bias_hh": (4 * hidden_size,)})
                for name, shape in shapes.items():
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **factory)))
                self._all_weights.append([name + suffix for name in shapes])
                self._flat_weights_names.extend(self._all_weights[-1])
        self.reset_parameters()

    @property
    def _flat_weights(self) -> List[Optional[Tensor]]:
        """The parameters in torch.nn.LSTM's flat order, as the forward reads them.

        Each is read as an attribute, so parametrizations (weight_norm,
        register_parametrization) and the WeightDrop pattern (the Parameter
        deleted, a plain tensor of the same name set before each forward) see
        their tensor used, as with torch.nn.LSTM.
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
            "lstm_ext.LSTM does not support torch.jit.script (TorchScript is in maintenance mode in PyTorch). "
            "Use torch.jit.trace(module, example_inputs) or torch.export.export(module, (x,)), which both "
            "capture its operators, or torch.compile(module)")

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(hidden_size), as torch.nn.LSTM."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """No-op, for code written for torch.nn.LSTM (cuDNN's flat buffer is not used)."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s

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
            from lstm_ext.packed import lstm_packed  # packed.py imports this module

            return lstm_packed(self, input, hx)
        if not isinstance(input, Tensor):
            raise ValueError(f"lstm_ext.LSTM: expected input of shape (seq_len, input_size) unbatched or "
                             f"(seq_len, batch, input_size), got {_describe(input)}")
        params = self._flat_weights
        # Shapes, dtypes and devices are checked by the operator, which also
        # runs the layers (csrc/lstm_layers.cpp).
        args = (params, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional,
                self.batch_first)
        if _direct((input, *params) if hx is None else (input, *hx, *params)):
            return native.lstm(input, hx, *args)
        output, h_n, c_n = _lstm(input, [] if hx is None else list(hx), *args)
        return output, (h_n, c_n)

    @classmethod
    def from_torch(cls, module: nn.LSTM) -> "LSTM":
        """The same LSTM as a torch.nn.LSTM (parameters copied)."""
        first = next(module.parameters())
        rnn = cls(module.input_size, module.hidden_size, module.num_layers, module.bias, module.batch_first,
                  module.dropout, module.bidirectional, module.proj_size, device=first.device, dtype=first.dtype)
        rnn.load_state_dict(module.state_dict())
        return rnn.train(module.training)

    def to_torch(self) -> nn.LSTM:
        """A torch.nn.LSTM with these parameters (copied), on their device and dtype."""
        first = next(self.parameters())
        module = nn.LSTM(self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first,
                         self.dropout, self.bidirectional, device=first.device, dtype=first.dtype)
        module.load_state_dict(self.state_dict())
        return module.train(self.training)
