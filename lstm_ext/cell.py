"""``lstm_ext.LSTMCell``: the reference cell on the fused operators."""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from lstm_ext._native import native
from lstm_ext._ops import check_floating
from lstm_ext.functional import _cell_forward, _describe, _direct, _require_pair
from lstm_ext.rnn import gru_layer

# The reference's gate names, in its state_dict order, and each gate's block
# in the packed weight (torch.nn.LSTMCell's order: i, f, g, o).
GATE_BLOCKS = (("Wf", 1), ("Wi", 0), ("Wc", 2), ("Wo", 3))


def _check_sizes(where: str, input_size: int, hidden_size: int) -> None:
    """torch.nn's cells' checks of their sizes (input_size=0 is allowed, as there)."""
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if input_size < 0:
        raise ValueError(f"{where}: input_size must be zero or greater, got {input_size}")
    if hidden_size <= 0:
        raise ValueError(f"{where}: hidden_size must be greater than zero, got {hidden_size}")


class LSTMCell(nn.Module):
    r"""One LSTM step, fused: the course's reference cell (lstm_ext.reference.LSTMCell,
    four nn.Linear gates over cat(x, h)) as one operator, with its state_dict.

    ::

        i, f, g, o = split(weight @ cat(x, h_prev) + bias, 4)
        c = sigmoid(f) * c_prev + sigmoid(i) * tanh(g)
        h = sigmoid(o) * tanh(c)

    Args:
        input_size: features of x (I; 0 allowed, as torch.nn.LSTMCell).
        hidden_size: features of h and c (H).
        bias: with the bias.
        device, dtype: of the parameters (float32, float64, bfloat16, float16).

    Inputs: ``input, (h_prev, c_prev)``
        * input: (B, I), or (I,) unbatched.
        * h_prev, c_prev: (B, H), or (H,) unbatched; zeros when hx is omitted.

    Outputs: ``(h, c)``, each (B, H) (or (H,)), in the input's dtype.

    Attributes:
        weight: [4H, I + H], the packed gate weights over cat(x, h), gate blocks
            in torch.nn.LSTMCell's order i, f, g, o.
        bias: [4H] (or None). Both initialised uniform in (-1/sqrt(I+H), 1/sqrt(I+H)),
            as the reference's nn.Linear gates.

    ``state_dict()`` presents the parameters under the reference's keys
    (``Wf.weight``, ``Wf.bias``, ``Wi.*``, ``Wc.*``, ``Wo.*``); ``load_state_dict``
    takes those or the packed keys, with ``assign=True`` too.
    :meth:`from_torch` and :meth:`to_torch` convert from and to torch.nn.LSTMCell.

    Example::

        >>> cell = lstm_ext.LSTMCell(10, 20)
        >>> h, c = cell(torch.randn(3, 10))
        >>> h.shape
        torch.Size([3, 20])
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        _check_sizes("lstm_ext.LSTMCell", input_size, hidden_size)
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight = nn.Parameter(torch.empty(4 * hidden_size, input_size + hidden_size, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(I+H), as the reference's nn.Linear gates."""
        bound = 1.0 / math.sqrt(self.input_size + self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        """One step: (h, c), each (B, H), from input (B, I) and hx = (h_prev, c_prev)
        (zeros when omitted)."""
        if not isinstance(input, Tensor):
            raise TypeError(f"lstm_ext.LSTMCell: input must be a Tensor of shape (batch, input_size), got "
                            f"{_describe(input)}")
        if input.dim() == 1:
            return self._forward_unbatched(input, hx)
        if hx is None:
            batch = input.shape[0] if input.dim() == 2 else 0
            if input.is_quantized or input.layout != torch.strided:  # before new_zeros, whose error names no tensor
                check_floating("lstm_ext.lstm_cell", "input", input)
            hx = (input.new_zeros(batch, self.hidden_size), input.new_zeros(batch, self.hidden_size))
        else:
            _require_pair(hx, "lstm_ext.LSTMCell", "(h_prev, c_prev)")
        # The operator directly, not lstm_cell(): at the course's size every
        # Python call is a measurable part of the step.
        weight, bias = self._weight_and_bias()
        if _direct((input, *hx, weight, bias)):
            return native.cell_forward(input, hx[0], hx[1], weight, bias)
        h, c, _, _ = _cell_forward(input, hx[0], hx[1], weight, bias)
        return h, c

    def _weight_and_bias(self) -> Tuple[Tensor, Optional[Tensor]]:
        """The parameters as the forward uses them: read as attributes when
        they are not plain Parameters (a parametrization, a tensor set in
        their place), else straight from _parameters, ~0.8 us faster per call
        than nn.Module.__getattr__."""
        params = self._parameters
        try:
            return params["weight"], params["bias"]
        except KeyError:
            return self.weight, self.bias

    def _forward_unbatched(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
        """input (I,) and states (H,), as torch.nn.LSTMCell takes them: a batch of one."""
        if hx is not None:
            _require_pair(hx, "lstm_ext.LSTMCell", "(h_prev, c_prev)")
            for name, state in zip(("h_prev", "c_prev"), hx):
                if not isinstance(state, Tensor) or state.dim() != 1:
                    raise ValueError(f"lstm_ext.LSTMCell: an unbatched input of shape (input_size,) takes states "
                                     f"of shape (hidden_size,), got {name} as {_describe(state)}")
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        h, c = self.forward(input.unsqueeze(0), hx)
        return h.squeeze(0), c.squeeze(0)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias is not None}"

    # --- state_dict in the reference's layout ---------------------------------

    def _gate_slices(self, weight: Tensor, bias: Optional[Tensor]):
        """(name, weight rows, bias rows) of each reference gate, as views."""
        H = self.hidden_size
        for name, block in GATE_BLOCKS:
            rows = slice(block * H, (block + 1) * H)
            yield name, weight[rows], None if bias is None else bias[rows]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if keep_vars:
            # The variables themselves, under their own names: views would not
            # be the module's parameters to a tracer (torch.onnx's legacy
            # exporter takes state_dict(keep_vars=True) as the module's inputs).
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        weight, bias = self.weight.detach(), None if self.bias is None else self.bias.detach()
        for name, gate_weight, gate_bias in self._gate_slices(weight, bias):
            destination[prefix + name + ".weight"] = gate_weight
            if gate_bias is not None:
                destination[prefix + name + ".bias"] = gate_bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        if prefix + "weight" in state_dict:  # the packed layout
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                                 missing_keys, unexpected_keys, error_msgs)
        assign = local_metadata.get("assign_to_params_buffers", False)
        # Each packed parameter's gate blocks: what the checkpoint holds, or
        # (a missing key) the parameter's own rows.
        expected = set()
        weight = self.weight.detach()
        bias = None if self.bias is None else self.bias.detach()
        for param_name in ("weight", "bias"):
            param = getattr(self, param_name)
            if param is None:
                continue
            blocks, loaded = [], False
            for name, gate_weight, gate_bias in self._gate_slices(weight, bias):
                key = f"{prefix}{name}.{param_name}"
                own = gate_weight if param_name == "weight" else gate_bias
                expected.add(key)
                value = state_dict.get(key)
                if value is None:
                    missing_keys.append(key)
                elif not torch.overrides.is_tensor_like(value):
                    error_msgs.append(f'While copying the parameter named "{key}", expected torch.Tensor or '
                                      f"Tensor-like object from checkpoint but received {type(value)}")
                elif value.shape != own.shape:
                    error_msgs.append(f"size mismatch for {key}: copying a param with shape {value.shape} "
                                      f"from checkpoint, the shape in current model is {own.shape}.")
                else:
                    blocks.append((own, value))
                    loaded = True
                    continue
                blocks.append((own, None))
            if loaded:
                self._load_packed(param_name, param, blocks, assign, prefix, error_msgs)
        if strict:  # no child modules: every other key under our prefix is unexpected
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in expected)

    def _load_packed(self, param_name: str, param: nn.Parameter, blocks, assign: bool, prefix: str,
                     error_msgs) -> None:
        """Loads one packed parameter from its gate blocks ((own rows, loaded tensor or None) in
        the packed order's reference-gate order): in place, or with assign=True as a new
        Parameter made of the loaded tensors, as nn.Module does for its own parameters."""
        key = prefix + param_name
        with torch.no_grad():
            if not assign:
                if param.is_meta and any(v is not None and not v.is_meta for _, v in blocks):
                    warnings.warn(f"for {key}: copying from a non-meta parameter in the checkpoint to a meta "
                                  "parameter in the current model, which is a no-op. (Did you mean to pass "
                                  "`assign=True` to assign items in the state dictionary to their corresponding "
                                  "key in the module instead of copying them in place?)", stacklevel=3)
                for own, value in blocks:
                    if value is not None:
                        own.copy_(value)
                return
            # assign: the reference's gate order, Wf Wi Wc Wo, into the packed order i f g o.
            ordered = [None] * 4
            for (_, block), (own, value) in zip(GATE_BLOCKS, blocks):
                ordered[block] = own if value is None else value
            devices = {t.device for t in ordered}
            if len(devices) > 1:
                error_msgs.append(f"While assigning {key}: its gate blocks are on different devices "
                                  f"({', '.join(sorted(str(d) for d in devices))}); load every gate's key")
                return
            packed = torch.cat(ordered, dim=0).detach()
            setattr(self, param_name, nn.Parameter(packed, requires_grad=param.requires_grad))

    # --- conversion to and from torch.nn.LSTMCell -----------------------------

    @classmethod
    def from_torch(cls, module: nn.LSTMCell) -> "LSTMCell":
        """The same cell as ``module``: weight = [W_ih | W_hh], bias = b_ih + b_hh."""
        has_bias = module.bias
        cell = cls(module.input_size, module.hidden_size, bias=has_bias,
                   device=module.weight_ih.device, dtype=module.weight_ih.dtype)
        with torch.no_grad():
            cell.weight.copy_(torch.cat([module.weight_ih, module.weight_hh], dim=1))
            if has_bias:
                cell.bias.copy_(module.bias_ih + module.bias_hh)
        return cell

    def to_torch(self) -> nn.LSTMCell:
        """A torch.nn.LSTMCell computing the same: W_ih, W_hh split, b_ih = bias, b_hh = 0."""
        I = self.input_size
        module = nn.LSTMCell(I, self.hidden_size, bias=self.bias is not None,
                             device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            module.weight_ih.copy_(self.weight[:, :I])
            module.weight_hh.copy_(self.weight[:, I:])
            if self.bias is not None:
                module.bias_ih.copy_(self.bias)
                module.bias_hh.zero_()
        return module


class GRUCell(nn.Module):
    r"""One GRU step, fused: a drop-in for torch.nn.GRUCell (same parameters,
    state_dict and results), run as the GRU's layer operator over one step.

    ::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    Args:
        input_size: features of x (I).
        hidden_size: features of h (H).
        bias: with the biases b_ih and b_hh.
        device, dtype: of the parameters (float32, float64, bfloat16, float16).

    Inputs: ``input, hx``
        * input: (B, I), or (I,) unbatched.
        * hx: (B, H), or (H,) unbatched; zeros when omitted.

    Outputs: ``h'``, (B, H) (or (H,)), in the input's dtype.

    Attributes:
        weight_ih: [3H, I]; weight_hh: [3H, H]; bias_ih, bias_hh: [3H], gate
            blocks r, z, n; all uniform in (-1/sqrt(H), 1/sqrt(H)), as
            torch.nn.GRUCell.

    Example::

        >>> cell = lstm_ext.GRUCell(10, 20)
        >>> cell(torch.randn(3, 10)).shape
        torch.Size([3, 20])
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        _check_sizes("lstm_ext.GRUCell", input_size, hidden_size)
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(H), as torch.nn.GRUCell."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _weights(self):
        """(weight_ih, weight_hh, bias_ih, bias_hh) as the forward uses them (see LSTMCell._weight_and_bias)."""
        params = self._parameters
        try:
            return params["weight_ih"], params["weight_hh"], params["bias_ih"], params["bias_hh"]
        except KeyError:
            return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        """One step: h' (B, H) from input (B, I) and hx (B, H) (zeros when omitted)."""
        where = "lstm_ext.GRUCell"
        if not isinstance(input, Tensor):
            raise TypeError(f"{where}: input must be a Tensor of shape (batch, input_size), got {_describe(input)}")
        if hx is not None and not isinstance(hx, Tensor):
            raise TypeError(f"{where}: hx must be a Tensor of shape (batch, hidden_size), got {_describe(hx)}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{where}: Expected input to be 1D or 2D, got {input.dim()}D instead (shape "
                             f"{tuple(input.shape)})")
        batched = input.dim() == 2
        if hx is not None and hx.dim() != input.dim():
            raise ValueError(f"{where}: for a {input.dim()}-D input, hx must be {input.dim()}-D too, got shape "
                             f"{tuple(hx.shape)}")
        if not batched:
            input = input.unsqueeze(0)
            hx = None if hx is None else hx.unsqueeze(0)
        if hx is None:
            if input.is_quantized or input.layout != torch.strided:
                check_floating("lstm_ext.GRU", "input", input)
            hx = input.new_zeros(input.shape[0], self.hidden_size)
        weights = self._weights()
        # The layer operator over one step: (1, B, I) in, h_n out.
        x = input.unsqueeze(0)
        if _direct((x, hx, *weights)):
            _, h = native.gru_layer_forward(x, hx, *weights, False, None)
        else:
            _, h = gru_layer(x, hx, *weights)
        return h if batched else h.squeeze(0)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"

    @classmethod
    def from_torch(cls, module: nn.GRUCell) -> "GRUCell":
        """The same cell as a torch.nn.GRUCell (parameters copied)."""
        cell = cls(module.input_size, module.hidden_size, bias=module.bias, device=module.weight_ih.device,
                   dtype=module.weight_ih.dtype)
        cell.load_state_dict(module.state_dict())
        return cell

    def to_torch(self) -> nn.GRUCell:
        """A torch.nn.GRUCell with these parameters (copied)."""
        module = nn.GRUCell(self.input_size, self.hidden_size, bias=self.bias, device=self.weight_ih.device,
                            dtype=self.weight_ih.dtype)
        module.load_state_dict(self.state_dict())
        return module
