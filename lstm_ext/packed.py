"""PackedSequence input for ``lstm_ext.LSTM``: the sequence operator run once per
stretch of steps over which the batch does not shrink.

A PackedSequence holds its sequences sorted by length, longest first, so at
step t the first ``batch_sizes[t]`` of them are active. Between two steps at
which that count changes, the active sequences are one fixed batch, so each
such stretch is one call of the layer operator (forward direction: stretches
in time order, the state of a sequence that has ended carried unchanged to
h_n; reverse direction: stretches in reverse order, a sequence joining with
its initial state at its own last step). There are as many stretches as
distinct lengths, not steps.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from lstm_ext.rnn import lstm_layer

if TYPE_CHECKING:
    from lstm_ext.rnn import LSTM


def _stretches(batch_sizes: Tensor) -> List[Tuple[int, int, int]]:
    """(first step, end step, batch) of each run of equal batch sizes, in time order."""
    sizes = batch_sizes.tolist()
    runs, start = [], 0
    for t in range(1, len(sizes) + 1):
        if t == len(sizes) or sizes[t] != sizes[start]:
            runs.append((start, t, sizes[start]))
            start = t
    return runs


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    """x (T, b, H) with zero rows appended up to (T, rows, H)."""
    return F.pad(x, (0, 0, 0, rows - x.shape[1])) if x.shape[1] < rows else x


def _direction(layer_input: Tensor, runs: List[Tuple[int, int, int]], h0: Tensor, c0: Tensor,
               weights: List[Optional[Tensor]], reverse: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """One layer and direction over a padded, length-sorted (T, B, I) input:
    (output (T, B, H) with zeros past each sequence's end, h_n, c_n)."""
    batch = h0.shape[0]
    pieces: List[Tensor] = []
    if not reverse:
        h, c = h0, c0
        for t0, t1, b in runs:
            out, (h_b, c_b) = lstm_layer(layer_input[t0:t1, :b], (h[:b], c[:b]), *weights, reverse=False)
            pieces.append(_pad_rows(out, batch))
            # Sequences past row b ended before t0: their states are final.
            h, c = torch.cat([h_b, h[b:]]), torch.cat([c_b, c[b:]])
        return torch.cat(pieces), h, c
    h = c = None
    for t0, t1, b in reversed(runs):
        if h is None:
            h_in, c_in = h0[:b], c0[:b]
        else:  # sequences whose last step is t1 - 1 start here from h_0, c_0
            h_in, c_in = torch.cat([h, h0[h.shape[0]:b]]), torch.cat([c, c0[c.shape[0]:b]])
        out, (h, c) = lstm_layer(layer_input[t0:t1, :b], (h_in, c_in), *weights, reverse=True)
        pieces.append(_pad_rows(out, batch))
    return torch.cat(pieces[::-1]), h, c


def lstm_packed(module: "LSTM", packed: PackedSequence,
                hx: Optional[Tuple[Tensor, Tensor]]) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
    """``module(packed, hx)`` for an ``lstm_ext.LSTM`` module, as torch.nn.LSTM
    computes it: h_0, c_0 and h_n, c_n in the batch's original order."""
    data, batch_sizes, sorted_indices, unsorted_indices = packed
    where = "lstm_ext.LSTM"
    if data.dim() != 2:
        raise ValueError(f"{where}: a PackedSequence's data must be 2-D (sum of lengths, input_size), "
                         f"got shape {tuple(data.shape)}")
    if data.shape[1] != module.input_size:
        raise ValueError(f"{where}: input has {data.shape[1]} features but input_size is {module.input_size} "
                         f"(PackedSequence data shape {tuple(data.shape)})")
    directions = 2 if module.bidirectional else 1
    batch, hidden = int(batch_sizes[0]), module.hidden_size
    expected = (module.num_layers * directions, batch, hidden)
    if hx is None:
        zeros = data.new_zeros(expected)
        h0_all, c0_all = zeros, zeros
    else:
        for name, state in zip(("h_0", "c_0"), hx):
            if tuple(state.shape) != expected:
                raise ValueError(f"{where}: expected {name} of shape {expected}, got a tensor of shape "
                                 f"{tuple(state.shape)}")
            if state.device != data.device:  # before index_select, whose error would not name it
                raise ValueError(f"{where}: device mismatch: {name} is on {state.device} but input is on "
                                 f"{data.device}")
        h0_all, c0_all = hx
        if sorted_indices is not None:  # into the packed (length-sorted) order
            h0_all, c0_all = h0_all.index_select(1, sorted_indices), c0_all.index_select(1, sorted_indices)

    layer_input, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
    runs = _stretches(batch_sizes)
    # The module's parameters per layer and direction, in the order its
    # _flat_weights_names lists them: weight_ih, weight_hh[, bias_ih, bias_hh].
    params = module._flat_weights
    per_direction = 4 if module.bias else 2
    h_n: List[Tensor] = []
    c_n: List[Tensor] = []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            k = layer * directions + direction
            weights = params[k * per_direction:(k + 1) * per_direction] + [None] * (4 - per_direction)
            out, h, c = _direction(layer_input, runs, h0_all[k], c0_all[k], weights, reverse=bool(direction))
            outputs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, 2)
        if module.dropout and module.training and layer < module.num_layers - 1:
            layer_input = F.dropout(layer_input, module.dropout, training=True)

    output = pack_padded_sequence(layer_input, lengths, enforce_sorted=True).data
    h_out, c_out = torch.stack(h_n), torch.stack(c_n)
    if unsorted_indices is not None:  # back into the caller's order
        h_out, c_out = h_out.index_select(1, unsorted_indices), c_out.index_select(1, unsorted_indices)
    return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), (h_out, c_out)
