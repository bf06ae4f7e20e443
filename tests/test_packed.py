"""Variable lengths inside the layer operators: a PackedSequence runs one
operator call per layer and direction (batch_sizes), each step over its own
sequences, for the LSTM (with and without projections) and the GRU; against
torch.nn's packed path in float64, gradients included."""
import contextlib

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.testing import assert_close

import lstm_ext

F64 = torch.float64
EXACT = dict(rtol=1e-10, atol=1e-10)
# Sorted and unsorted, all equal, all length 1, one long and many short.
LENGTHS = [[5, 3, 3, 1, 4], [4, 4, 4], [1, 1, 1, 1], [7, 1, 1, 1, 1, 1], [2], [3, 6, 2, 6, 1, 5, 4]]
MODULES = {
    "lstm": (nn.LSTM, lstm_ext.LSTM, {}),
    "lstmp": (nn.LSTM, lstm_ext.LSTM, {"proj_size": 3}),
    "gru": (nn.GRU, lstm_ext.GRU, {}),
}


def packed_pair(kind, I, H, dtype=F64, device="cpu", seed=0, **config):
    torch_module, fused_module, extra = MODULES[kind]
    torch.manual_seed(seed)
    ref = torch_module(I, H, dtype=dtype, device=device, **extra, **config)
    return ref, fused_module.from_torch(ref)


def run_packed(module, x, lengths, state, enforce_sorted):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    out, states = module(packed, state)
    states = states if isinstance(states, tuple) else (states,)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    return out, states


def check_packed(kind, lengths, config, device="cpu", dtype=F64, tol=EXACT, I=3, H=5, with_state=True,
                 enforce_sorted=False):
    ref, fused = packed_pair(kind, I, H, dtype=dtype, device=device, **config)
    B, T = len(lengths), max(lengths)
    x = torch.randn(B, T, I, dtype=dtype, device=device, requires_grad=True)
    layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    widths = [H] if kind == "gru" else [ref.proj_size or H, H]
    state = None
    if with_state:
        state = tuple(torch.randn(layers, B, w, dtype=dtype, device=device, requires_grad=True) for w in widths)
    results = []
    for module in (ref, fused):
        out, states = run_packed(module, x, lengths, state if kind != "gru" or state is None else state[0],
                                 enforce_sorted)
        w = torch.linspace(-1, 1, out.data.numel(), dtype=dtype, device=device).reshape(out.data.shape)
        loss = (out.data * w).sum() + sum((k + 2) * (s * torch.arange(B, device=device)[:, None]).sum()
                                          for k, s in enumerate(states))
        wrt = [x] + (list(state) if state else []) + list(module.parameters())
        results.append((out.data, *states) + torch.autograd.grad(loss, wrt))
    for k, (a, b) in enumerate(zip(results[1], results[0])):
        assert_close(a, b, **tol, msg=lambda m: f"result {k}: {m}")
    return fused, x


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True), dict(bias=False, bidirectional=True)],
                         ids=["1", "2-bi", "nobias-bi"])
@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
def test_matches_torch(kind, config, lengths, device):
    check_packed(kind, lengths, config, device=device)


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_sorted_and_without_state(kind, enforce_sorted):
    lengths = [6, 5, 5, 2, 1]
    check_packed(kind, lengths if enforce_sorted else lengths[::-1], dict(bidirectional=True),
                 enforce_sorted=enforce_sorted, with_state=False)


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_tiled_shapes(kind, dtype, threads):
    """Steps of many rows that shrink, split into panels and row blocks differently per step."""
    torch.manual_seed(1)
    lengths = torch.randint(3, 12, (40,)).tolist()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_packed(kind, lengths, dict(bidirectional=True), dtype=dtype, I=24, H=48,
                     tol=EXACT if dtype == F64 else dict(rtol=2e-4, atol=2e-4))
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("kind", list(MODULES))
def test_inference_bitwise_equals_training(kind):
    ref, fused = packed_pair(kind, 24, 48, dtype=torch.float32, num_layers=2, bidirectional=True)
    lengths = torch.randint(1, 9, (33,)).tolist()
    x = torch.randn(33, 8, 24)
    with torch.no_grad():
        inference = run_packed(fused, x, lengths, None, False)
    training = run_packed(fused, x, lengths, None, False)
    assert training[0].data.requires_grad
    for a, b in zip((inference[0].data, *inference[1]), (training[0].data, *training[1])):
        assert torch.equal(a, b.detach())


def layer_args(kind, lengths, reverse, device="cpu", requires_grad=True):
    """(operator, its arguments) for a layer operator with batch_sizes, float64."""
    torch.manual_seed(0)
    f64 = dict(dtype=F64, device=device, requires_grad=requires_grad)
    I, H = 3, 2
    batch_sizes = torch.tensor([sum(n > t for n in lengths) for t in range(max(lengths))])
    N, B = int(batch_sizes.sum()), len(lengths)
    x = torch.randn(N, I, **f64)
    if kind == "gru":
        args = (x, torch.randn(B, H, **f64), torch.randn(3 * H, I, **f64), torch.randn(3 * H, H, **f64),
                torch.randn(3 * H, **f64), torch.randn(3 * H, **f64), reverse, batch_sizes)
        return torch.ops.lstm_ext.gru_layer_forward.default, torch.ops.lstm_ext.gru_layer_inference.default, args
    P = 1 if kind == "lstmp" else H
    args = (x, torch.randn(B, P, **f64), torch.randn(B, H, **f64), torch.randn(4 * H, I, **f64),
            torch.randn(4 * H, P, **f64), torch.randn(4 * H, **f64), None, reverse,
            torch.randn(P, H, **f64) if kind == "lstmp" else None, batch_sizes)
    return torch.ops.lstm_ext.layer_forward.default, torch.ops.lstm_ext.layer_inference.default, args


def differentiable_outputs(kind, forward, inference, args):
    """(f, inputs) for gradcheck: f of the tensors requiring grad, returning the operator's (output, h_n[, c_n])."""
    tensors = [k for k, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def f(*inputs):
        full = list(args)
        for k, t in zip(tensors, inputs):
            full[k] = t
        out = forward(*full)
        return out[:2] if kind == "gru" else out[:3]

    return f, tuple(args[k] for k in tensors)


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradcheck_layer(kind, reverse, device):
    assert torch.autograd.gradcheck(*differentiable_outputs(kind, *layer_args(kind, [3, 3, 2, 1], reverse, device)))


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_opcheck_layer_operators(kind, reverse, device):
    forward, inference, args = layer_args(kind, [4, 2, 2, 1], reverse, device)
    torch.library.opcheck(forward, args)
    torch.library.opcheck(inference, args)
    outs = forward(*args)
    d = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    if kind == "gru":
        out, h_n, gates, hidden_n = outs
        backward_args = (torch.randn_like(out), torch.randn_like(h_n), d[0], d[1], d[2], d[3], out.detach(), gates,
                         hidden_n, reverse, [True, True, True], d[7])
        torch.library.opcheck(torch.ops.lstm_ext.gru_layer_backward.default, backward_args)
    else:
        out, h_n, c_n, gates, cells = outs
        backward_args = (torch.randn_like(out), torch.randn_like(h_n), None, d[0], d[1], d[2], d[3], d[4],
                         out.detach(), gates, cells, reverse, [True, True, True, True], d[8], d[9])
        torch.library.opcheck(torch.ops.lstm_ext.layer_backward.default, backward_args)


def test_compile_with_batch_sizes():
    forward, _, args = layer_args("lstm", [4, 3, 1], True)
    compiled = torch.compile(lambda *a: forward(*a)[:3], fullgraph=True, backend="aot_eager")
    got, expected = compiled(*args), forward(*args)[:3]
    for a, b in zip(got, expected):
        assert_close(a, b, **EXACT)
    (g1,) = torch.autograd.grad(got[0].sum() + got[1].sum(), [args[4]])
    (g2,) = torch.autograd.grad(expected[0].sum() + expected[1].sum(), [args[4]])
    assert_close(g1, g2, **EXACT)


@pytest.mark.parametrize("kind", list(MODULES))
def test_gradient_penalty_matches_torch(kind):
    """create_graph=True through packed sequences: the differentiable backward recomputes them step by step."""
    ref, fused = packed_pair(kind, 3, 4, num_layers=2, bidirectional=True)
    lengths = [5, 2, 4, 1]
    x = torch.randn(4, 5, 3, dtype=F64, requires_grad=True)
    results = []
    for module in (ref, fused):
        out, states = run_packed(module, x, lengths, None, False)
        (grad_x,) = torch.autograd.grad(out.data.sum() + states[0].sum(), x, create_graph=True)
        results.append(torch.autograd.grad((grad_x ** 2).sum(), list(module.parameters())))
    for a, b in zip(results[1], results[0]):
        assert_close(a, b, **EXACT)


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradgradcheck_layer(kind, reverse):
    assert torch.autograd.gradgradcheck(*differentiable_outputs(kind, *layer_args(kind, [3, 2, 2, 1], reverse)))


@pytest.mark.parametrize("change, error, pattern", [
    (lambda bs: torch.tensor([3, 1, 2]), ValueError,
     r"batch_sizes must be positive and non-increasing \(sequences sorted by length, longest first\), got 2 at "
     r"step 2 after 1"),
    (lambda bs: torch.tensor([3, 2, 2]), ValueError, r"batch_sizes sum to 7 but input has 6 rows"),
    (lambda bs: torch.tensor([4, 1, 1]), ValueError, r"batch_sizes must start with the batch size 3 \(h_0's rows\), "
                                                     r"got 4"),
    (lambda bs: torch.tensor([3, 2, 0, 1]), ValueError, r"must be positive and non-increasing .* got 0 at step 2"),
    (lambda bs: bs.float(), TypeError, r"batch_sizes must be a 1-D int64 CPU tensor \(a PackedSequence's\), got a "
                                       r"1-D Float tensor on cpu"),
], ids=["increasing", "sum", "first", "zero", "float"])
def test_bad_batch_sizes(change, error, pattern):
    forward, inference, args = layer_args("lstm", [3, 2, 1], False, requires_grad=False)
    args = list(args)
    args[-1] = change(args[-1])
    for op in (forward, inference):
        with pytest.raises(error, match=pattern):
            op(*args)


def test_packed_input_must_be_2d():
    forward, _, args = layer_args("gru", [2, 1], False, requires_grad=False)
    args = list(args)
    args[0] = args[0][None]
    with pytest.raises(ValueError, match=r"with batch_sizes, input must be 2-D \(sum of lengths, input_size\)"):
        forward(*args)


class _Passthrough(torch.overrides.TorchFunctionMode):
    """A mode that changes nothing: with it active the modules leave their
    direct C++ path for torch.ops (as under torch.compile, or a tensor
    subclass), where the PackedSequence's layers run from lstm_ext.packed's
    Python loop."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("with_state", [True, False], ids=["h_0", "zeros"])
def test_native_driver_equals_python_loop(kind, enforce_sorted, with_state):
    """The eager PackedSequence forward (the C++ driver: states permuted,
    layers run, states stacked and permuted back in one call) gives bitwise
    what the torch.ops path's Python loop gives, gradients included."""
    ref, fused = packed_pair(kind, 3, 4, num_layers=2, bidirectional=True)
    lengths = [5, 4, 2, 2, 1] if enforce_sorted else [2, 5, 1, 4, 2]
    x = torch.randn(5, 5, 3, dtype=F64, requires_grad=True)
    widths = [4] if kind == "gru" else [ref.proj_size or 4, 4]
    state = tuple(torch.randn(4, 5, w, dtype=F64, requires_grad=True) for w in widths) if with_state else None
    results = []
    for mode in (None, _Passthrough()):
        with mode or contextlib.nullcontext():
            out, states = run_packed(fused, x, lengths, state if kind != "gru" or state is None else state[0],
                                     enforce_sorted)
            loss = (out.data * torch.linspace(-1, 1, out.data.numel(), dtype=F64).view_as(out.data)).sum()
            loss = loss + sum((k + 2) * s.sum() for k, s in enumerate(states))
            wrt = [x] + list(state or []) + list(fused.parameters())
        results.append((out.data, *states) + torch.autograd.grad(loss, wrt))
    for k, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"result {k}"


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("passthrough", [False, True], ids=["direct", "torch.ops"])
@pytest.mark.parametrize("change, error, pattern", [
    (lambda s: s[:, :2], ValueError, r"expected h_0 of shape \(2, 3, 4\), got a tensor of shape \(2, 2, 4\)"),
    (lambda s: s.to("meta"), ValueError, r"device mismatch: h_0 is on meta but input is on cpu"),
    (lambda s: s.float(), TypeError, r"dtype mismatch: h_0 is torch.float32 but (input|weight) is torch.float64"),
], ids=["batch", "meta", "dtype"])
def test_packed_bad_state(kind, passthrough, change, error, pattern):
    """A wrong h_0 with a PackedSequence, on either path: an error naming it."""
    _, fused = packed_pair(kind, 3, 4, bidirectional=True)
    packed = pack_padded_sequence(torch.randn(3, 4, 3, dtype=F64), [4, 2, 1], batch_first=True,
                                  enforce_sorted=False)
    states = [torch.randn(2, 3, 4, dtype=F64) for _ in range(1 if kind == "gru" else 2)]
    states[0] = change(states[0])
    with _Passthrough() if passthrough else contextlib.nullcontext(), pytest.raises(error, match=pattern):
        fused(packed, states[0] if kind == "gru" else tuple(states))
