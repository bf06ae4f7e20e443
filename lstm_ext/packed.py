"""PackedSequence input for ``lstm_ext.LSTM`` and ``lstm_ext.GRU``: the sequence
operator run once per stretch of steps over which the batch does not shrink.

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

from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from lstm_ext.rnn import GRU, gru_layer, lstm_layer

if TYPE_CHECKING:
    from lstm_ext.rnn import _RNNBase

States = Tuple[Tensor, ...]  # (h, c) for the LSTM, (h,) for the GRU
# One layer and direction: (input, states, weights, reverse) -> (output, final states).
LayerFn = Callable[[Tensor, States, List[Optional[Tensor]], bool], Tuple[Tensor, States]]


def _lstm_layer(x: Tensor, states: States, weights, reverse: bool) -> Tuple[Tensor, States]:
    weight_ih, weight_hh, bias_ih, bias_hh, weight_hr = weights
    out, (h, c) = lstm_layer(x, states, weight_ih, weight_hh, bias_ih, bias_hh, reverse, weight_hr)
    return out, (h, c)


def _gru_layer(x: Tensor, states: States, weights, reverse: bool) -> Tuple[Tensor, States]:
    out, h = gru_layer(x, states[0], *weights[:4], reverse=reverse)
    return out, (h,)


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


def _direction(layer: LayerFn, layer_input: Tensor, runs: List[Tuple[int, int, int]], initial: States,
               weights: List[Optional[Tensor]], reverse: bool) -> Tuple[Tensor, States]:
    """One layer and direction over a padded, length-sorted (T, B, I) input:
    (output (T, B, H) with zeros past each sequence's end, the final states)."""
    batch = initial[0].shape[0]
    pieces: List[Tensor] = []
    if not reverse:
        states = initial
        for t0, t1, b in runs:
            out, ended = layer(layer_input[t0:t1, :b], tuple(s[:b] for s in states), weights, False)
            pieces.append(_pad_rows(out, batch))
            # Sequences past row b ended before t0: their states are final.
            states = tuple(torch.cat([e, s[b:]]) for e, s in zip(ended, states))
        return torch.cat(pieces), states
    states = None
    for t0, t1, b in reversed(runs):
        if states is None:
            start = tuple(s[:b] for s in initial)
        else:  # sequences whose last step is t1 - 1 start here from their initial states
            start = tuple(torch.cat([s, s0[s.shape[0]:b]]) for s, s0 in zip(states, initial))
        out, states = layer(layer_input[t0:t1, :b], start, weights, True)
        pieces.append(_pad_rows(out, batch))
    return torch.cat(pieces[::-1]), states


def rnn_packed(module: "_RNNBase", packed: PackedSequence,
               hx: Optional[States]) -> Tuple[PackedSequence, States]:
    """``module(packed, hx)`` for an ``lstm_ext.LSTM`` (hx = (h_0, c_0)) or
    ``lstm_ext.GRU`` (hx = (h_0,)) module, as torch.nn computes it: initial
    and final states in the batch's original order."""
    data, batch_sizes, sorted_indices, unsorted_indices = packed
    gru = isinstance(module, GRU)
    where = "lstm_ext.GRU" if gru else "lstm_ext.LSTM"
    layer, names = (_gru_layer, ("h_0",)) if gru else (_lstm_layer, ("h_0", "c_0"))
    if data.dim() != 2:
        raise ValueError(f"{where}: a PackedSequence's data must be 2-D (sum of lengths, input_size), "
                         f"got shape {tuple(data.shape)}")
    if data.shape[1] != module.input_size:
        raise ValueError(f"{where}: input has {data.shape[1]} features but input_size is {module.input_size} "
                         f"(PackedSequence data shape {tuple(data.shape)})")
    directions = 2 if module.bidirectional else 1
    batch, hidden = int(batch_sizes[0]), module.hidden_size
    # h is proj_size wide with projections, c always hidden_size.
    widths = (module.proj_size or hidden, hidden)[:len(names)]
    shapes = [(module.num_layers * directions, batch, width) for width in widths]
    if hx is None:
        initial = tuple(data.new_zeros(shape) for shape in shapes)
    else:
        for name, state, expected in zip(names, hx, shapes):
            if tuple(state.shape) != expected:
                raise ValueError(f"{where}: expected {name} of shape {expected}, got a tensor of shape "
                                 f"{tuple(state.shape)}")
            if state.device != data.device:  # before index_select, whose error would not name it
                raise ValueError(f"{where}: device mismatch: {name} is on {state.device} but input is on "
                                 f"{data.device}")
        initial = tuple(hx)
        if sorted_indices is not None:  # into the packed (length-sorted) order
            initial = tuple(s.index_select(1, sorted_indices) for s in initial)

    layer_input, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
    runs = _stretches(batch_sizes)
    # The module's parameters per layer and direction, in the order its
    # _flat_weights_names lists them: weight_ih, weight_hh[, bias_ih,
    # bias_hh][, weight_hr], as [weight_ih, weight_hh, bias_ih, bias_hh,
    # weight_hr] with None for those it lacks.
    params = module._flat_weights
    projections = module.proj_size > 0
    per_direction = (4 if module.bias else 2) + projections
    finals: List[States] = []
    for layer_index in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            k = layer_index * directions + direction
            own = params[k * per_direction:(k + 1) * per_direction]
            weights = own[:2] + (own[2:4] if module.bias else [None, None]) + [own[-1] if projections else None]
            out, states = _direction(layer, layer_input, runs, tuple(s[k] for s in initial), weights,
                                     reverse=bool(direction))
            outputs.append(out)
            finals.append(states)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, 2)
        if module.dropout and module.training and layer_index < module.num_layers - 1:
            layer_input = F.dropout(layer_input, module.dropout, training=True)

    output = pack_padded_sequence(layer_input, lengths, enforce_sorted=True).data
    stacked = tuple(torch.stack([f[kind] for f in finals]) for kind in range(len(names)))
    if unsorted_indices is not None:  # back into the caller's order
        stacked = tuple(s.index_select(1, unsorted_indices) for s in stacked)
    return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), stacked
