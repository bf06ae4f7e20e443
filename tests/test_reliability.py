"""What torch.nn.LSTM / LSTMCell users rely on beyond the forward and first-order
backward: meta-device initialisation and load_state_dict(assign=True),
higher-order gradients, torch.func, parametrizations and DropConnect, tensor
subclasses, autocast, TorchScript's alternatives. Each gives torch.nn's
answer, or a clear error."""
import pytest
import torch
from torch import nn
from torch.testing import assert_close

import lstm_ext
from conftest import RecordsTorchFunctions

F64 = torch.float64


def lstm_pair(I=4, H=3, seed=0, **config):
    torch.manual_seed(seed)
    ref = nn.LSTM(I, H, dtype=F64, **config)
    return ref, lstm_ext.LSTM.from_torch(ref)


def cell_pair(I=4, H=3, seed=0):
    torch.manual_seed(seed)
    ref = nn.LSTMCell(I, H, dtype=F64)
    return ref, lstm_ext.LSTMCell.from_torch(ref)


def packed_cell_weights(ref: nn.LSTMCell):
    """dW of torch's two cell weights laid out as lstm_ext.LSTMCell's packed weight."""
    return lambda grads: torch.cat(grads[:2], dim=1)


# --- meta-device init and load_state_dict(assign=True) ----------------------

@pytest.mark.parametrize("model", ["LSTMCell", "LSTMModel", "LSTM"])
def test_load_state_dict_assign_after_meta_init(model):
    torch.manual_seed(0)
    make = {"LSTMCell": lambda: lstm_ext.LSTMCell(4, 3), "LSTMModel": lambda: lstm_ext.LSTMModel(4, 3, 2),
            "LSTM": lambda: lstm_ext.LSTM(4, 3, num_layers=2)}[model]
    real = make()
    reference = {"LSTMCell": lambda: lstm_ext.reference.LSTMCell(4, 3),
                 "LSTMModel": lambda: lstm_ext.reference.LSTMModel(4, 3, 2), "LSTM": lambda: real.to_torch()}[model]()
    if model != "LSTM":
        real.load_state_dict(reference.state_dict())
    with torch.device("meta"):
        lazy = make()
    result = lazy.load_state_dict(reference.state_dict(), assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, p in lazy.named_parameters():
        assert not p.is_meta and isinstance(p, nn.Parameter) and p.requires_grad, name
    assert_close(lazy.state_dict(), reference.state_dict(), rtol=0, atol=0)
    x = torch.randn(2, 5, 4) if model == "LSTMModel" else torch.randn(5, 2, 4) if model == "LSTM" else torch.randn(2, 4)
    out_lazy, out_real = lazy(x), real(x)
    assert_close(out_lazy, out_real, rtol=0, atol=0)


def test_load_state_dict_into_meta_without_assign_warns_like_torch():
    with torch.device("meta"):
        cell = lstm_ext.LSTMCell(4, 3)
    with pytest.warns(UserWarning, match=r"copying from a non-meta parameter .* is a no-op"):
        cell.load_state_dict(lstm_ext.reference.LSTMCell(4, 3).state_dict())


def test_to_empty_then_reset_parameters():
    with torch.device("meta"):
        modules = [lstm_ext.LSTMCell(4, 3), lstm_ext.LSTM(4, 3, num_layers=2), lstm_ext.LSTMModel(4, 3, 1)]
    for module in modules:
        module.to_empty(device="cpu")
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        for p in module.parameters():
            assert p.device.type == "cpu" and torch.isfinite(p).all() and p.abs().max() > 0


def test_load_state_dict_strict_false_reports_like_torch():
    cell, ref = lstm_ext.LSTMCell(4, 3), lstm_ext.reference.LSTMCell(4, 3)
    partial = {k: v for k, v in ref.state_dict().items() if not k.startswith("Wf")} | {"junk": torch.zeros(1)}
    result = cell.load_state_dict(partial, strict=False)
    assert sorted(result.missing_keys) == ["Wf.bias", "Wf.weight"] and result.unexpected_keys == ["junk"]
    for name in ("Wi", "Wc", "Wo"):  # what was there is loaded
        assert torch.equal(cell.state_dict()[f"{name}.weight"], ref.state_dict()[f"{name}.weight"])
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"Wf.weight\", \"Wf.bias\""):
        cell.load_state_dict(partial)
    # The same partial load under assign: missing gates keep the parameter's own rows.
    before = cell.state_dict()["Wf.weight"].clone()
    cell.load_state_dict(partial, strict=False, assign=True)
    assert torch.equal(cell.state_dict()["Wf.weight"], before)


# --- higher-order gradients --------------------------------------------------

def gradient_penalty(module, x, state, params):
    """d/dparams of |d(loss)/dx|^2, the usual gradient penalty."""
    out = module(x, state)
    h, c = out if isinstance(module, (nn.LSTMCell, lstm_ext.LSTMCell)) else (out[0], out[1][1])
    loss = (h * torch.linspace(-1, 1, h.numel(), dtype=h.dtype).reshape(h.shape)).sum() + c.pow(2).sum()
    (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
    return torch.autograd.grad(grad_x.pow(2).sum(), params)


def test_gradient_penalty_cell_matches_torch():
    ref, cell = cell_pair()
    x = torch.randn(5, 4, dtype=F64, requires_grad=True)
    state = (torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64))
    expected = gradient_penalty(ref, x, state, [ref.weight_ih, ref.weight_hh, ref.bias_ih])
    got = gradient_penalty(cell, x, state, [cell.weight, cell.bias])
    assert_close(got[0], torch.cat(expected[:2], 1), rtol=1e-10, atol=1e-12)
    assert_close(got[1], expected[2], rtol=1e-10, atol=1e-12)


def test_gradient_penalty_autograd_function_matches_torch():
    ref, cell = cell_pair()
    x = torch.randn(5, 4, dtype=F64, requires_grad=True)
    h, c = torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64)

    class ViaFunction(nn.Module):
        def forward(self, x, state):
            return lstm_ext.LSTMCellFunction.apply(x, *state, cell.weight, cell.bias)[:2]

    module = ViaFunction()
    module.__class__ = type("Cell", (ViaFunction, lstm_ext.LSTMCell), {})  # counts as a cell in gradient_penalty
    expected = gradient_penalty(ref, x, (h, c), [ref.weight_ih, ref.weight_hh])
    got = gradient_penalty(module, x, (h, c), [cell.weight])
    assert_close(got[0], torch.cat(expected, 1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True, batch_first=True)],
                         ids=["one-layer", "two-layers-bidirectional"])
def test_gradient_penalty_lstm_matches_torch(config):
    ref, rnn = lstm_pair(**config)
    x = torch.randn(2, 6, 4, dtype=F64, requires_grad=True)
    if not config.get("batch_first"):
        x = x.detach().transpose(0, 1).contiguous().requires_grad_()
    layers = 2 * config.get("num_layers", 1) if config.get("bidirectional") else config.get("num_layers", 1)
    state = (torch.randn(layers, 2, 3, dtype=F64), torch.randn(layers, 2, 3, dtype=F64))
    expected = gradient_penalty(ref, x, state, list(ref.parameters()))
    got = gradient_penalty(rnn, x, state, list(rnn.parameters()))
    for a, b in zip(got, expected):
        assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradgradcheck_operators_and_function():
    torch.manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, dtype=F64, requires_grad=True)

    cell_args = [leaf(3, 4), leaf(3, 3), leaf(3, 3), leaf(12, 7), leaf(12)]
    assert torch.autograd.gradgradcheck(lambda x, h, c, w, b: lstm_ext.lstm_cell(x, (h, c), w, b), cell_args)
    assert torch.autograd.gradgradcheck(lambda *a: lstm_ext.LSTMCellFunction.apply(*a)[:2], cell_args)
    layer_args = [leaf(3, 2, 2), leaf(2, 2), leaf(2, 2), leaf(8, 2), leaf(8, 2), leaf(8), leaf(8)]
    for reverse in (False, True):
        def layer(x, h, c, *weights):
            output, (h_n, c_n) = lstm_ext.lstm_layer(x, (h, c), *weights, reverse=reverse)
            return output, h_n, c_n

        assert torch.autograd.gradgradcheck(layer, layer_args)


# --- torch.func ------------------------------------------------------------

def test_torch_func_grad_and_vjp_match_torch():
    from torch.func import functional_call, grad, vjp
    ref, rnn = lstm_pair(num_layers=2)
    x = torch.randn(5, 2, 4, dtype=F64)

    def loss(module):
        return lambda params, x: functional_call(module, params, (x,))[0].pow(2).sum()

    expected = grad(loss(ref))(dict(ref.named_parameters()), x)
    got = grad(loss(rnn))(dict(rnn.named_parameters()), x)
    for name in expected:
        assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12)
    cotangent = torch.randn(5, 2, 3, dtype=F64)
    (expected_x,) = vjp(lambda x: ref(x)[0], x)[1](cotangent)
    (got_x,) = vjp(lambda x: rnn(x)[0], x)[1](cotangent)
    assert_close(got_x, expected_x, rtol=1e-10, atol=1e-12)
    ref_cell, cell = cell_pair()
    xc = torch.randn(2, 4, dtype=F64)
    assert_close(grad(lambda x: cell(x)[0].sum())(xc), grad(lambda x: ref_cell(x)[0].sum())(xc),
                 rtol=1e-10, atol=1e-12)


def test_forward_mode_ad_is_a_clear_error():
    _, rnn = lstm_pair()
    with pytest.raises(NotImplementedError, match=r"forward-mode AD .* is not supported"):
        torch.func.jvp(lambda x: rnn(x)[0], (torch.randn(5, 2, 4, dtype=F64),), (torch.randn(5, 2, 4, dtype=F64),))


# --- parametrizations, DropConnect, subclasses -------------------------------

class Negate(nn.Module):
    def forward(self, weight):
        return -weight


def test_parametrizations_match_torch():
    ref, rnn = lstm_pair(num_layers=2, bidirectional=True)
    for module in (ref, rnn):
        nn.utils.parametrizations.weight_norm(module, "weight_hh_l0")
        nn.utils.parametrize.register_parametrization(module, "weight_ih_l1", Negate())
    x = torch.randn(5, 2, 4, dtype=F64, requires_grad=True)
    out_ref, out = ref(x), rnn(x)
    assert_close(out[0], out_ref[0], rtol=1e-10, atol=1e-12)
    g_ref = torch.autograd.grad(out_ref[0].sum(), [x, *ref.parameters()])
    g = torch.autograd.grad(out[0].sum(), [x, *rnn.parameters()])
    assert [n for n, _ in rnn.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for a, b in zip(g, g_ref):
        assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_weight_drop_pattern_matches_torch():
    """AWD-LSTM's WeightDrop: the Parameter deleted, a plain tensor set before each forward."""
    ref, rnn = lstm_pair()
    x = torch.randn(5, 2, 4, dtype=F64)
    results = []
    for module in (ref, rnn):
        raw = module.weight_hh_l0
        del module._parameters["weight_hh_l0"]
        module.register_parameter("weight_hh_l0_raw", nn.Parameter(raw.detach().clone()))
        torch.manual_seed(3)
        module.weight_hh_l0 = nn.functional.dropout(module.weight_hh_l0_raw, p=0.5, training=True)
        out = module(x)[0]
        results.append((out, torch.autograd.grad(out.sum(), module.weight_hh_l0_raw)[0]))
    for a, b in zip(*results):
        assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_attributes_code_for_torch_lstm_reads():
    ref, rnn = lstm_pair(num_layers=2, bidirectional=True)
    assert rnn.mode == ref.mode == "LSTM" and rnn.proj_size == 0
    assert rnn._flat_weights_names == ref._flat_weights_names
    assert [w.shape for w in rnn._flat_weights] == [w.shape for w in ref._flat_weights]
    assert [[w.shape for w in ws] for ws in rnn.all_weights] == [[w.shape for w in ws] for ws in ref.all_weights]
    assert all(a is b for a, b in zip(rnn._flat_weights, rnn.parameters()))


class LoggingParameter(nn.Parameter):
    """A Parameter subclass with __torch_function__, as some libraries use."""
    calls = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_parameter_subclass_with_torch_function_is_honoured():
    ref, rnn = lstm_pair()
    rnn.weight_hh_l0 = LoggingParameter(rnn.weight_hh_l0.detach().clone())
    cell = lstm_ext.LSTMCell(4, 3, dtype=F64)
    cell.bias = LoggingParameter(cell.bias.detach().clone())
    LoggingParameter.calls.clear()
    out = rnn(torch.randn(5, 2, 4, dtype=F64))[0]
    assert torch.ops.lstm_ext.lstm.default in LoggingParameter.calls  # torch.ops, not the direct binding
    cell(torch.randn(2, 4, dtype=F64))
    assert torch.ops.lstm_ext.cell_forward.default in LoggingParameter.calls
    assert_close(out, ref(torch.randn(5, 2, 4, dtype=F64))[0] * 0 + out)  # runs and gives a tensor


def test_tensor_subclass_input_goes_through_torch_ops():
    _, rnn = lstm_pair()
    with RecordsTorchFunctions() as mode:
        rnn(torch.randn(5, 2, 4, dtype=F64))
    assert torch.ops.lstm_ext.lstm.default in mode.called


# --- autocast --------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_autocast_mixed_precision_training_step(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    torch.manual_seed(0)
    linear = nn.Linear(4, 4, device=device)
    ref = nn.LSTM(4, 8, num_layers=2, device=device)
    rnn = lstm_ext.LSTM.from_torch(ref)
    cell = lstm_ext.LSTMCell(4, 8, device=device)
    x = torch.randn(6, 3, 4, device=device)
    outputs = []
    for module in (ref, rnn):
        with torch.autocast(device, dtype=dtype):
            y, (h_n, c_n) = module(linear(x))
            assert y.dtype == h_n.dtype == c_n.dtype == dtype
            loss = y.float().pow(2).mean()
        loss.backward()
        outputs.append((y.float(), [p.grad.clone() for p in module.parameters()]))
        assert all(p.grad.dtype == torch.float32 for p in module.parameters())  # the float32 master weights
    (y_ref, g_ref), (y, g) = outputs
    assert_close(y, y_ref, rtol=0.05, atol=0.03)
    for a, b in zip(g, g_ref):
        assert_close(a, b, rtol=0.1, atol=0.03)
    with torch.autocast(device, dtype=dtype):
        h, c = cell(linear(x[0]))
    assert h.dtype == c.dtype == dtype
    h.float().sum().backward()
    assert cell.weight.grad.dtype == torch.float32


def test_autocast_leaves_float64_alone():
    _, rnn = lstm_pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = rnn(torch.randn(5, 2, 4, dtype=F64))
    assert y.dtype == F64


# --- TorchScript, trace, export ----------------------------------------------

class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = lstm_ext.LSTM(4, 3, num_layers=2)
        self.fc = nn.Linear(3, 1)

    def forward(self, x):
        return self.fc(self.rnn(x)[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_is_a_clear_error_and_trace_and_export_work():
    model = Wrapper().eval()
    with pytest.raises(RuntimeError, match=r"does not support torch.jit.script .* torch.jit.trace.* torch.export"):
        torch.jit.script(model)
    x = torch.randn(5, 2, 4)
    traced = torch.jit.trace(model, (x,))
    assert_close(traced(x), model(x), rtol=0, atol=0)
    exported = torch.export.export(model, (x,))
    assert_close(exported.module()(x), model(x), rtol=0, atol=0)


class NoState(nn.Module):
    """The module's first output, called without its state."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        out = self.module(x)
        return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("make", [lambda: lstm_ext.LSTMCell(4, 3, dtype=F64), lambda: lstm_ext.GRUCell(4, 3, dtype=F64),
                                  lambda: lstm_ext.LSTM(4, 3, dtype=F64), lambda: lstm_ext.GRU(4, 3, dtype=F64)],
                         ids=["LSTMCell", "GRUCell", "LSTM", "GRU"])
def test_trace_with_grad_records_the_operators(make):
    """With grad on, a trace records the operators and the trace's gradients
    are the module's: the direct bindings (whose autograd nodes a trace cannot
    see) are not taken while tracing."""
    torch.manual_seed(0)
    module = make()
    x = torch.randn(2, 4, dtype=F64) if isinstance(module, (lstm_ext.LSTMCell, lstm_ext.GRUCell)) else \
        torch.randn(5, 2, 4, dtype=F64)

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    traced = torch.jit.trace(NoState(module), (x,), check_trace=False)
    assert any(node.kind().startswith("lstm_ext::") for node in traced.inlined_graph.nodes())
    other = torch.randn_like(x)
    got = first(traced(other))
    want = first(module(other))
    assert_close(got, want, rtol=0, atol=0)
    params = list(module.parameters())
    assert_close(torch.autograd.grad(got.sum(), params), torch.autograd.grad(want.sum(), params), rtol=0, atol=0)


def test_cell_state_dict_keep_vars_holds_its_parameters():
    """keep_vars=True gives the Parameters themselves (what tracers and tools that
    take the variables expect), under their own names; the detached state_dict
    keeps the reference's per-gate keys."""
    cell = lstm_ext.LSTMCell(4, 3)
    assert list(cell.state_dict()) == list(lstm_ext.reference.LSTMCell(4, 3).state_dict())
    kept = cell.state_dict(keep_vars=True)
    assert list(kept) == ["weight", "bias"]
    assert kept["weight"] is cell.weight and kept["bias"] is cell.bias
    other = lstm_ext.LSTMCell(4, 3)
    other.load_state_dict(kept)
    assert torch.equal(other.weight, cell.weight) and torch.equal(other.bias, cell.bias)


def test_cell_parametrization_and_replaced_weight():
    torch.manual_seed(0)
    cell = lstm_ext.LSTMCell(4, 3, dtype=F64)
    x = torch.randn(2, 4, dtype=F64)
    nn.utils.parametrize.register_parametrization(cell, "weight", Negate())
    expected = lstm_ext.lstm_cell(x, (torch.zeros(2, 3, dtype=F64),) * 2, -cell.parametrizations.weight.original,
                                  cell.bias)
    assert_close(cell(x), expected, rtol=0, atol=0)
    plain = lstm_ext.LSTMCell(4, 3, dtype=F64)
    raw = plain.weight.detach().clone()
    del plain._parameters["weight"]
    plain.weight = 2 * raw  # a plain tensor in the Parameter's place, as WeightDrop sets it
    assert_close(plain(x), lstm_ext.lstm_cell(x, (torch.zeros(2, 3, dtype=F64),) * 2, 2 * raw, plain.bias))


# --- outputs that are views exactly where torch.nn's are ----------------------

def _view_flags(result):
    output, states = result
    states = states if isinstance(states, tuple) else (states,)
    data = output.data if isinstance(output, nn.utils.rnn.PackedSequence) else output
    return [t._base is not None for t in (data, *states)]


@pytest.mark.parametrize("input_kind", ["batched", "batch_first", "unbatched", "packed_sorted", "packed_unsorted"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (1, True), (2, False)])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LayerNormLSTM"])
def test_states_are_views_only_where_torch_nn_makes_views(kind, layers, bidirectional, input_kind):
    """h_n and c_n are fresh tensors wherever torch.nn's are (so h_n.detach_(), the
    truncated-BPTT idiom, works, and FSDP2 sees no in-place op on a view)."""
    torch.manual_seed(0)
    config = dict(num_layers=layers, bidirectional=bidirectional, batch_first=input_kind == "batch_first")
    ours = getattr(lstm_ext, kind)(4, 3, **config)
    theirs = getattr(nn, "LSTM" if kind == "LayerNormLSTM" else kind)(4, 3, **config)
    if input_kind in ("packed_sorted", "packed_unsorted"):
        lengths = [5, 3, 2] if input_kind == "packed_sorted" else [3, 5, 2]
        x = nn.utils.rnn.pack_sequence([torch.randn(n, 4) for n in lengths],
                                       enforce_sorted=input_kind == "packed_sorted")
    else:
        x = torch.randn(5, 4) if input_kind == "unbatched" else torch.randn(2, 5, 4)
    flags = _view_flags(ours(x))
    if kind == "GRU" and input_kind == "batch_first":
        flags[0] = _view_flags(theirs(x))[0]  # the output: a transposed view here, not in torch.nn.GRU (documented)
    assert flags == _view_flags(theirs(x))
    if input_kind != "unbatched":  # torch.nn's unbatched states are squeezed views too
        _, states = ours(x)
        for state in states if isinstance(states, tuple) else (states,):
            state.detach_()


# --- torch.nn.RNNBase's public helpers, for code that subclasses torch.nn ------

def _outcome(call):
    try:
        return ("ok", call())
    except Exception as error:  # noqa: BLE001  (compared with torch.nn's)
        return (type(error).__name__, str(error))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True, batch_first=True),
                                    dict(proj_size=2)], ids=["default", "2layers-bidirectional-batch_first", "proj"])
def test_rnnbase_helpers_match_torch_nn(kind, config):
    """check_input, get_expected_hidden_size (and cell size), check_hidden_size,
    check_forward_args and permute_hidden: torch.nn's results and messages."""
    if kind == "GRU" and "proj_size" in config:
        pytest.skip("torch.nn.GRU has no proj_size")
    torch.manual_seed(0)
    ours = getattr(lstm_ext, kind)(4, 3, **config)
    theirs = getattr(nn, kind)(4, 3, **config)
    layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    width = config.get("proj_size", 3)
    packed = nn.utils.rnn.pack_sequence([torch.randn(3, 4), torch.randn(2, 4)])
    inputs = [(torch.randn(5, 2, 4), None), (torch.randn(5, 2, 4, dtype=F64), None), (torch.randn(5, 4), None),
              (torch.randn(5, 2, 3), None), (packed.data, packed.batch_sizes)]
    good_h, bad_h = torch.randn(layers, 2, width), torch.randn(layers, 3, width)
    hiddens = [good_h, bad_h]
    if kind == "LSTM":
        hiddens = [(good_h, torch.randn(layers, 2, 3)), (good_h, torch.randn(layers, 2, 4)), (bad_h, good_h)]
    for x, batch_sizes in inputs:
        assert (_outcome(lambda: ours.check_input(x, batch_sizes))
                == _outcome(lambda: theirs.check_input(x, batch_sizes)))
        if x.dim() == 3 or batch_sizes is not None:
            assert ours.get_expected_hidden_size(x, batch_sizes) == theirs.get_expected_hidden_size(x, batch_sizes)
            if kind == "LSTM":
                assert ours.get_expected_cell_size(x, batch_sizes) == theirs.get_expected_cell_size(x, batch_sizes)
        for hidden in hiddens:
            assert (_outcome(lambda: ours.check_forward_args(x, hidden, batch_sizes))
                    == _outcome(lambda: theirs.check_forward_args(x, hidden, batch_sizes)))
    permutation = torch.tensor([1, 0])
    for hidden in hiddens[:1]:
        got, want = ours.permute_hidden(hidden, permutation), theirs.permute_hidden(hidden, permutation)
        assert_close(got, want, rtol=0, atol=0)
        assert ours.permute_hidden(hidden, None) is hidden
