"""``lstm_ext.LSTMModel`` and ``lstm_ext.GRUModel``: the course's model on the fused cells."""
from __future__ import annotations

from torch import Tensor, nn

from lstm_ext import reference
from lstm_ext.cell import GRUCell, LSTMCell
from lstm_ext.rnn import gru_layer, lstm_layer


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


class GRUModel(nn.Module):
    """The course's model with a GRU: a batch-first GRU over (B, T, I), then a
    linear layer on the last h; forward returns (B, output_size).

    The cell is a ``lstm_ext.GRUCell`` (torch.nn.GRUCell's parameters) in
    ``gru_cell``; :meth:`from_reference` converts ``lstm_ext.reference.GRUModel``.
    The time loop runs inside the GRU's sequence operator.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.gru_cell = GRUCell(input_size, hidden_size, device=device, dtype=dtype)
        self.fc = nn.Linear(hidden_size, output_size, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, I) -> fc(h_T), (B, output_size)."""
        if x.dim() != 3:
            raise ValueError(f"lstm_ext.GRUModel: input must be 3-D (batch, time, input_size), "
                             f"got shape {tuple(x.shape)}")
        cell = self.gru_cell
        h0 = x.new_zeros(x.shape[0], cell.hidden_size)
        _, h = gru_layer(x.transpose(0, 1), h0, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        return self.fc(h)

    @classmethod
    def from_reference(cls, model: reference.GRUModel) -> "GRUModel":
        """The same model as a reference GRUModel (parameters copied)."""
        ref_cell = model.gru_cell
        fused = cls(ref_cell.input_size, ref_cell.hidden_size, model.fc.out_features,
                    device=model.fc.weight.device, dtype=model.fc.weight.dtype)
        fused.gru_cell.load_state_dict(ref_cell.torch_parameters())
        fused.fc.load_state_dict(model.fc.state_dict())
        return fused
