"""lstm_ext.GRU and lstm_ext.GRUCell against torch.nn.GRU / GRUCell, the GRU's
operators (gradcheck, opcheck, compile), PackedSequence and the reference."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.testing import assert_close

import lstm_ext
from conftest import RecordsTorchFunctions, gradient_atol
from test_rnn import GRID, SHAPES, TILED_SHAPES

F64 = torch.float64
EXACT = dict(rtol=1e-10, atol=1e-10)


def gru_pair(I, H, device="cpu", dtype=F64, seed=0, **config):
    torch.manual_seed(seed)
    ref = nn.GRU(I, H, device=device, dtype=dtype, **config)
    return ref, lstm_ext.GRU.from_torch(ref)


def gru_inputs(T, B, I, H, config, device="cpu", dtype=F64, with_state=True):
    x = torch.randn(*((B, T, I) if config["batch_first"] else (T, B, I)), device=device, dtype=dtype)
    layers = config["num_layers"] * (2 if config["bidirectional"] else 1)
    h0 = torch.randn(layers, B, H, device=device, dtype=dtype).requires_grad_() if with_state else None
    return x.requires_grad_(), h0


def gru_grads(module, x, h0, output, h_n):
    w = torch.linspace(-1, 1, output.numel(), dtype=output.dtype, device=output.device).reshape(output.shape)
    loss = (output * w).sum() + 2 * h_n.sum()
    return torch.autograd.grad(loss, [x] + ([h0] if h0 is not None else []) + list(module.parameters()))


def check_against_torch(ref, fused, x, h0, tol, grad_atol_scales=False):
    """grad_atol_scales: each gradient's atol scaled by conftest.gradient_atol (float32)."""
    out_ref, out_fused = ref(x, h0), fused(x, h0)
    for got, expected in zip(out_fused, out_ref):
        assert_close(got.double(), expected.double(), **tol)
    g_ref, g_fused = gru_grads(ref, x, h0, *out_ref), gru_grads(fused, x, h0, *out_fused)
    names = ["input"] + (["h_0"] if h0 is not None else []) + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, g_fused, g_ref):
        atol = gradient_atol(tol["atol"], b) if grad_atol_scales else tol["atol"]
        assert_close(a.double(), b.double(), rtol=tol["rtol"], atol=atol, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("config", GRID, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch_gru(config, shape, device):
    T, B, I, H = shape
    ref, fused = gru_pair(I, H, device=device, **config)
    x, h0 = gru_inputs(T, B, I, H, config, device)
    check_against_torch(ref, fused, x, h0, EXACT)


@pytest.mark.parametrize("threads", [1, 2], ids=lambda n: f"threads={n}")
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", TILED_SHAPES, ids=str)
def test_tiled_time_loop_matches_torch(shape, dtype, threads, cpu_capability):
    """The CPU time loop's panels and row blocks, every CPU kernel variant;
    torch.nn.GRU in float64 is the reference for every dtype."""
    T, B, I, H = shape
    config = dict(num_layers=2, bidirectional=True, batch_first=False, bias=True)
    ref, fused = gru_pair(I, H, **config)
    fused = fused.to(dtype)
    x, h0 = gru_inputs(T, B, I, H, config)
    tol = {F64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 5e-2}[dtype]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x_low, h0_low = (t.detach().to(dtype).requires_grad_() for t in (x, h0))
        out_fused = fused(x_low, h0_low)
        g_fused = gru_grads(fused, x_low, h0_low, *out_fused)
    finally:
        torch.set_num_threads(previous)
    out_ref = ref(x, h0)
    g_ref = gru_grads(ref, x, h0, *out_ref)
    for a, b in zip(out_fused, out_ref):
        assert_close(a.double(), b, rtol=tol, atol=tol)
    for name, a, b in zip(["input", "h_0"] + [n for n, _ in ref.named_parameters()], g_fused, g_ref):
        scale = 1 if dtype == F64 else max(1.0, b.abs().max().item())
        assert_close(a.double(), b, rtol=tol, atol=tol * scale, msg=lambda m: f"grad of {name}: {m}")


def test_float32_without_initial_state(device):
    config = dict(num_layers=2, bidirectional=True, batch_first=True, bias=True)
    ref, fused = gru_pair(8, 16, device=device, dtype=torch.float32, **config)
    x, _ = gru_inputs(7, 5, 8, 16, config, device, dtype=torch.float32, with_state=False)
    check_against_torch(ref, fused, x, None, dict(rtol=1e-4, atol=1e-5), grad_atol_scales=True)


def test_unbatched_input(device):
    ref, fused = gru_pair(3, 4, device=device, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, dtype=F64, device=device)
    h0 = torch.randn(4, 4, dtype=F64, device=device)
    for got, expected in ((fused(x), ref(x)), (fused(x, h0), ref(x, h0))):
        assert got[0].shape == expected[0].shape == (6, 8) and got[1].shape == (4, 4)
        assert_close(got[0], expected[0], **EXACT)
        assert_close(got[1], expected[1], **EXACT)


def test_dropout_between_layers_matches_layers_by_hand():
    torch.manual_seed(0)
    fused = lstm_ext.GRU(3, 5, num_layers=3, dropout=0.5, dtype=F64)
    x = torch.randn(4, 2, 3, dtype=F64)
    torch.manual_seed(1)
    train_out = fused(x)[0]
    torch.manual_seed(1)
    h = x
    for layer in range(3):
        w = [getattr(fused, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h, _ = lstm_ext.gru_layer(h, torch.zeros(2, 5, dtype=F64), *w)
        if layer < 2:
            h = nn.functional.dropout(h, 0.5, training=True)
    assert_close(train_out, h)
    fused.eval()
    assert_close(fused(x)[0], fused(x)[0], rtol=0, atol=0)


def test_parameters_state_dict_and_converters_match_torch():
    torch.manual_seed(0)
    ref = nn.GRU(4, 6, num_layers=2, bidirectional=True, batch_first=True)
    fused = lstm_ext.GRU(4, 6, num_layers=2, bidirectional=True, batch_first=True)
    assert [(n, p.shape) for n, p in fused.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert all(p.abs().max() <= 1 / 6 ** 0.5 for p in fused.parameters())
    assert fused.mode == "GRU" and len(fused.all_weights) == 4 and len(fused._flat_weights) == 16
    fused.load_state_dict(ref.state_dict())
    back = fused.to_torch()
    assert isinstance(back, nn.GRU) and back.batch_first
    x = torch.randn(2, 5, 4)
    assert_close(back(x)[0], ref(x)[0], rtol=0, atol=0)
    assert_close(fused(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match=r"lstm_ext.GRU does not support torch.jit.script"):
        torch.jit.script(fused)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_gradcheck_and_gradgradcheck_layer(reverse, bias, device):
    torch.manual_seed(0)
    T, B, I, H = 3, 2, 3, 2
    f64 = dict(dtype=F64, device=device, requires_grad=True)
    args = [torch.randn(T, B, I, **f64), torch.randn(B, H, **f64), torch.randn(3 * H, I, **f64),
            torch.randn(3 * H, H, **f64)]
    args += [torch.randn(3 * H, **f64), torch.randn(3 * H, **f64)] if bias else [None, None]

    def f(x, h, w_ih, w_hh, b_ih, b_hh):
        return lstm_ext.gru_layer(x, h, w_ih, w_hh, b_ih, b_hh, reverse=reverse)

    assert torch.autograd.gradcheck(f, tuple(args))
    assert torch.autograd.gradgradcheck(f, tuple(args))


def test_gradcheck_module_two_layers_bidirectional(device):
    torch.manual_seed(0)
    fused = lstm_ext.GRU(2, 3, num_layers=2, bidirectional=True, dtype=F64, device=device)
    x = torch.randn(3, 2, 2, dtype=F64, device=device, requires_grad=True)
    h0 = torch.randn(4, 2, 3, dtype=F64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h0: fused(x, h0), (x, h0))


def test_gradient_penalty_matches_torch():
    """create_graph=True: the backward is itself differentiable (second order)."""
    ref, fused = gru_pair(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    results = []
    for module in (ref, fused):
        out, h_n = module(x)
        (grad_x,) = torch.autograd.grad(out.sum() + h_n.sum(), x, create_graph=True)
        penalty = (grad_x ** 2).sum()
        results.append(torch.autograd.grad(penalty, list(module.parameters())))
    for a, b in zip(results[1], results[0]):
        assert_close(a, b, **EXACT)


@pytest.mark.parametrize("shape", [(4, 3, 2, 5), (1, 1, 1, 1), (3, 0, 2, 3)], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_opcheck_layer_operators(shape, reverse, device):
    T, B, I, H = shape
    torch.manual_seed(0)
    f64 = dict(dtype=F64, device=device)
    args = (torch.randn(T, B, I, **f64, requires_grad=True), torch.randn(B, H, **f64, requires_grad=True),
            torch.randn(3 * H, I, **f64, requires_grad=True), torch.randn(3 * H, H, **f64, requires_grad=True),
            torch.randn(3 * H, **f64, requires_grad=True), None, reverse)
    torch.library.opcheck(torch.ops.lstm_ext.gru_layer_forward.default, args)
    torch.library.opcheck(torch.ops.lstm_ext.gru_layer_inference.default, args)
    out, h_n, gates, hidden_n = torch.ops.lstm_ext.gru_layer_forward(*args)
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    backward_args = (torch.randn_like(out), torch.randn_like(h_n), detached[0], detached[1], detached[2],
                     detached[3], out.detach(), gates, hidden_n, reverse, [True, True, True])
    torch.library.opcheck(torch.ops.lstm_ext.gru_layer_backward.default, backward_args)
    no_h_n = backward_args[:1] + (None,) + backward_args[2:10] + ([True, False, True],)
    torch.library.opcheck(torch.ops.lstm_ext.gru_layer_backward.default, no_h_n)


@pytest.mark.parametrize("with_state", [False, True], ids=["no_state", "state"])
def test_opcheck_gru(with_state, device):
    torch.manual_seed(0)
    fused = lstm_ext.GRU(3, 4, num_layers=2, bidirectional=True, dtype=F64, device=device)
    x = torch.randn(5, 2, 3, dtype=F64, device=device, requires_grad=True)
    hx = [torch.randn(4, 2, 4, dtype=F64, device=device)] if with_state else []
    args = (x, hx, fused._flat_weights, True, 2, 0.0, False, True, False)
    torch.library.opcheck(torch.ops.lstm_ext.gru.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_layer_backward_forms_only_the_masked_gradients(device):
    torch.manual_seed(0)
    x, h0, w_ih, w_hh = (torch.randn(*s, dtype=F64, device=device) for s in ((4, 2, 3), (2, 5), (15, 3), (15, 5)))
    out, h_n, gates, hidden_n = torch.ops.lstm_ext.gru_layer_forward(x, h0, w_ih, w_hh, None, None, False)
    grads = torch.ops.lstm_ext.gru_layer_backward(torch.randn_like(out), None, x, h0, w_ih, w_hh, out, gates,
                                                  hidden_n, False, [False, True, False])
    assert grads[0] is None and grads[1] is not None and all(g is None for g in grads[2:])


@pytest.mark.parametrize("frozen", ["input", "weights", "h_0", "all but bias_hh"])
def test_gradients_when_some_inputs_need_none(frozen, device):
    ref, fused = gru_pair(3, 4, device=device, num_layers=2)
    x, h0 = gru_inputs(5, 2, 3, 4, dict(num_layers=2, bidirectional=False, batch_first=False), device)
    if frozen == "input":
        x.requires_grad_(False)
    elif frozen == "h_0":
        h0.requires_grad_(False)
    elif frozen == "all but bias_hh":  # the last edge of the node alone
        x.requires_grad_(False)
        h0.requires_grad_(False)
        for module in (ref, fused):
            for name, p in module.named_parameters():
                p.requires_grad_(name.startswith("bias_hh"))
    else:
        for p in (*ref.parameters(), *fused.parameters()):
            p.requires_grad_(False)
    results = []
    for module in (ref, fused):
        out, h_n = module(x, h0)
        wrt = [t for t in (x, h0, *module.parameters()) if t.requires_grad]
        results.append(torch.autograd.grad(out.sum() + h_n.sum(), wrt))
    for a, b in zip(results[1], results[0]):
        assert_close(a, b, **EXACT)


def test_inference_is_the_training_forward_bitwise():
    torch.manual_seed(0)
    fused = lstm_ext.GRU(24, 40, num_layers=2, bidirectional=True)
    x = torch.randn(9, 6, 24)
    out, h_n = fused(x)
    with torch.no_grad():
        out_ng, h_ng = fused(x)
    with torch.inference_mode():
        out_im, h_im = fused(x)
    for a in (out_ng, out_im):
        assert torch.equal(a, out.detach())
    for a in (h_ng, h_im):
        assert torch.equal(a, h_n.detach())


def test_direct_binding_and_torch_ops_agree(device):
    torch.manual_seed(0)
    fused = lstm_ext.GRU(3, 4, num_layers=2, bidirectional=True, dtype=F64, device=device)
    x = torch.randn(5, 2, 3, dtype=F64, device=device)
    direct = fused(x)
    with RecordsTorchFunctions() as mode:
        through_ops = fused(x)
    assert torch.ops.lstm_ext.gru.default in mode.called
    assert_close(direct[0], through_ops[0], rtol=0, atol=0)
    assert_close(direct[1], through_ops[1], rtol=0, atol=0)


def test_compile_fullgraph_module_and_cell(device):
    torch._dynamo.reset()
    torch.manual_seed(0)
    fused = lstm_ext.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=F64, device=device)
    cell = lstm_ext.GRUCell(3, 4, dtype=F64, device=device)
    x = torch.randn(2, 5, 3, dtype=F64, device=device, requires_grad=True)
    eager_out, eager_h = fused(x)
    compiled = torch.compile(fused, fullgraph=True)
    out, h = compiled(x)
    assert_close(out, eager_out, **EXACT)
    assert_close(h, eager_h, **EXACT)
    g_eager = torch.autograd.grad(eager_out.sum() + eager_h.sum(), x)
    g = torch.autograd.grad(out.sum() + h.sum(), x)
    assert_close(g[0], g_eager[0], **EXACT)
    compiled_cell = torch.compile(cell, fullgraph=True)
    assert_close(compiled_cell(x[:, 0]), cell(x[:, 0]), **EXACT)


# Lengths, batch of 6 (T = max length): unsorted, sorted, all equal, all 1,
# one long and many short.
LENGTHS = [[5, 2, 4, 1, 3, 5], [6, 5, 4, 3, 2, 1], [4] * 6, [1] * 6, [7, 1, 1, 1, 1, 1]]


@pytest.mark.parametrize("with_state", [False, True], ids=["no_state", "state"])
@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
@pytest.mark.parametrize("config", [dict(num_layers=1, bidirectional=False, batch_first=True),
                                    dict(num_layers=2, bidirectional=True, batch_first=False)],
                         ids=["1-layer", "2-layer-bidirectional"])
def test_packed_sequence_matches_torch(config, lengths, with_state):
    ref, fused = gru_pair(3, 4, **config)
    T, B = max(lengths), len(lengths)
    x, h0 = gru_inputs(T, B, 3, 4, config, with_state=with_state)
    results = []
    for module in (ref, fused):
        packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=config["batch_first"],
                                      enforce_sorted=lengths == sorted(lengths, reverse=True))
        out, h_n = module(packed, h0)
        padded, _ = pad_packed_sequence(out, batch_first=config["batch_first"])
        wrt = [x] + ([h0] if h0 is not None else []) + list(module.parameters())
        grads = torch.autograd.grad((padded * torch.linspace(-1, 1, padded.numel(), dtype=F64).reshape(
            padded.shape)).sum() + h_n.sum(), wrt)
        results.append((padded, h_n, *grads))
    for a, b in zip(results[1], results[0]):
        assert_close(a, b, **EXACT)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 1, 1), (0, 2, 3), (7, 0, 6), (5, 17, 33)], ids=str)
def test_gru_cell_matches_torch(shape, bias, device):
    B, I, H = shape
    torch.manual_seed(0)
    ref = nn.GRUCell(I, H, bias=bias, dtype=F64, device=device)
    fused = lstm_ext.GRUCell.from_torch(ref)
    x = torch.randn(B, I, dtype=F64, device=device, requires_grad=True)
    h = torch.randn(B, H, dtype=F64, device=device, requires_grad=True)
    results = []
    for module in (ref, fused):
        out = module(x, h)
        results.append((out, *torch.autograd.grad((out * 1.5).sum(), [x, h, *module.parameters()])))
        assert_close(module(x), ref(x), **EXACT)
    for a, b in zip(results[1], results[0]):
        assert_close(a, b, **EXACT)
    if B > 0:  # unbatched
        assert_close(fused(x[0], h[0]), ref(x[0], h[0]), **EXACT)
        assert_close(fused(x[0]), ref(x[0]), **EXACT)


def test_gru_cell_gradcheck_and_converters():
    torch.manual_seed(0)
    cell = lstm_ext.GRUCell(3, 4, dtype=F64)
    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    h = torch.randn(2, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(cell, (x, h))
    back = cell.to_torch()
    assert_close(back(x, h), cell(x, h), **EXACT)
    assert [n for n, _ in cell.named_parameters()] == [n for n, _ in back.named_parameters()]


def test_reference_gru_cell_and_model_match_torch_and_fused():
    torch.manual_seed(0)
    ref_cell = lstm_ext.reference.GRUCell(4, 3).double()
    torch_cell = nn.GRUCell(4, 3, dtype=F64)
    torch_cell.load_state_dict(ref_cell.torch_parameters())
    x, h = torch.randn(5, 4, dtype=F64), torch.randn(5, 3, dtype=F64)
    assert_close(ref_cell(x, h), torch_cell(x, h), **EXACT)
    ref_model = lstm_ext.reference.GRUModel(4, 3, 1).double()
    fused_model = lstm_ext.GRUModel.from_reference(ref_model)
    X = torch.randn(10, 5, 4, dtype=F64)
    out_ref, out_fused = ref_model(X), fused_model(X)
    assert_close(out_fused, out_ref, **EXACT)
    # The input projection's weight gradient: the reference's Win is the n block of weight_ih.
    (g_ref,) = torch.autograd.grad(out_ref.sum(), [ref_model.gru_cell.Win.weight])
    (g_fused,) = torch.autograd.grad(out_fused.sum(), [fused_model.gru_cell.weight_ih])
    assert_close(g_fused[6:], g_ref, **EXACT)


def test_meta_init_and_all_meta_shape_inference():
    with torch.device("meta"):
        rnn = lstm_ext.GRU(4, 3, num_layers=2, bidirectional=True, batch_first=True)
        out, h_n = rnn(torch.randn(2, 5, 4))
        h = lstm_ext.GRUCell(4, 3)(torch.randn(2, 4))
    assert out.shape == (2, 5, 6) and h_n.shape == (4, 2, 3) and out.is_meta and h.shape == (2, 3)
    torch.manual_seed(0)
    real = nn.GRU(4, 3, num_layers=2, bidirectional=True, batch_first=True)
    rnn.load_state_dict(real.state_dict(), assign=True)
    x = torch.randn(2, 5, 4)
    assert_close(rnn(x)[0], real(x)[0], rtol=1e-5, atol=1e-6)


def test_autocast_bfloat16_training_step():
    """As lstm_ext.LSTM (and torch.nn.GRU on CUDA): the GRU runs in autocast's
    dtype. torch.nn.GRU on the CPU has no autocast rule and stays float32."""
    torch.manual_seed(0)
    ref, fused = gru_pair(8, 16, dtype=torch.float32, num_layers=2)
    x = torch.randn(6, 4, 8)
    for module in (ref, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, h_n = module(x)
        assert out.dtype == (torch.bfloat16 if module is fused else torch.float32)
        (out.float().sum() + h_n.float().sum()).backward()
    for a, b in zip(fused.parameters(), ref.parameters()):
        assert a.grad.dtype == torch.float32
        assert_close(a.grad, b.grad, rtol=0.05, atol=0.05 * max(1.0, b.grad.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16_bit_types(dtype):
    ref, fused = gru_pair(8, 16, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 8, dtype=F64)
    out_ref, h_ref = ref(x)
    fused = fused.to(dtype)
    out, h_n = fused(x.to(dtype))
    assert out.dtype == dtype
    assert_close(out.double(), out_ref, rtol=0.05, atol=0.05)
    assert_close(h_n.double(), h_ref, rtol=0.05, atol=0.05)


def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ref, fused = gru_pair(5, 7, num_layers=2, bidirectional=True)
    x, h0 = gru_inputs(6, 3, 5, 7, dict(num_layers=2, bidirectional=True, batch_first=False))
    cpu = fused(x, h0)
    gpu = lstm_ext.GRU.from_torch(ref.cuda())(x.cuda(), h0.cuda())
    for a, b in zip(gpu, cpu):
        assert_close(a.cpu(), b, **EXACT)


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(hidden_size=2.5), TypeError, r"hidden_size should be of type int, got: float"),
    (dict(num_layers=0), ValueError, r"num_layers must be greater than zero"),
    (dict(dropout=1.5), ValueError, r"dropout should be a number in range \[0, 1\]"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_constructor_errors_like_torch(kwargs, error, pattern):
    for module in (lstm_ext.GRU, nn.GRU):
        with pytest.raises(error, match=pattern):
            module(**(dict(input_size=4, hidden_size=3) | kwargs))


def test_export_with_dynamic_batch_and_time():
    torch.manual_seed(0)
    model = lstm_ext.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True).eval()
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    program = torch.export.export(model, (torch.randn(2, 5, 3),), dynamic_shapes=({0: batch, 1: time},))
    for shape in ((3, 7, 3), (1, 2, 3)):
        x = torch.randn(*shape)
        for got, expected in zip(program.module()(x), model(x)):
            assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_layer_backward_missing_grads_are_zeros(reverse, device):
    """Autograd passes no gradient for an unused output or h_n: the same as zeros."""
    torch.manual_seed(0)
    x, h0, w_ih, w_hh = (torch.randn(*s, dtype=F64, device=device) for s in ((4, 2, 3), (2, 5), (15, 3), (15, 5)))
    out, h_n, gates, hidden_n = torch.ops.lstm_ext.gru_layer_forward(x, h0, w_ih, w_hh, None, None, reverse)
    saved = (x, h0, w_ih, w_hh, out, gates, hidden_n, reverse, [True, True, True])
    for grad_out, grad_h_n in ((None, torch.randn_like(h_n)), (None, None), (torch.randn_like(out), None)):
        missing = torch.ops.lstm_ext.gru_layer_backward(grad_out, grad_h_n, *saved)
        zeros = torch.ops.lstm_ext.gru_layer_backward(torch.zeros_like(out) if grad_out is None else grad_out,
                                                      torch.zeros_like(h_n) if grad_h_n is None else grad_h_n, *saved)
        for a, b in zip(missing, zeros):
            assert_close(a, b, rtol=0, atol=0)
