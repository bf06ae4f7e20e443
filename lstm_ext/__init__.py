"""lstm_ext: fused LSTM operators for PyTorch (C++ on the CPU, CUDA on the GPU).

    import torch, lstm_ext
    cell = lstm_ext.LSTMCell(input_size, hidden_size)
    h, c = cell(x, (h_prev, c_prev))
"""
from lstm_ext._native import native as _C
from lstm_ext.functional import LSTMCellFunction, lstm_cell
from lstm_ext.cell import LSTMCell
from lstm_ext.model import LSTMModel
from lstm_ext.rnn import LSTM, lstm_layer
from lstm_ext import reference

__version__ = "0.1.0"

__all__ = ["LSTM", "LSTMCell", "LSTMCellFunction", "LSTMModel", "lstm_cell", "lstm_layer", "reference",
           "backends", "cpu_capability", "set_cpu_capability"]


def backends() -> dict:
    """What this build of the native library contains."""
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
