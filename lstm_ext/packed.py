"""PackedSequence input for ``lstm_ext.LSTM`` and ``lstm_ext.GRU``: one layer
operator call per layer and direction, on the PackedSequence's own data.

A PackedSequence holds its sequences sorted by length, longest first, its
data step after step: at step t the first ``batch_sizes[t]`` sequences are
active and their rows follow those of step t - 1. The layer operators take
that layout with ``batch_sizes`` and run each step over its own rows only
(so the call costs what its steps cost, not the padded batch's); h_n and c_n
are each sequence's state at its own last step, and the reverse direction
starts each sequence at its own last step (csrc/lstm_ops.cpp). Here only the
states are put into and out of the length-sorted order; the layers run in
C++ (lstm_packed and gru_packed in csrc/lstm_layers.cpp, the padded input's
driver), or, where torch.ops must see them (torch.compile, modes, tensor
subclasses), in the loop below over the same layer operators.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from lstm_ext._native import native
from lstm_ext.functional import _direct
from lstm_ext.rnn import GRU, _RNNBase, gru_layer, lstm_layer

States = Tuple[Tensor, ...]  # (h, c) for the LSTM, (h,) for the GRU


def rnn_packed(module: _RNNBase, packed: PackedSequence,
               hx: Optional[States]) -> Tuple[PackedSequence, States]:
    """``module(packed, hx)`` for an ``lstm_ext.LSTM`` (hx = (h_0, c_0)) or
    ``lstm_ext.GRU`` (hx = (h_0,)) module, as torch.nn computes it: initial
    and final states in the batch's original order."""
    data, batch_sizes, sorted_indices, unsorted_indices = packed
    gru = isinstance(module, GRU)
    where = "lstm_ext.GRU" if gru else "lstm_ext.LSTM"
    names = ("h_0",) if gru else ("h_0", "c_0")
    if data.dim() != 2:
        raise ValueError(f"{where}: a PackedSequence's data must be 2-D (sum of lengths, input_size), "
                         f"got shape {tuple(data.shape)}")
    if data.shape[1] != module.input_size:
        raise ValueError(f"{where}: input has {data.shape[1]} features but input_size is {module.input_size} "
                         f"(PackedSequence data shape {tuple(data.shape)})")
    params = module._flat_weights
    if _direct((data, *params) if hx is None else (data, *hx, *params)):
        # At small sizes the loop below (zero states, per-layer selects,
        # stacks, permutations) costs as much as the operator: ~60 us of a
        # ~100 us forward at the course's size. The C++ driver checks the
        # states (shape, dtype, device) itself.
        args = (data, batch_sizes, sorted_indices, unsorted_indices, hx) + _RNNBase._op_args(module, params)
        if gru:
            output, h_n = native.gru_packed(*args)
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), (h_n,)
        output, states = native.lstm_packed(*args)
        return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), states

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

    # The module's parameters per layer and direction, in the order its
    # _flat_weights_names lists them: weight_ih, weight_hh[, bias_ih,
    # bias_hh][, weight_hr].
    projections = module.proj_size > 0
    per_direction = (4 if module.bias else 2) + projections
    finals: List[States] = []
    layer_input = data
    for layer_index in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            k = layer_index * directions + direction
            own = params[k * per_direction:(k + 1) * per_direction]
            biases = own[2:4] if module.bias else [None, None]
            states = tuple(s[k] for s in initial)
            if gru:
                out, h_n = gru_layer(layer_input, states[0], own[0], own[1], *biases, reverse=bool(direction),
                                     batch_sizes=batch_sizes)
                finals.append((h_n,))
            else:
                out, (h_n, c_n) = lstm_layer(layer_input, states, own[0], own[1], *biases, reverse=bool(direction),
                                             weight_hr=own[-1] if projections else None, batch_sizes=batch_sizes)
                finals.append((h_n, c_n))
            outputs.append(out)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, 1)
        if module.dropout and module.training and layer_index < module.num_layers - 1:
            layer_input = F.dropout(layer_input, module.dropout, training=True)

    # Stacked even for one layer and direction: torch.nn's h_n and c_n are not
    # views (h_n.detach_() works on them); the copy is of B x H elements.
    stacked = tuple(torch.stack([f[kind] for f in finals]) for kind in range(len(names)))
    if unsorted_indices is not None:  # back into the caller's order
        stacked = tuple(s.index_select(1, unsorted_indices) for s in stacked)
    return PackedSequence(layer_input, batch_sizes, sorted_indices, unsorted_indices), stacked


def _fast_path(tensor: Tensor) -> bool:
    """Whether the row gather and scatter below may stand in for torch's
    functions: not while torch.compile, the JIT tracer or a __torch_function__
    override records the call (they record torch's, which they know), nor
    under a torch.func transform (which wraps the integer tensors the C++
    side reads)."""
    return (_direct((tensor,)) and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and torch._C._functorch.peek_interpreter_stack() is None)


def pack_padded_sequence(input: Tensor, lengths: Union[Tensor, List[int]], batch_first: bool = False,
                         enforce_sorted: bool = True) -> PackedSequence:
    """``torch.nn.utils.rnn.pack_padded_sequence``, bit for bit, at a fraction
    of its cost where the cost is the call's.

    The same PackedSequence (data, batch_sizes, sorted_indices,
    unsorted_indices) for any module that takes one, torch.nn's included; its
    gradient reaches ``input`` the same way. The packed data is gathered from
    the padded batch in one row gather (one autograd node), where torch's
    function sorts the whole batch, concatenates a slice per step and undoes
    both in backward: at (B=100, T=5, I=4) 20 against 48 us with the
    backward, where lstm_ext.LSTM's whole padded forward+backward takes ~55
    (AMD EPYC, Zen 5).

    Lengths that do not fit the input raise a RuntimeError naming both: a
    count other than the batch's, or a length outside [1, T] (torch's function
    checks neither: it packs only the first sequences, or reads past the
    input's end). Under torch.compile, the JIT tracer and
    ``__torch_function__`` overrides torch's function runs, as it does for
    lengths that are not a 1-D CPU tensor (it raises its own error).
    """
    if _fast_path(input):
        if not isinstance(lengths, Tensor):
            lengths_tensor = torch.as_tensor(lengths, dtype=torch.int64, device="cpu")
        else:  # as torch's function converts them
            lengths_tensor = lengths if lengths.dtype == torch.int64 else lengths.to(dtype=torch.int64)
        fields = native.pack_padded(input, lengths_tensor, batch_first, enforce_sorted)
        if fields is not None:
            return PackedSequence(*fields)
    return torch.nn.utils.rnn.pack_padded_sequence(input, lengths, batch_first, enforce_sorted)


def pad_packed_sequence(sequence: PackedSequence, batch_first: bool = False, padding_value: float = 0.0,
                        total_length: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """``torch.nn.utils.rnn.pad_packed_sequence``, bit for bit: (padded,
    lengths), the padded batch in the caller's order, ``padding_value`` past
    each sequence's end, ``total_length`` steps if given.

    One scatter of the packed rows into the padded batch (``index_copy_``, one
    autograd node) where torch's function pads in the sorted order and then
    permutes the batch; at (B=100, T=5, H=3) its forward+backward takes 86
    against our 23 us (AMD EPYC, Zen 5). Falls back to torch's function as
    :func:`pack_padded_sequence` does, and where the indices are not on the CPU.
    """
    data, batch_sizes, _, unsorted_indices = sequence
    if _fast_path(data) and not isinstance(total_length, Tensor):
        fields = native.pad_packed(data, batch_sizes, unsorted_indices, batch_first, float(padding_value),
                                   None if total_length is None else int(total_length))
        if fields is not None:
            return fields
    return torch.nn.utils.rnn.pad_packed_sequence(sequence, batch_first, padding_value, total_length)
