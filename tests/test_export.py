"""torch.export with dynamic batch and sequence length, and torch.compile with
dynamic shapes: the exported or compiled program gives eager's results at
other shapes, without specialising on the example's sizes."""
import pytest
import torch
import torch._dynamo.testing
from torch.export import Dim, export
from torch.testing import assert_close

import lstm_ext

F64 = torch.float64


class WithState(torch.nn.Module):
    def __init__(self, **config):
        super().__init__()
        self.rnn = lstm_ext.LSTM(4, 3, dtype=F64, **config)

    def forward(self, x, h, c):
        output, (h_n, c_n) = self.rnn(x, (h, c))
        return output, h_n, c_n


class WithoutState(WithState):
    def forward(self, x):
        output, (h_n, c_n) = self.rnn(x)
        return output, h_n, c_n


class Cell(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = lstm_ext.LSTMCell(4, 3, dtype=F64)

    def forward(self, x, h, c):
        return self.cell(x, (h, c))


def sequence_args(T, B, config, with_state):
    x = torch.randn(*((B, T, 4) if config.get("batch_first") else (T, B, 4)), dtype=F64)
    if not with_state:
        return (x,)
    layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    return x, torch.randn(layers, B, 3, dtype=F64), torch.randn(layers, B, 3, dtype=F64)


CONFIGS = [dict(), dict(num_layers=2, bidirectional=True, batch_first=True), dict(num_layers=2, bias=False)]


@pytest.mark.parametrize("with_state", [False, True], ids=["no_state", "state"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_export_lstm_with_dynamic_batch_and_time(config, with_state):
    torch.manual_seed(0)
    model = (WithState if with_state else WithoutState)(**config).eval()
    batch, time = Dim("batch"), Dim("time")
    x_dims = {0: batch, 1: time} if config.get("batch_first") else {0: time, 1: batch}
    dynamic = {"x": x_dims} if not with_state else {"x": x_dims, "h": {1: batch}, "c": {1: batch}}
    exported = export(model, sequence_args(5, 2, config, with_state), dynamic_shapes=dynamic)
    for T, B in ((7, 3), (2, 5)):
        args = sequence_args(T, B, config, with_state)
        for a, b in zip(exported.module()(*args), model(*args)):
            assert_close(a, b, rtol=0, atol=0)


def test_export_cell_and_model_with_dynamic_shapes():
    torch.manual_seed(0)
    batch, time = Dim("batch"), Dim("time")
    cell = Cell().eval()
    exported = export(cell, tuple(torch.randn(2, n, dtype=F64) for n in (4, 3, 3)),
                      dynamic_shapes={"x": {0: batch}, "h": {0: batch}, "c": {0: batch}})
    args = tuple(torch.randn(6, n, dtype=F64) for n in (4, 3, 3))
    for a, b in zip(exported.module()(*args), cell(*args)):
        assert_close(a, b, rtol=0, atol=0)
    model = lstm_ext.LSTMModel(4, 3, 2, dtype=F64).eval()
    exported = export(model, (torch.randn(2, 5, 4, dtype=F64),), dynamic_shapes={"x": {0: batch, 1: time}})
    x = torch.randn(4, 9, 4, dtype=F64)
    assert_close(exported.module()(x), model(x), rtol=0, atol=0)


def test_compile_dynamic_does_not_recompile_per_shape():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = WithoutState(num_layers=2, batch_first=True)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=True, fullgraph=True)
    for T, B in ((5, 2), (7, 3), (3, 6)):
        x = torch.randn(B, T, 4, dtype=F64, requires_grad=True)
        out, expected = compiled(x), model(x)
        for a, b in zip(out, expected):
            assert_close(a, b, rtol=0, atol=0)
        out[0].sum().backward()
    assert counter.frame_count == 1
