"""``lstm_ext.LSTMModel``: the course's model on the fused cell."""
from __future__ import annotations

from torch import Tensor, nn

from lstm_ext.cell import LSTMCell


class LSTMModel(nn.Module):
    """Batch-first LSTM over (B, T, I) followed by a linear layer on the last h.

    state_dict keys (``lstm_cell.Wf.weight``, ..., ``fc.weight``, ``fc.bias``)
    are those of ``lstm_ext.reference.LSTMModel``.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.lstm_cell = LSTMCell(input_size, hidden_size, device=device, dtype=dtype)
        self.fc = nn.Linear(hidden_size, output_size, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"lstm_ext.LSTMModel: input must be 3-D (batch, time, input_size), "
                             f"got shape {tuple(x.shape)}")
        h = x.new_zeros(x.shape[0], self.lstm_cell.hidden_size)
        c = x.new_zeros(x.shape[0], self.lstm_cell.hidden_size)
        for t in range(x.shape[1]):
            h, c = self.lstm_cell(x[:, t], (h, c))
        return self.fc(h)
