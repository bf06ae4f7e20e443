"""``lstm_ext.LSTM``: a drop-in for torch.nn.LSTM with the time loop in one operator."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from lstm_ext import _ops  # noqa: F401  (operators and their fake implementations)
from lstm_ext.functional import _describe, _require_pair

_layer_forward = torch.ops.lstm_ext.layer_forward.default


def lstm_layer(input: Tensor, hx: Tuple[Tensor, Tensor], weight_ih: Tensor, weight_hh: Tensor,
               bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
               reverse: bool = False) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One layer and direction over a whole sequence: input (T, B, I), hx = (h_0, c_0)
    each (B, H); returns (output (T, B, H), (h_n, c_n)). Differentiable."""
    output, h_n, c_n, _, _ = _layer_forward(input, hx[0], hx[1], weight_ih, weight_hh, bias_ih, bias_hh, reverse)
    return output, (h_n, c_n)


class LSTM(nn.Module):
    """torch.nn.LSTM's interface, parameters and results, on fused operators.

    Per layer and direction one operator runs the whole sequence: one matrix
    product for all time steps' input projections, then per step one recurrent
    product and one fused pointwise pass; backward through time inside the
    operator, weight gradients as single products after the loop.

    proj_size > 0 and PackedSequence input raise NotImplementedError.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        super().__init__()
        if proj_size:
            raise NotImplementedError("lstm_ext.LSTM: proj_size > 0 is not supported; use torch.nn.LSTM")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError(f"lstm_ext.LSTM: dropout must be a number in [0, 1], got {dropout}")
        if hidden_size <= 0 or num_layers <= 0 or input_size < 0:
            raise ValueError(f"lstm_ext.LSTM: need input_size >= 0, hidden_size > 0 and num_layers > 0, got "
                             f"{input_size}, {hidden_size}, {num_layers}")
        factory = {"device": device, "dtype": dtype}
        # Per layer and direction, the names of (weight_ih, weight_hh, bias_ih, bias_hh), None without bias.
        self._layer_names: List[Tuple[str, str, Optional[str], Optional[str]]] = []
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = 0
        directions = 2 if bidirectional else 1
        self._flat_weights_names: List[str] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"weight_ih": (4 * hidden_size, layer_input), "weight_hh": (4 * hidden_size, hidden_size)}
                if bias:
                    shapes.update({"bias_ih": (4 * hidden_size,), "bias_hh": (4 * hidden_size,)})
                for name, shape in shapes.items():
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name + suffix)
                self._layer_names.append(("weight_ih" + suffix, "weight_hh" + suffix,
                                          "bias_ih" + suffix if bias else None, "bias_hh" + suffix if bias else None))
        self.reset_parameters()

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

    def _layer_weights(self, index: int) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        """(weight_ih, weight_hh, bias_ih, bias_hh) of layer * directions + direction."""
        params = self._parameters  # a dict lookup: nn.Module.__getattr__ costs more at small sizes
        return tuple(None if name is None else params[name] for name in self._layer_names[index])

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        if isinstance(input, PackedSequence):
            raise NotImplementedError("lstm_ext.LSTM: PackedSequence input is not supported; pad the batch "
                                      "(torch.nn.utils.rnn.pad_packed_sequence) or use torch.nn.LSTM")
        if not isinstance(input, Tensor) or input.dim() not in (2, 3):
            raise ValueError(f"lstm_ext.LSTM: expected input of shape (seq_len, input_size) unbatched or "
                             f"(seq_len, batch, input_size) ({'batch, seq_len' if self.batch_first else 'seq_len, batch'}"
                             f" first), got {_describe(input)} of {input.dim() if isinstance(input, Tensor) else '?'} dims")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"lstm_ext.LSTM: input.size(-1) must be equal to input_size. "
                             f"Expected {self.input_size}, got {input.shape[-1]}")
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        batch = input.shape[1]
        directions = 2 if self.bidirectional else 1
        state_shape = (self.num_layers * directions, batch, self.hidden_size)
        if hx is None:
            # One zero state serves every layer and direction, as h_0 and as c_0.
            zeros = input.new_zeros(state_shape[1:])
            states = [(zeros, zeros)] * state_shape[0]
        else:
            _require_pair(hx, "lstm_ext.LSTM", "(h_0, c_0)")
            h0, c0 = hx
            for name, state in (("h_0", h0), ("c_0", c0)):
                expected = state_shape if batched else (state_shape[0], state_shape[2])
                if not isinstance(state, Tensor) or tuple(state.shape) != expected:
                    raise ValueError(f"lstm_ext.LSTM: expected {name} of shape {expected}, got {_describe(state)}")
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            states = list(zip(h0.unbind(0), c0.unbind(0)))

        layer_input = input
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                out, (h, c) = lstm_layer(layer_input, states[index], *self._layer_weights(index),
                                         reverse=direction == 1)
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        output = layer_input
        h_n, c_n = (h_n[0].unsqueeze(0), c_n[0].unsqueeze(0)) if len(h_n) == 1 else (torch.stack(h_n), torch.stack(c_n))
        if not batched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
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
        """A torch.nn.LSTM with these parameters."""
        first = next(self.parameters())
        module = nn.LSTM(self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first,
                         self.dropout, self.bidirectional, device=first.device, dtype=first.dtype)
        module.load_state_dict(self.state_dict())
        return module.train(self.training)
