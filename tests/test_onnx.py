"""ONNX export (lstm_ext.onnx, torch.onnx's dynamo exporter): each layer and
direction becomes ONNX's LSTM operator, the cell its ONNX graph; the model
runs in onnxruntime at shapes other than the example's and matches eager."""
import pytest
import torch

import lstm_ext

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")
import lstm_ext.onnx  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


class Sequence(torch.nn.Module):
    def __init__(self, **config):
        super().__init__()
        self.rnn = lstm_ext.LSTM(4, 3, **config)

    def forward(self, x, h, c):
        output, (h_n, c_n) = self.rnn(x, (h, c))
        return output, h_n, c_n


class Cell(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = lstm_ext.LSTMCell(4, 3)

    def forward(self, x, h, c):
        return self.cell(x, (h, c))


def run_onnx(program, tmp_path, inputs):
    path = tmp_path / "model.onnx"
    program.save(str(path))
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path))
    return session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})


CONFIGS = [dict(), dict(num_layers=2, bidirectional=True, batch_first=True), dict(num_layers=2, bias=False)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_lstm_exports_as_onnx_lstm_with_dynamic_batch_and_time(config, tmp_path):
    torch.manual_seed(0)
    model = Sequence(**config).eval()
    layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)

    def inputs(T, B):
        x = torch.randn(B, T, 4) if config.get("batch_first") else torch.randn(T, B, 4)
        return x, torch.randn(layers, B, 3), torch.randn(layers, B, 3)

    x_dims = {0: "batch", 1: "time"} if config.get("batch_first") else {0: "time", 1: "batch"}
    program = lstm_ext.onnx.export(model, inputs(5, 2),
                                   dynamic_shapes={"x": x_dims, "h": {1: "batch"}, "c": {1: "batch"}})
    ops = [node.op_type for node in program.model_proto.graph.node]
    assert ops.count("LSTM") == layers
    for T, B in ((7, 3), (1, 1)):
        args = inputs(T, B)
        with torch.no_grad():
            expected = model(*args)
        for got, want in zip(run_onnx(program, tmp_path, args), expected):
            torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-5, atol=1e-6)


def test_cell_exports_as_its_onnx_graph(tmp_path):
    torch.manual_seed(0)
    model = Cell().eval()
    program = lstm_ext.onnx.export(model, (torch.randn(2, 4), torch.randn(2, 3), torch.randn(2, 3)),
                                   dynamic_shapes={"x": {0: "batch"}, "h": {0: "batch"}, "c": {0: "batch"}})
    args = (torch.randn(5, 4), torch.randn(5, 3), torch.randn(5, 3))
    with torch.no_grad():
        expected = model(*args)
    for got, want in zip(run_onnx(program, tmp_path, args), expected):
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-5, atol=1e-6)


def test_projections_are_an_error_not_a_wrong_graph():
    model = Sequence(proj_size=2)
    x, h, c = torch.randn(5, 2, 4), torch.randn(1, 2, 2), torch.randn(1, 2, 3)
    with pytest.raises(NotImplementedError, match=r"LSTM with proj_size=2: an LSTM with projections has no ONNX"):
        lstm_ext.onnx.export(model, (x, h, c))
    with pytest.raises(Exception, match=r"an LSTM with projections \(proj_size > 0\) has no ONNX LSTM node"):
        torch.onnx.export(model, (x, h, c), dynamo=True, custom_translation_table=lstm_ext.onnx.TRANSLATIONS)
