"""lstm_ext.LSTM(proj_size=P) against torch.nn.LSTM(proj_size=P), and the
layer operators with weight_hr."""
import itertools

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import lstm_ext

F64 = torch.float64
EXACT = dict(rtol=1e-10, atol=1e-10)
GRID = [dict(num_layers=L, bidirectional=bi, batch_first=bf, bias=bias)
        for L, bi, bf, bias in itertools.product((1, 2), (False, True), (False, True), (True, False))]
# (T, B, I, H, P): P = 1, P = H - 1, B = 0, T = 1, and one tiled by the CPU time loop.
SHAPES = [(5, 3, 4, 6, 3), (1, 2, 3, 4, 1), (4, 1, 3, 5, 4), (3, 0, 2, 4, 2), (1, 5, 9, 8, 7)]
# Shapes where the CPU time loop splits steps into several panels and row
# blocks, for the forward's (H) and the projection's (P) panels alike.
TILED = [(6, 40, 24, 48, 20), (3, 64, 16, 96, 64)]


def proj_pair(I, H, P, device="cpu", dtype=F64, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = nn.LSTM(I, H, proj_size=P, device=device, dtype=dtype, **kwargs)
    fused = lstm_ext.LSTM(I, H, proj_size=P, device=device, dtype=dtype, **kwargs)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def proj_inputs(T, B, I, H, P, config, device="cpu", dtype=F64, with_state=True):
    x = torch.randn(*((B, T, I) if config.get("batch_first") else (T, B, I)), device=device, dtype=dtype)
    layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    state = None
    if with_state:
        state = (torch.randn(layers, B, P, device=device, dtype=dtype).requires_grad_(),
                 torch.randn(layers, B, H, device=device, dtype=dtype).requires_grad_())
    return x.requires_grad_(), state


def check_against_torch(ref, fused, x, state, tol):
    out_ref, out_fused = ref(x, state), fused(x, state)
    for a, b in zip((out_fused[0], *out_fused[1]), (out_ref[0], *out_ref[1])):
        assert a.shape == b.shape
        assert_close(a, b, **tol)
    w = torch.linspace(-1, 1, out_ref[0].numel(), dtype=x.dtype, device=x.device).reshape(out_ref[0].shape)
    wrt = [x] + (list(state) if state else []) + list(ref.parameters())
    names = ["input", "h_0", "c_0"][:1 + 2 * bool(state)] + [n for n, _ in ref.named_parameters()]
    grads = []
    for module, (out, (h_n, c_n)) in ((ref, out_ref), (fused, out_fused)):
        loss = (out * w).sum() + 2 * h_n.sum() + 3 * c_n.sum()
        params = list(module.parameters())
        grads.append(torch.autograd.grad(loss, wrt[:len(wrt) - len(params)] + params))
    for name, a, b in zip(names, grads[1], grads[0]):
        assert_close(a, b, **tol, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("config", GRID, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch_lstm_with_projections(config, shape, device):
    T, B, I, H, P = shape
    ref, fused = proj_pair(I, H, P, device=device, **config)
    x, state = proj_inputs(T, B, I, H, P, config, device)
    check_against_torch(ref, fused, x, state, EXACT)


@pytest.mark.parametrize("shape", TILED, ids=str)
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_tiled_shapes(shape, dtype, threads):
    T, B, I, H, P = shape
    config = dict(num_layers=2, bidirectional=True)
    ref, fused = proj_pair(I, H, P, dtype=dtype, **config)
    x, state = proj_inputs(T, B, I, H, P, config, dtype=dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_against_torch(ref, fused, x, state, EXACT if dtype == F64 else dict(rtol=2e-4, atol=2e-4))
    finally:
        torch.set_num_threads(previous)


def test_each_cpu_capability(cpu_capability):
    config = dict(num_layers=1, bidirectional=True)
    ref, fused = proj_pair(5, 40, 17, **config)
    x, state = proj_inputs(4, 9, 5, 40, 17, config)
    check_against_torch(ref, fused, x, state, EXACT)


def test_without_state_unbatched_and_bfloat16():
    ref, fused = proj_pair(3, 8, 5, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, dtype=F64)
    for got, expected in ((fused(x), ref(x)),):
        assert got[0].shape == expected[0].shape == (6, 10)
        assert got[1][0].shape == (4, 5) and got[1][1].shape == (4, 8)
        for a, b in zip((got[0], *got[1]), (expected[0], *expected[1])):
            assert_close(a, b, **EXACT)
    fused16 = lstm_ext.LSTM(3, 8, proj_size=5, num_layers=2, bidirectional=True, dtype=torch.bfloat16)
    fused16.load_state_dict(ref.state_dict())
    out, (h_n, c_n) = fused16(x.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == (6, 10)
    assert_close(out.double(), ref(x)[0], rtol=0.05, atol=0.05)


def test_parameters_state_dict_and_converters_match_torch():
    torch.manual_seed(0)
    ref = nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True, proj_size=3)
    fused = lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True, proj_size=3)
    assert [(n, p.shape) for n, p in fused.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert fused._flat_weights_names == ref._flat_weights_names
    assert "proj_size=3" in repr(fused)
    fused.load_state_dict(ref.state_dict())
    back = fused.to_torch()
    assert isinstance(back, nn.LSTM) and back.proj_size == 3
    again = lstm_ext.LSTM.from_torch(ref)
    assert again.proj_size == 3
    x = torch.randn(2, 5, 4)
    assert_close(back(x)[0], ref(x)[0], rtol=0, atol=0)
    assert_close(again(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradcheck_and_gradgradcheck_layer(reverse, device):
    torch.manual_seed(0)
    T, B, I, H, P = 3, 2, 3, 3, 2
    f64 = dict(dtype=F64, device=device, requires_grad=True)
    args = (torch.randn(T, B, I, **f64), torch.randn(B, P, **f64), torch.randn(B, H, **f64),
            torch.randn(4 * H, I, **f64), torch.randn(4 * H, P, **f64), torch.randn(4 * H, **f64),
            torch.randn(4 * H, **f64), torch.randn(P, H, **f64))

    def f(x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr):
        out, (h_n, c_n) = lstm_ext.lstm_layer(x, (h, c), w_ih, w_hh, b_ih, b_hh, reverse=reverse, weight_hr=w_hr)
        return out, h_n, c_n

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_gradcheck_module_two_layers_bidirectional(device):
    torch.manual_seed(0)
    fused = lstm_ext.LSTM(2, 3, num_layers=2, bidirectional=True, proj_size=2, dtype=F64, device=device)
    x = torch.randn(3, 2, 2, dtype=F64, device=device, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=F64, device=device, requires_grad=True)
    c0 = torch.randn(4, 2, 3, dtype=F64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h0, c0: (lambda o: (o[0], *o[1]))(fused(x, (h0, c0))), (x, h0, c0))


def test_only_weight_hr_requires_grad():
    """A frozen layer but for its projection: that gradient alone, and equal to torch's."""
    ref, fused = proj_pair(3, 5, 2)
    for module in (ref, fused):
        for name, p in module.named_parameters():
            p.requires_grad_(name == "weight_hr_l0")
    x = torch.randn(4, 2, 3, dtype=F64)
    (g_ref,) = torch.autograd.grad(ref(x)[0].sum(), [ref.weight_hr_l0])
    (g_fused,) = torch.autograd.grad(fused(x)[0].sum(), [fused.weight_hr_l0])
    assert_close(g_fused, g_ref, **EXACT)


def test_inference_bitwise_equals_training_forward():
    torch.manual_seed(0)
    fused = lstm_ext.LSTM(24, 48, proj_size=20, num_layers=2, bidirectional=True)
    x = torch.randn(7, 33, 24)
    with torch.no_grad():
        inference = fused(x)
    training = fused(x)
    assert training[0].requires_grad
    for a, b in zip((inference[0], *inference[1]), (training[0], *training[1])):
        assert torch.equal(a, b.detach())


@pytest.mark.parametrize("shape", [(4, 3, 2, 5, 2), (1, 1, 1, 2, 1), (3, 0, 2, 3, 2)], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_opcheck_layer_operators(shape, reverse, device):
    T, B, I, H, P = shape
    torch.manual_seed(0)
    f64 = dict(dtype=F64, device=device, requires_grad=True)
    args = (torch.randn(T, B, I, **f64), torch.randn(B, P, **f64), torch.randn(B, H, **f64),
            torch.randn(4 * H, I, **f64), torch.randn(4 * H, P, **f64), torch.randn(4 * H, **f64), None, reverse,
            torch.randn(P, H, **f64))
    torch.library.opcheck(torch.ops.lstm_ext.layer_forward.default, args)
    torch.library.opcheck(torch.ops.lstm_ext.layer_inference.default, args)
    out, h_n, c_n, gates, cells = torch.ops.lstm_ext.layer_forward(*args)
    d = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    backward_args = (torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n), d[0], d[1], d[2], d[3],
                     d[4], out.detach(), gates, cells, reverse, [True, True, True, True], d[8])
    torch.library.opcheck(torch.ops.lstm_ext.layer_backward.default, backward_args)


@pytest.mark.parametrize("with_state", [False, True], ids=["no_state", "state"])
def test_opcheck_lstm_and_compile(with_state):
    torch.manual_seed(0)
    fused = lstm_ext.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    hx = [torch.randn(4, 2, 2, dtype=F64), torch.randn(4, 2, 4, dtype=F64)] if with_state else []
    args = (x, hx, fused._flat_weights, True, 2, 0.0, False, True, False)
    torch.library.opcheck(torch.ops.lstm_ext.lstm.default, args)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    state = tuple(hx) if with_state else None
    got, expected = compiled(x, state), fused(x, state)
    assert_close(got[0], expected[0], **EXACT)
    (g1,) = torch.autograd.grad(got[0].sum(), [fused.weight_hr_l1])
    (g2,) = torch.autograd.grad(expected[0].sum(), [fused.weight_hr_l1])
    assert_close(g1, g2, **EXACT)


def test_packed_sequence_matches_torch():
    ref, fused = proj_pair(3, 6, 4, num_layers=2, bidirectional=True)
    lengths = torch.tensor([2, 5, 3, 5, 1])
    x = torch.randn(5, 5, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(4, 5, 4, dtype=F64)
    c0 = torch.randn(4, 5, 6, dtype=F64)
    def packed():
        return nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)

    out_ref, (h_ref, c_ref) = ref(packed(), (h0, c0))
    out_fused, (h_fused, c_fused) = fused(packed(), (h0, c0))
    assert_close(out_fused.data, out_ref.data, **EXACT)
    assert_close(h_fused, h_ref, **EXACT)
    assert_close(c_fused, c_ref, **EXACT)
    g_ref = torch.autograd.grad(out_ref.data.sum() + h_ref.sum(), [x, *ref.parameters()])
    g_fused = torch.autograd.grad(out_fused.data.sum() + h_fused.sum(), [x, *fused.parameters()])
    for a, b in zip(g_fused, g_ref):
        assert_close(a, b, **EXACT)
