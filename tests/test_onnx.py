"""ONNX export (lstm_ext.onnx; torch.onnx's dynamo exporter and its legacy
TorchScript-based one): each layer and direction becomes ONNX's LSTM or GRU
operator, the LSTM cell its ONNX graph; the model runs in onnxruntime at
shapes other than the example's and matches eager."""
import io
import warnings

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


class GruSequence(torch.nn.Module):
    def __init__(self, **config):
        super().__init__()
        self.rnn = lstm_ext.GRU(4, 3, **config)

    def forward(self, x, h):
        return self.rnn(x, h)


class Cell(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = lstm_ext.LSTMCell(4, 3)

    def forward(self, x, h, c):
        return self.cell(x, (h, c))


def _flat(outputs):
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return [t for out in outputs for t in (out if isinstance(out, tuple) else (out,))]


def run_onnx(program, tmp_path, inputs):
    path = tmp_path / "model.onnx"
    program.save(str(path))
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path))
    return session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})


CONFIGS = [dict(), dict(num_layers=2, bidirectional=True, batch_first=True), dict(num_layers=2, bias=False)]


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_layers_export_as_onnx_nodes_with_dynamic_batch_and_time(config, kind, tmp_path):
    torch.manual_seed(0)
    model = (Sequence if kind == "LSTM" else GruSequence)(**config).eval()
    layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    states = ("h", "c") if kind == "LSTM" else ("h",)

    def inputs(T, B):
        x = torch.randn(B, T, 4) if config.get("batch_first") else torch.randn(T, B, 4)
        return (x, *[torch.randn(layers, B, 3) for _ in states])

    x_dims = {0: "batch", 1: "time"} if config.get("batch_first") else {0: "time", 1: "batch"}
    program = lstm_ext.onnx.export(model, inputs(5, 2),
                                   dynamic_shapes={"x": x_dims, **{name: {1: "batch"} for name in states}})
    ops = [node.op_type for node in program.model_proto.graph.node]
    assert ops.count(kind) == layers
    for T, B in ((7, 3), (1, 1)):
        args = inputs(T, B)
        with torch.no_grad():
            expected = _flat(model(*args))
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


def test_gru_cell_exports_as_one_onnx_gru(tmp_path):
    torch.manual_seed(0)
    model = lstm_ext.GRUCell(4, 3).eval()
    program = lstm_ext.onnx.export(model, (torch.randn(2, 4), torch.randn(2, 3)),
                                   dynamic_shapes={"input": {0: "batch"}, "hx": {0: "batch"}})
    assert [node.op_type for node in program.model_proto.graph.node].count("GRU") == 1
    args = (torch.randn(5, 4), torch.randn(5, 3))
    with torch.no_grad():
        expected = model(*args)
    torch.testing.assert_close(torch.from_numpy(run_onnx(program, tmp_path, args)[0]), expected, rtol=1e-5,
                               atol=1e-6)


# --- the legacy TorchScript-based exporter (torch.onnx.export(..., dynamo=False)) ---

class NoState(torch.nn.Module):
    """A layer or cell called without its state (zeros of the input's batch)."""

    def __init__(self, module):
        super().__init__()
        self.rnn = module

    def forward(self, x):
        return self.rnn(x)


class FunctionalLayers(torch.nn.Module):
    """lstm_ext.lstm_layer and gru_layer called directly (the layer operators)."""

    def __init__(self):
        super().__init__()
        self.lstm, self.gru = torch.nn.LSTM(4, 3), torch.nn.GRU(3, 2)

    def forward(self, x, h, c, g):
        lstm = [getattr(self.lstm, name) for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
        gru = [getattr(self.gru, name) for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
        output, (h_n, c_n) = lstm_ext.lstm_layer(x, (h, c), *lstm)
        gru_output, g_n = lstm_ext.gru_layer(output, g, *gru, reverse=True)
        return gru_output, h_n, c_n, g_n


# (name, module, inputs(T, B), dynamic axes of each input, ONNX nodes of the layers)
def _legacy_cases():
    seq = lambda T, B: torch.randn(T, B, 4)  # noqa: E731
    first = lambda T, B: torch.randn(B, T, 4)  # noqa: E731
    time_batch, batch_time = {0: "time", 1: "batch"}, {0: "batch", 1: "time"}
    return [
        ("lstm", lambda: NoState(lstm_ext.LSTM(4, 3)), lambda T, B: (seq(T, B),), [time_batch], ("LSTM", 1)),
        ("lstm-2layers-bidirectional-batch_first",
         lambda: NoState(lstm_ext.LSTM(4, 3, num_layers=2, bidirectional=True, batch_first=True)),
         lambda T, B: (first(T, B),), [batch_time], ("LSTM", 2)),
        ("lstm-hx-no_bias", lambda: Sequence(num_layers=2, bias=False),
         lambda T, B: (seq(T, B), torch.randn(2, B, 3), torch.randn(2, B, 3)), [time_batch, {1: "batch"}, {1: "batch"}],
         ("LSTM", 2)),
        ("lstm-unbatched", lambda: NoState(lstm_ext.LSTM(4, 3)), lambda T, B: (torch.randn(T, 4),), [{0: "time"}],
         ("LSTM", 1)),
        ("gru-2layers-bidirectional-batch_first",
         lambda: NoState(lstm_ext.GRU(4, 3, num_layers=2, bidirectional=True, batch_first=True)),
         lambda T, B: (first(T, B),), [batch_time], ("GRU", 2)),
        ("gru-hx-no_bias", lambda: GruSequence(num_layers=2, bias=False),
         lambda T, B: (seq(T, B), torch.randn(2, B, 3)), [time_batch, {1: "batch"}], ("GRU", 2)),
        ("lstm_layer-gru_layer", lambda: FunctionalLayers(),
         lambda T, B: (seq(T, B), torch.randn(B, 3), torch.randn(B, 3), torch.randn(B, 2)),
         [time_batch, {0: "batch"}, {0: "batch"}, {0: "batch"}], ("LSTM", 1)),
        ("lstm_cell", lambda: Cell(), lambda T, B: (torch.randn(B, 4), torch.randn(B, 3), torch.randn(B, 3)),
         [{0: "batch"}] * 3, ("LSTM", 0)),
        ("lstm_cell-no_state", lambda: NoState(lstm_ext.LSTMCell(4, 3)), lambda T, B: (torch.randn(B, 4),),
         [{0: "batch"}], ("LSTM", 0)),
        ("gru_cell", lambda: NoState(lstm_ext.GRUCell(4, 3)), lambda T, B: (torch.randn(B, 4),), [{0: "batch"}],
         ("GRU", 1)),
        ("gru_cell-no_bias-unbatched", lambda: NoState(lstm_ext.GRUCell(4, 3, bias=False)),
         lambda T, B: (torch.randn(4),), [{}], ("GRU", 1)),
    ]


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("case", _legacy_cases(), ids=lambda case: case[0])
def test_legacy_exporter(case, grad, tmp_path):
    """torch.onnx.export(..., dynamo=False) straight, with this module imported:
    the layers as ONNX LSTM/GRU nodes, dynamic axes, two other shapes."""
    _, make_model, inputs, axes, (node, count) = case
    torch.manual_seed(0)
    model = make_model().eval()
    names = [f"input{k}" for k in range(len(axes))]
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings(), torch.set_grad_enabled(grad):
        warnings.simplefilter("ignore")  # torch's: the legacy exporter is deprecated; a batch size other than 1
        torch.onnx.export(model, inputs(5, 2), str(path), dynamo=False, input_names=names,
                          dynamic_axes={name: axis for name, axis in zip(names, axes) if axis})
    onnx.checker.check_model(str(path))
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count(node) == count
    session = ort.InferenceSession(str(path))
    for T, B in ((7, 3), (1, 1)):
        args = inputs(T, B)
        with torch.no_grad():
            expected = _flat(model(*args))
        got = session.run(None, {name: t.numpy() for name, t in zip(names, args)})
        assert len(got) == len(expected)
        for value, want in zip(got, expected):
            torch.testing.assert_close(torch.from_numpy(value), want, rtol=1e-5, atol=1e-6)


def test_export_passes_dynamo_false_to_the_legacy_exporter():
    model = NoState(lstm_ext.GRU(4, 3)).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lstm_ext.onnx.export(model, (torch.randn(5, 2, 4),), f=f, dynamo=False)
    assert [n.op_type for n in onnx.load_from_string(f.getvalue()).graph.node].count("GRU") == 1


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
@pytest.mark.parametrize("kind", ["proj_size", "zoneout", "layernorm"])
def test_what_onnx_cannot_express_is_an_error(kind, dynamo):
    module = {"proj_size": lambda: lstm_ext.LSTM(4, 3, proj_size=2),
              "zoneout": lambda: lstm_ext.LSTM(4, 3, zoneout_cell=0.1),
              "layernorm": lambda: lstm_ext.LayerNormLSTM(4, 3)}[kind]()
    model = NoState(module).eval()
    message = {"proj_size": r"projections", "zoneout": r"LayerNorm LSTM's operators .*zoneout",
               "layernorm": r"LayerNorm LSTM's operators"}[kind]
    with warnings.catch_warnings(), pytest.raises(Exception, match=message):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (torch.randn(5, 2, 4),), dynamo=True,
                              custom_translation_table=lstm_ext.onnx.TRANSLATIONS)
        else:
            torch.onnx.export(model, (torch.randn(5, 2, 4),), io.BytesIO(), dynamo=False)
