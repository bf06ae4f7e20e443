"""``lstm_ext.LSTMModel``: the course's model on the fused cell."""
from __future__ import annotations

from torch import Tensor, nn

from lstm_ext.cell import LSTMCell
from lstm_ext.rnn import lstm_layer


class LSTMModel(nn.Module):
    """The course's model: a batch-first LSTM over (B, T, I), then a linear layer
    on the last h; forward returns (B, output_size).

    The cell's parameters live in ``lstm_cell`` (a ``lstm_ext.LSTMCell``), so
    state_dict keys (``lstm_cell.Wf.weight``, ..., ``fc.weight``, ``fc.bias``)
    are those of ``lstm_ext.reference.LSTMModel``. The time loop runs inside
    the sequence operator (one input product for all steps, backward through
    time in C++), not as T calls of the cell.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.lstm_cell = LSTMCell(input_size, hidden_size, device=device, dtype=dtype)
        self.fc = nn.Linear(hidden_size, output_size, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, I) -> fc(h_T), (B, output_size)."""
        if x.dim() != 3:
            raise ValueError(f"lstm_ext.LSTMModel: input must be 3-D (batch, time, input_size), "
                             f"got shape {tuple(x.shape)}")
        cell = self.lstm_cell
        state = (x.new_zeros(x.shape[0], cell.hidden_size), x.new_zeros(x.shape[0], cell.hidden_size))
        # The packed weight [4H, I+H] over cat(x, h) is [weight_ih | weight_hh].
        weight_ih, weight_hh = cell.weight.split([cell.input_size, cell.hidden_size], dim=1)
        _, (h, _) = lstm_layer(x.transpose(0, 1), state, weight_ih, weight_hh, cell.bias)
        return self.fc(h)
