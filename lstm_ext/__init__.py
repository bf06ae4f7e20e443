"""lstm_ext: fused LSTM and GRU layers for PyTorch (C++ on the CPU, CUDA on the GPU).

Drop-ins for torch.nn's modules, with the same parameters, results and state_dicts:

    import torch, lstm_ext
    rnn = lstm_ext.LSTM(input_size, hidden_size, num_layers=2, batch_first=True)  # torch.nn.LSTM
    output, (h_n, c_n) = rnn(x)
    cell = lstm_ext.LSTMCell(input_size, hidden_size)                           # the course's cell
    h, c = cell(x_t, (h_prev, c_prev))
    gru = lstm_ext.GRU(input_size, hidden_size, batch_first=True)               # torch.nn.GRU
    output, h_n = gru(x)
    ln = lstm_ext.LayerNormLSTM(input_size, hidden_size, zoneout_cell=0.1)      # not in torch.nn
    output, (h_n, c_n) = ln(x)

Also: GRUCell (torch.nn.GRUCell), LSTMModel and GRUModel (the course's model
with either cell), the functions lstm_cell, lstm_layer and gru_layer,
pack_padded_sequence and pad_packed_sequence (torch.nn.utils.rnn's, bit for
bit, at a fraction of their cost), LSTMCellFunction (the cell's autograd in
Python), lstm_ext.reference (the pure Python yardstick), and the helpers
below. See README.md and docs/.
"""
from lstm_ext._native import native as _C
from lstm_ext.functional import LSTMCellFunction, lstm_cell
from lstm_ext.cell import GRUCell, LSTMCell
from lstm_ext.model import GRUModel, LSTMModel
from lstm_ext.rnn import GRU, LSTM, gru_layer, lstm_layer
from lstm_ext.layernorm import LayerNormLSTM, layer_norm_lstm_layer
from lstm_ext.packed import pack_padded_sequence, pad_packed_sequence
from lstm_ext import reference

__version__ = "0.5.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = ["LSTM", "LSTMCell", "LSTMCellFunction", "LSTMModel", "GRU", "GRUCell", "GRUModel", "lstm_cell",
           "lstm_layer", "gru_layer", "LayerNormLSTM", "layer_norm_lstm_layer", "reference",
           "pack_padded_sequence", "pad_packed_sequence",
           "backends", "cpu_capability", "set_cpu_capability", "empty_cache", "cached_bytes"]


def backends() -> dict:
    """What this build of the native library contains: ``{"cpu": [CPU kernel
    variants compiled], "cuda": whether the CUDA kernels were built}``."""
    return {
        "cpu": _C.compiled_cpu_capabilities().split(","),
        "cuda": _C.with_cuda(),
    }


def cpu_capability() -> str:
    """The CPU kernels in use: ``"DEFAULT"``, ``"AVX2"`` or ``"AVX512"``."""
    return _C.cpu_capability()


def set_cpu_capability(name: str) -> None:
    """Choose the CPU kernels (for tests and benchmarks); ValueError if unavailable here."""
    _C.set_cpu_capability(name)


def empty_cache() -> int:
    """Free the host buffers that lstm_ext keeps for reuse; returns the bytes freed.

    CPU buffers of 1 MiB or more (a sequence's gates, outputs, gradients) go
    back to a pool when freed rather than to the system: a fresh large block
    costs more in page faults than filling it. The pool keeps at most the
    bytes that were in use at once (its working set), at most
    ``LSTM_EXT_POOL_MB`` MiB (default 1024; 0 keeps nothing), serves a request
    with a kept block of up to twice its size, and frees the least recently
    used blocks first. Freed blocks are unmapped: the memory goes back to the
    system.
    """
    return _C.empty_cache()


def cached_bytes() -> int:
    """Bytes of host buffers kept for reuse now (see :func:`empty_cache`)."""
    return _C.cached_bytes()
