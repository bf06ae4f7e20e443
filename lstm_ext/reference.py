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
