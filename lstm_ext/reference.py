"""The pure-Python reference: the course text's LSTM cell and model, and a GRU
cell and model written the same way (the course's next step).

Same maths, constructor and parameter names as the course (four nn.Linear
gates Wf, Wi, Wc, Wo over cat(x, h)), so state_dicts move between this and
the fused modules. The one change is the model's known defect: the course's
LSTMModel starts the state as zeros(1, H) and iterates over dim 0, so its own
demo (X of shape (100, 5, 4)) crashes. Here input is batch-first (B, T, I)
and the state starts as zeros(B, H).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn


class LSTMCell(nn.Module):
    """The course's cell: one nn.Linear(I + H, H) per gate."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.Wf = nn.Linear(input_size + hidden_size, hidden_size)  # forget gate
        self.Wi = nn.Linear(input_size + hidden_size, hidden_size)  # input gate
        self.Wc = nn.Linear(input_size + hidden_size, hidden_size)  # cell candidate
        self.Wo = nn.Linear(input_size + hidden_size, hidden_size)  # output gate

    def forward(self, x: Tensor, hidden: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
        """x (B, I), hidden = (h_prev, c_prev) each (B, H) -> (h, c)."""
        h_prev, c_prev = hidden
        combined = torch.cat((x, h_prev), 1)
        f_t = torch.sigmoid(self.Wf(combined))
        i_t = torch.sigmoid(self.Wi(combined))
        c_hat_t = torch.tanh(self.Wc(combined))
        c_t = f_t * c_prev + i_t * c_hat_t
        o_t = torch.sigmoid(self.Wo(combined))
        h_t = o_t * torch.tanh(c_t)
        return h_t, c_t


class LSTMModel(nn.Module):
    """The course's model, batch-first: fc of the last hidden state."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.lstm_cell = LSTMCell(input_size, hidden_size)
        self.fc = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, I) -> fc(h_T), (B, output_size)."""
        batch = x.shape[0]
        h_t = x.new_zeros(batch, self.lstm_cell.hidden_size)
        c_t = x.new_zeros(batch, self.lstm_cell.hidden_size)
        for t in range(x.shape[1]):
            h_t, c_t = self.lstm_cell(x[:, t], (h_t, c_t))
        return self.fc(h_t)


class GRUCell(nn.Module):
    """A GRU cell in the course's style, with torch.nn.GRU's formulation: one
    nn.Linear over cat(x, h) for each of the reset and update gates, and for
    the candidate n one over x and one over h, because torch's n puts the
    recurrent bias inside r * (W_hn h + b_hn)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.Wr = nn.Linear(input_size + hidden_size, hidden_size)  # reset gate
        self.Wz = nn.Linear(input_size + hidden_size, hidden_size)  # update gate
        self.Win = nn.Linear(input_size, hidden_size)  # candidate, input part
        self.Whn = nn.Linear(hidden_size, hidden_size)  # candidate, recurrent part

    def forward(self, x: Tensor, h_prev: Tensor) -> Tensor:
        """x (B, I), h_prev (B, H) -> h (B, H)."""
        combined = torch.cat((x, h_prev), 1)
        r_t = torch.sigmoid(self.Wr(combined))
        z_t = torch.sigmoid(self.Wz(combined))
        n_t = torch.tanh(self.Win(x) + r_t * self.Whn(h_prev))
        return (1 - z_t) * n_t + z_t * h_prev

    def torch_parameters(self) -> dict:
        """The same cell in torch.nn.GRUCell's parameters (weight_ih, weight_hh,
        bias_ih, bias_hh; gate blocks r, z, n), as new tensors."""
        I = self.input_size
        with torch.no_grad():
            return {
                "weight_ih": torch.cat([self.Wr.weight[:, :I], self.Wz.weight[:, :I], self.Win.weight]),
                "weight_hh": torch.cat([self.Wr.weight[:, I:], self.Wz.weight[:, I:], self.Whn.weight]),
                "bias_ih": torch.cat([self.Wr.bias, self.Wz.bias, self.Win.bias]),
                "bias_hh": torch.cat([torch.zeros_like(self.Wr.bias), torch.zeros_like(self.Wz.bias),
                                      self.Whn.bias]),
            }


class GRUModel(nn.Module):
    """The course's model with the GRU cell, batch-first: fc of the last hidden state."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.gru_cell = GRUCell(input_size, hidden_size)
        self.fc = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, I) -> fc(h_T), (B, output_size)."""
        h_t = x.new_zeros(x.shape[0], self.gru_cell.hidden_size)
        for t in range(x.shape[1]):
            h_t = self.gru_cell(x[:, t], h_t)
        return self.fc(h_t)


def _layer_norm(v: Tensor, weight: Tensor, bias=None, eps: float = 1e-5) -> Tensor:
    """LN over the last dimension: mean and biased variance of the row, then gain (and shift)."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    out = (v - mean) / torch.sqrt(var + eps) * weight
    return out if bias is None else out + bias


def layer_norm_lstm_step(x: Tensor, h_prev: Tensor, c_prev: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                         bias=None, ln_ih_weight=None, ln_hh_weight=None, ln_c_weight=None, ln_c_bias=None,
                         d_c=0.0, d_h=0.0) -> Tuple[Tensor, Tensor]:
    """One step of the LayerNorm LSTM, written out (lstm_ext.LayerNormLSTM's maths)::

        a = LN(W_ih x; g_ih) + LN(W_hh h_prev; g_hh) + b          (i, f, g, o = split(a, 4))
        c~ = sigmoid(f) c_prev + sigmoid(i) tanh(g)
        h~ = sigmoid(o) tanh(LN(c~; g_c, b_c))
        c = d_c c_prev + (1 - d_c) c~,  h = d_h h_prev + (1 - d_h) h~

    LN normalizes a row (mean, biased variance, eps 1e-5) and applies the gain
    (and shift). Without the LN parameters (all None) it is the plain LSTM
    (with the one bias b = b_ih + b_hh). d_c, d_h: zoneout's masks (0 or 1,
    in training) or rates (eval: the expectation); 0 is no zoneout.
    Returns (h, c).
    """
    ih = x @ weight_ih.t()
    hh = h_prev @ weight_hh.t()
    layer_norm = ln_ih_weight is not None
    a = (_layer_norm(ih, ln_ih_weight) + _layer_norm(hh, ln_hh_weight)) if layer_norm else ih + hh
    if bias is not None:
        a = a + bias
    i, f, g, o = a.chunk(4, -1)
    c_candidate = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    y = _layer_norm(c_candidate, ln_c_weight, ln_c_bias) if layer_norm else c_candidate
    h_candidate = torch.sigmoid(o) * torch.tanh(y)
    c = d_c * c_prev + (1 - d_c) * c_candidate
    h = d_h * h_prev + (1 - d_h) * h_candidate
    return h, c


def layer_norm_lstm_sequence(input: Tensor, hx: Tuple[Tensor, Tensor], weight_ih: Tensor, weight_hh: Tensor,
                             bias=None, ln_ih_weight=None, ln_hh_weight=None, ln_c_weight=None, ln_c_bias=None,
                             zoneout_cell_mask=None, zoneout_hidden_mask=None, zoneout_cell: float = 0.0,
                             zoneout_hidden: float = 0.0, reverse: bool = False
                             ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """layer_norm_lstm_step looped over input (T, B, I) from hx = (h_0, c_0):
    one layer and direction, as lstm_ext.layer_norm_lstm_layer. The masks
    (T, B, H) give zoneout's d per step; where a mask is None the rate is
    used (eval). Returns (output (T, B, H), (h_n, c_n))."""
    h, c = hx
    outputs = [None] * input.shape[0]
    steps = range(input.shape[0] - 1, -1, -1) if reverse else range(input.shape[0])
    for t in steps:
        d_c = zoneout_cell if zoneout_cell_mask is None else zoneout_cell_mask[t]
        d_h = zoneout_hidden if zoneout_hidden_mask is None else zoneout_hidden_mask[t]
        h, c = layer_norm_lstm_step(input[t], h, c, weight_ih, weight_hh, bias, ln_ih_weight, ln_hh_weight,
                                    ln_c_weight, ln_c_bias, d_c, d_h)
        outputs[t] = h
    output = torch.stack(outputs) if outputs else input.new_empty(0, *h.shape)
    return output, (h, c)


class LayerNormLSTMCell(nn.Module):
    """The LayerNorm LSTM's cell in torch ops (layer_norm_lstm_step), the
    yardstick for lstm_ext.LayerNormLSTM. Its parameters are one layer's of
    LayerNormLSTM without the ``_l0`` suffix: weight_ih [4H, I], weight_hh
    [4H, H], bias [4H], ln_ih_weight and ln_hh_weight [4H], ln_c_weight and
    ln_c_bias [H]; initialised as LayerNormLSTM's."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H))
        self.bias = nn.Parameter(torch.empty(4 * H)) if bias else None
        self.ln_ih_weight = nn.Parameter(torch.ones(4 * H))
        self.ln_hh_weight = nn.Parameter(torch.ones(4 * H))
        self.ln_c_weight = nn.Parameter(torch.ones(H))
        self.ln_c_bias = nn.Parameter(torch.zeros(H))
        bound = 1.0 / hidden_size ** 0.5
        with torch.no_grad():
            self.weight_ih.uniform_(-bound, bound)
            self.weight_hh.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.zero_()
                self.bias[H:2 * H] = 1.0  # the forget gate's

    def forward(self, x: Tensor, hidden: Tuple[Tensor, Tensor], d_c=0.0, d_h=0.0) -> Tuple[Tensor, Tensor]:
        """x (B, I), hidden = (h_prev, c_prev) each (B, H), zoneout's d_c, d_h -> (h, c)."""
        return layer_norm_lstm_step(x, hidden[0], hidden[1], self.weight_ih, self.weight_hh, self.bias,
                                    self.ln_ih_weight, self.ln_hh_weight, self.ln_c_weight, self.ln_c_bias,
                                    d_c, d_h)


class LayerNormLSTM(nn.Module):
    """lstm_ext.LayerNormLSTM as a Python loop of torch ops: the same
    constructor, parameter names (its state_dict loads here and back) and
    zoneout draws (per layer and direction c's mask, then h's, then dropout
    between layers, from torch's generator, so one seed gives both modules
    the same masks). Input (T, B, I), or (B, T, I) when batch_first."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 zoneout_cell: float = 0.0, zoneout_hidden: float = 0.0) -> None:
        super().__init__()
        self.hidden_size, self.num_layers, self.batch_first = hidden_size, num_layers, batch_first
        self.dropout, self.bidirectional = dropout, bidirectional
        self.zoneout_cell, self.zoneout_hidden = zoneout_cell, zoneout_hidden
        directions = 2 if bidirectional else 1
        self.cells = nn.ModuleList()
        for layer in range(num_layers):
            for _ in range(directions):
                self.cells.append(LayerNormLSTMCell(input_size if layer == 0 else hidden_size * directions,
                                                    hidden_size, bias))
        self._suffixes = [f"_l{layer}" + ("_reverse" if d else "") for layer in range(num_layers)
                          for d in range(directions)]
        self._register_load_state_dict_pre_hook(self._from_fused_names)
        self._register_state_dict_hook(LayerNormLSTM._to_fused_names)

    def _from_fused_names(self, state_dict, prefix, *args):
        for k, suffix in enumerate(self._suffixes):
            for name in ("weight_ih", "weight_hh", "bias", *_LN_NAMES):
                if prefix + name + suffix in state_dict:
                    state_dict[f"{prefix}cells.{k}.{name}"] = state_dict.pop(prefix + name + suffix)

    @staticmethod
    def _to_fused_names(module, state_dict, prefix, local_metadata):
        for key in list(state_dict):
            if key.startswith(prefix + "cells."):
                k, name = key[len(prefix) + len("cells."):].split(".", 1)
                state_dict[prefix + name + module._suffixes[int(k)]] = state_dict.pop(key)
        return state_dict

    def forward(self, x: Tensor, hx=None):
        """(output, (h_n, c_n)) as lstm_ext.LayerNormLSTM."""
        layers = [{name: getattr(cell, name) for name in ("weight_ih", "weight_hh", "bias", *_LN_NAMES)}
                  for cell in self.cells]
        return layer_norm_lstm_stacked(x, hx, layers, self.bidirectional, self.batch_first, self.dropout,
                                       self.training, self.zoneout_cell, self.zoneout_hidden)


_LN_NAMES = ("ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias")


def zoneout_masks(rate: float, shape, like: Tensor, training: bool):
    """Zoneout's d for one layer and direction in training: Bernoulli(rate)
    per element and step, in like's dtype and on its device; None (the rate
    itself is then d) otherwise. On the CPU, lstm_ext's Philox generator
    seeded by one draw from torch's generator (several times faster than
    bernoulli_); elsewhere bernoulli_. torch.manual_seed reproduces either."""
    if not training or rate == 0.0:
        return None
    if like.device.type in ("cpu", "meta"):
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)
        return torch.ops.lstm_ext.zoneout_mask(like, seed, list(shape), float(rate))
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(rate)


def zoneout_mask_pair(rate_c: float, rate_h: float, shape, like: Tensor, training: bool):
    """One layer and direction's [mask_c, mask_h]: zoneout_masks for each rate, c's first."""
    return [zoneout_masks(rate, shape, like, training) for rate in (rate_c, rate_h)]


def layer_norm_lstm_stacked(x: Tensor, hx, layers, bidirectional: bool, batch_first: bool = False,
                            dropout: float = 0.0, training: bool = False, zoneout_cell: float = 0.0,
                            zoneout_hidden: float = 0.0, layer_fn=None, batch_sizes=None, masks_fn=None):
    """Stacked layers of layer_norm_lstm_sequence (or layer_fn, with its
    arguments: lstm_ext.layer_norm_lstm_layer is how lstm_ext.LayerNormLSTM
    runs): layers[layer * D + direction] maps weight_ih, weight_hh, bias and
    the LN names to tensors (or None); x (T, B, I) ((B, T, I) batch_first),
    hx (h_0, c_0) each (len(layers), B, H) or None. In training, zoneout's
    masks are drawn per layer and direction (c's, then h's) and dropout
    follows each layer but the last. With batch_sizes (layer_fn's), x is a
    PackedSequence's data (N, I) and the masks (N, H). masks_fn(rate_c,
    rate_h, shape, like, training) -> (mask_c, mask_h) draws them instead of
    zoneout_mask_pair (lstm_ext's draws the same numbers in one call)."""
    layer_fn = layer_fn or layer_norm_lstm_sequence
    masks_fn = masks_fn or zoneout_mask_pair
    directions = 2 if bidirectional else 1
    if batch_first and batch_sizes is None:
        x = x.transpose(0, 1)
    H = layers[0]["weight_hh"].shape[1]
    B = int(batch_sizes[0]) if batch_sizes is not None else x.shape[1]
    mask_shape = (x.shape[0], H) if batch_sizes is not None else (x.shape[0], B, H)
    packed = {} if batch_sizes is None else {"batch_sizes": batch_sizes}
    if hx is None:
        hx = (x.new_zeros(len(layers), B, H),) * 2
    layer_input, h_n, c_n = x, [], []
    for layer in range(len(layers) // directions):
        outputs = []
        for direction in range(directions):
            k = layer * directions + direction
            w = layers[k]
            masks = masks_fn(zoneout_cell, zoneout_hidden, mask_shape, x, training)
            out, (h, c) = layer_fn(layer_input, (hx[0][k], hx[1][k]), w["weight_ih"], w["weight_hh"], w.get("bias"),
                                   *(w.get(name) for name in _LN_NAMES), masks[0], masks[1], zoneout_cell,
                                   zoneout_hidden, reverse=direction == 1, **packed)
            outputs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, -1)
        if dropout > 0 and training and layer < len(layers) // directions - 1:
            layer_input = nn.functional.dropout(layer_input, dropout, training=True)
    out = layer_input.transpose(0, 1) if batch_first and batch_sizes is None else layer_input
    return out, (torch.stack(h_n), torch.stack(c_n))
