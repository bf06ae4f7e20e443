"""lstm_ext.LayerNormLSTM and zoneout (for it and for lstm_ext.LSTM) against
the pure-Python reference of the same formulas (lstm_ext.reference)."""
import contextlib
import copy
import itertools

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import lstm_ext
from lstm_ext.layernorm import layer_norm_lstm_layer
from lstm_ext.reference import LayerNormLSTMCell, layer_norm_lstm_stacked, zoneout_masks

F64 = torch.float64
EXACT = dict(rtol=1e-10, atol=1e-10)
GRID = [dict(num_layers=L, bidirectional=bi, batch_first=bf, bias=bias)
        for L, bi, bf, bias in itertools.product((1, 2), (False, True), (False, True), (True, False))]
# (T, B, I, H): odd sizes, B = 1, T = 1, H = 1, B = 0, and sizes past one SIMD vector and one panel.
SHAPES = [(5, 3, 4, 6), (1, 2, 3, 4), (4, 1, 3, 1), (3, 0, 2, 4), (3, 5, 7, 33), (2, 20, 9, 70)]
LN_ROLES = ("ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias")


def randomized(module, seed=1):
    """The module with its gains and shifts moved off 1 and 0, so that every term is exercised."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("ln_") or name.startswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return module


def layer_tensors(module, layer, direction):
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    if isinstance(module, lstm_ext.LayerNormLSTM):
        roles = ("weight_ih", "weight_hh", "bias") + LN_ROLES
        return {role: getattr(module, role + suffix, None) for role in roles}
    w = {role: getattr(module, role + suffix) for role in ("weight_ih", "weight_hh")}
    w["bias"] = getattr(module, "bias_ih" + suffix) + getattr(module, "bias_hh" + suffix) if module.bias else None
    return w


def reference_forward(module, x, hx):
    """The module's forward from lstm_ext.reference's loop over the module's own tensors (zoneout's masks
    drawn in the same order: give both the same seed)."""
    D = 2 if module.bidirectional else 1
    layers = [layer_tensors(module, layer, d) for layer in range(module.num_layers) for d in range(D)]
    return layer_norm_lstm_stacked(x, hx, layers, module.bidirectional, module.batch_first, module.dropout,
                                   module.training, module.zoneout_cell, module.zoneout_hidden)


def compare(module, x, hx, ref_out, tol=EXACT, fused_out=None):
    """Outputs, states and the gradients of input, states and every parameter."""
    out = module(x, hx) if fused_out is None else fused_out
    for a, b in zip((out[0], *out[1]), (ref_out[0], *ref_out[1])):
        assert a.shape == b.shape
        assert_close(a, b, **tol)
    wrt = [x] + (list(hx) if hx is not None else []) + list(module.parameters())
    names = ["input"] + (["h_0", "c_0"] if hx is not None else []) + [n for n, _ in module.named_parameters()]
    weights = torch.linspace(-1, 1, out[0].numel(), dtype=x.dtype, device=x.device).reshape(out[0].shape)
    grads = []
    for o, (h, c) in (out, ref_out):
        loss = (o * weights).sum() + 2 * h.sum() + 3 * c.sum()
        grads.append(torch.autograd.grad(loss, wrt, allow_unused=True))
    for name, a, b in zip(names, *grads):
        if b is None:
            assert a is None or not a.any(), name
            continue
        assert_close(a, b, **tol, msg=lambda m: f"grad of {name}: {m}")


def inputs(module, T, B, I, with_state=True, dtype=F64, seed=2, device="cpu"):
    torch.manual_seed(seed)
    D = 2 if module.bidirectional else 1
    x = torch.randn(*((B, T, I) if module.batch_first else (T, B, I)), dtype=dtype).to(device).requires_grad_()
    hx = None
    if with_state:
        hx = tuple(torch.randn(module.num_layers * D, B, module.hidden_size, dtype=dtype).to(device).requires_grad_()
                   for _ in range(2))
    return x, hx


@pytest.mark.parametrize("config", GRID, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layernorm_lstm_matches_reference(config, shape):
    T, B, I, H = shape
    module = randomized(lstm_ext.LayerNormLSTM(I, H, dtype=F64, **config))
    x, hx = inputs(module, T, B, I)
    compare(module, x, hx, reference_forward(module, x, hx))


@contextlib.contextmanager
def cpu_kernels(capability):
    """lstm_ext's CPU kernels of capability for the block (skips where this CPU lacks it)."""
    previous = lstm_ext.cpu_capability()
    try:
        lstm_ext.set_cpu_capability(capability)
    except ValueError:
        pytest.skip(f"{capability} not supported here")
    try:
        yield
    finally:
        lstm_ext.set_cpu_capability(previous)


@pytest.mark.parametrize("capability", lstm_ext.backends()["cpu"])
def test_layernorm_lstm_every_cpu_capability(capability):
    with cpu_kernels(capability):
        module = randomized(lstm_ext.LayerNormLSTM(5, 37, dtype=F64, bidirectional=True))
        x, hx = inputs(module, 4, 6, 5)
        compare(module, x, hx, reference_forward(module, x, hx))


@pytest.mark.parametrize("capability", lstm_ext.backends()["cpu"])
@pytest.mark.parametrize("H", [17, 40, 64])
def test_layernorm_lstm_float32_every_cpu_capability(capability, H):
    """float32 (whose per-step products are float_tile's under the AVX2 kernels,
    brgemm's elsewhere; panels of 64 columns, part-filled vectors at H = 17
    and 40) against the reference's float64 results."""
    with cpu_kernels(capability):
        module = randomized(lstm_ext.LayerNormLSTM(5, H, dtype=F64, bidirectional=True))
        x, hx = inputs(module, 4, 13, 5)
        expected = reference_forward(module, x, hx)
        module32 = copy.deepcopy(module).float()
        x32 = x.detach().float().requires_grad_()
        hx32 = tuple(h.detach().float().requires_grad_() for h in hx)
        out = module32(x32, hx32)
        for a, b in zip((out[0], *out[1]), (expected[0], *expected[1])):
            assert_close(a, b.float(), rtol=1e-4, atol=1e-5)
        wrt32 = [x32, *hx32, *module32.parameters()]
        grads32 = torch.autograd.grad(out[0].sum() + out[1][1].sum(), wrt32)
        grads = torch.autograd.grad(expected[0].sum() + expected[1][1].sum(), [x, *hx])
        for a, b in zip(grads32[:3], grads):
            assert_close(a, b.float(), rtol=1e-4, atol=1e-4)


def zoneout_lstm(input_size, hidden_size, training):
    """A float64 two-layer bidirectional lstm_ext.LSTM with zoneout on c and h, in training or eval."""
    return lstm_ext.LSTM(input_size, hidden_size, num_layers=2, bidirectional=True, dtype=F64, zoneout_cell=0.3,
                         zoneout_hidden=0.2).train(training)


@pytest.mark.parametrize("capability", lstm_ext.backends()["cpu"])
@pytest.mark.parametrize("H", [1, 3])
def test_zoneout_on_rows_narrower_than_a_vector(capability, H):
    """LSTM with zoneout where a row is narrower than a SIMD vector (an elementwise pass over a vector of rows at
    a time, not the row pass): training masks and eval rates against the reference, and gradcheck, on every CPU
    capability; 9 rows, so that a partial block of rows is there too."""
    with cpu_kernels(capability):
        for training in (True, False):
            module = zoneout_lstm(4, H, training)
            x, hx = inputs(module, 5, 9, 4)
            torch.manual_seed(7)
            out = module(x, hx)
            torch.manual_seed(7)  # the same masks
            compare(module, x, hx, reference_forward(module, x, hx), fused_out=out)
        torch.manual_seed(0)
        T, B = 3, 9
        masks = [(torch.rand(T, B, H, dtype=F64) < 0.3).to(F64) for _ in range(2)]
        args = tuple((0.5 * torch.randn(*shape, dtype=F64)).requires_grad_()
                     for shape in ((T, B, 2), (B, H), (B, H), (4 * H, 2), (4 * H, H), (4 * H,)))

        def fn(x, h0, c0, w_ih, w_hh, b):
            out, (h, c) = layer_norm_lstm_layer(x, (h0, c0), w_ih, w_hh, b, None, None, None, None, *masks,
                                                0.3, 0.2, reverse=True)
            return out, h, c

        assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("capability", lstm_ext.backends()["cpu"])
@pytest.mark.parametrize("H", [3, 17, 40])
def test_lstm_zoneout_float32_every_cpu_capability(capability, H):
    """lstm_ext.LSTM's zoneout in float32 (on the CPU the LSTM's time loop, its input projection inside the
    loop, with the masks in its pointwise pass; part-filled vectors and panels at H = 17 and 40): training with
    the reference's masks, under no_grad too, and eval, forward and gradients, against the reference's float64
    results; and a PackedSequence in training."""
    with cpu_kernels(capability):
        for training in (True, False):
            module = zoneout_lstm(5, H, training)
            x, hx = inputs(module, 4, 13, 5)
            torch.manual_seed(7)
            expected = reference_forward(module, x, hx)
            module32 = copy.deepcopy(module).float()
            x32 = x.detach().float().requires_grad_()
            hx32 = tuple(h.detach().float().requires_grad_() for h in hx)
            for grad in (False, True):
                torch.manual_seed(7)  # the reference's masks
                with torch.set_grad_enabled(grad):
                    out = module32(x32, hx32)
                for a, b in zip((out[0], *out[1]), (expected[0], *expected[1])):
                    assert_close(a, b.float(), rtol=1e-4, atol=1e-5)
            wrt32 = [x32, *hx32, *module32.parameters()]
            grads32 = torch.autograd.grad(out[0].sum() + out[1][1].sum(), wrt32)
            grads = torch.autograd.grad(expected[0].sum() + expected[1][1].sum(), [x, *hx, *module.parameters()])
            for a, b in zip(grads32, grads):
                assert_close(a, b.float(), rtol=1e-4, atol=1e-4)
        module32.train()
        packed = nn.utils.rnn.pack_padded_sequence(x32.detach(), [4, 2, 3, 1, 4, 4, 2, 1, 3, 3, 1, 2, 4],
                                                   enforce_sorted=False)
        torch.manual_seed(7)
        out, (h_n, c_n) = module32(packed)
        layers = [layer_tensors(module, layer, d) for layer in range(2) for d in range(2)]
        torch.manual_seed(7)
        ref_out, (ref_h, ref_c) = layer_norm_lstm_stacked(
            packed.data.double(), None, layers, True, False, 0.0, True, 0.3, 0.2, layer_fn=layer_norm_lstm_layer,
            batch_sizes=packed.batch_sizes)
        assert_close(out.data, ref_out.float(), rtol=1e-4, atol=1e-5)
        assert_close(h_n, ref_h.index_select(1, packed.unsorted_indices).float(), rtol=1e-4, atol=1e-5)
        assert_close(c_n, ref_c.index_select(1, packed.unsorted_indices).float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rates", [(0.3, 0.0), (0.0, 0.2), (0.25, 0.15)])
@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LSTM"])
def test_zoneout_training_matches_reference_with_the_same_masks(cls, rates):
    zc, zh = rates
    module = getattr(lstm_ext, cls)(4, 6, num_layers=2, bidirectional=True, dtype=F64, zoneout_cell=zc,
                                    zoneout_hidden=zh)
    if cls == "LayerNormLSTM":
        randomized(module)
    x, hx = inputs(module, 5, 3, 4)
    torch.manual_seed(7)
    out = module(x, hx)
    torch.manual_seed(7)  # the same masks
    compare(module, x, hx, reference_forward(module, x, hx), fused_out=out)


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LSTM"])
def test_packed_zoneout_training_draws_the_reference_masks(cls):
    """A PackedSequence in training: the masks (N, H) per layer and direction are the reference's draws for
    the same seed (drawn natively for LayerNormLSTM), so the fused layers over them give the reference's
    results to 1e-10."""
    from lstm_ext.layernorm import layer_norm_lstm_layer

    module = getattr(lstm_ext, cls)(4, 6, num_layers=2, bidirectional=True, dtype=F64, zoneout_cell=0.3,
                                    zoneout_hidden=0.2)
    x = torch.randn(5, 4, 4, dtype=F64)
    packed = nn.utils.rnn.pack_padded_sequence(x, [5, 2, 4, 1], enforce_sorted=False)
    torch.manual_seed(7)
    out, (h_n, c_n) = module(packed)
    D = 2
    layers = [layer_tensors(module, layer, d) for layer in range(2) for d in range(D)]
    torch.manual_seed(7)
    ref_out, (ref_h, ref_c) = layer_norm_lstm_stacked(
        packed.data, None, layers, True, False, 0.0, True, 0.3, 0.2, layer_fn=layer_norm_lstm_layer,
        batch_sizes=packed.batch_sizes)
    assert_close(out.data, ref_out, **EXACT)
    assert_close(h_n, ref_h.index_select(1, packed.unsorted_indices), **EXACT)
    assert_close(c_n, ref_c.index_select(1, packed.unsorted_indices), **EXACT)


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LSTM"])
def test_zoneout_eval_is_the_expectation(cls):
    module = getattr(lstm_ext, cls)(4, 6, num_layers=2, dtype=F64, zoneout_cell=0.3, zoneout_hidden=0.1).eval()
    x, hx = inputs(module, 5, 3, 4)
    compare(module, x, hx, reference_forward(module, x, hx))  # masks None: d = the rates


def test_zoneout_masks_are_bernoulli_with_the_rate_and_reproducible():
    torch.manual_seed(0)
    like = torch.empty(0, dtype=torch.float32)
    masks = zoneout_masks(0.15, (200, 50, 40), like, True)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    n = masks.numel()
    assert abs(masks.mean().item() - 0.15) < 4 * (0.15 * 0.85 / n) ** 0.5
    module = lstm_ext.LayerNormLSTM(3, 5, zoneout_cell=0.2, zoneout_hidden=0.2)
    x = torch.randn(6, 2, 3)
    torch.manual_seed(3)
    first = module(x)[0]
    torch.manual_seed(3)
    assert torch.equal(first, module(x)[0])
    assert not torch.equal(first, module(x)[0])  # fresh masks per call


def test_zero_rates_leave_lstm_bitwise_unchanged():
    torch.manual_seed(0)
    plain = lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True)
    zero = lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True, zoneout_cell=0.0, zoneout_hidden=0.0)
    zero.load_state_dict(plain.state_dict())
    x = torch.randn(5, 3, 4, requires_grad=True)
    a, b = plain(x), zero(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0]) and torch.equal(a[1][1], b[1][1])
    ga = torch.autograd.grad(a[0].sum(), x)[0]
    gb = torch.autograd.grad(b[0].sum(), x)[0]
    assert torch.equal(ga, gb)


def test_lstm_without_layer_norm_equals_torch_lstm():
    """The row-pass engine without layer norm or zoneout is torch.nn.LSTM."""
    torch.manual_seed(0)
    ref = nn.LSTM(5, 7, dtype=F64)
    x = torch.randn(4, 3, 5, dtype=F64)
    w = dict(ref.named_parameters())
    out, (h, c) = layer_norm_lstm_layer(x, (torch.zeros(3, 7, dtype=F64),) * 2, w["weight_ih_l0"],
                                        w["weight_hh_l0"], w["bias_ih_l0"] + w["bias_hh_l0"])
    ro, (rh, rc) = ref(x)
    assert_close(out, ro, **EXACT)
    assert_close(c, rc[0], **EXACT)


@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("masks", [False, True])
def test_gradcheck(layer_norm, masks):
    torch.manual_seed(0)
    T, B, I, H = 3, 2, 3, 4

    def r(*s, scale=0.5, shift=0.0):
        return (shift + scale * torch.randn(*s, dtype=F64)).requires_grad_()

    ln = (r(4 * H, shift=1), r(4 * H, shift=1), r(H, shift=1), r(H)) if layer_norm else (None,) * 4
    mask_c = (torch.rand(T, B, H, dtype=F64) < 0.3).to(F64) if masks else None
    mask_h = (torch.rand(T, B, H, dtype=F64) < 0.3).to(F64) if masks else None
    args = (r(T, B, I), r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H)) + ln

    def fn(x, h0, c0, w_ih, w_hh, b, *ln_params):
        out, (h, c) = layer_norm_lstm_layer(x, (h0, c0), w_ih, w_hh, b, *(ln_params or (None,) * 4), mask_c,
                                            mask_h, 0.3, 0.3, reverse=True)
        return out, h, c

    assert torch.autograd.gradcheck(fn, tuple(a for a in args if a is not None))


def _op_args(layer_norm=True, masks=True, dtype=F64, requires_grad=False):
    torch.manual_seed(0)
    T, B, I, H = 3, 2, 3, 5
    r = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=requires_grad)  # noqa: E731
    ln = [r(4 * H), r(4 * H), r(H), r(H)] if layer_norm else [None] * 4
    m = [(torch.rand(T, B, H) < 0.5).to(dtype) for _ in range(2)] if masks else [None, None]
    return [r(T, B, I), r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H), *ln, *m, 0.2, 0.1, False]


@pytest.mark.parametrize("layer_norm", [True, False])
def test_opcheck(layer_norm):
    from torch.library import opcheck

    opcheck(torch.ops.lstm_ext.ln_lstm_layer_forward.default, _op_args(layer_norm, requires_grad=True))
    opcheck(torch.ops.lstm_ext.ln_lstm_layer_inference.default, _op_args(layer_norm))
    args = _op_args(layer_norm)
    saved = torch.ops.lstm_ext.ln_lstm_layer_forward(*args)
    x, h0, c0, w_ih, w_hh, b, *rest = args
    backward_args = [torch.randn_like(saved[0]), torch.randn_like(saved[1]), None, x, h0, c0, w_ih, w_hh, True,
                     *rest[:6], rest[6], rest[7], rest[8], saved[0], *saved[3:]]
    opcheck(torch.ops.lstm_ext.ln_lstm_layer_backward.default, backward_args)
    opcheck(torch.ops.lstm_ext.zoneout_mask.default, [torch.empty(0), torch.tensor([7]), [4, 3, 5], 0.3])


def test_zoneout_mask_is_a_function_of_its_seed():
    like = torch.empty(0, dtype=F64)
    a = torch.ops.lstm_ext.zoneout_mask(like, torch.tensor([11]), [50, 7, 9], 0.4)
    assert a.dtype == F64 and a.shape == (50, 7, 9)
    assert torch.equal(a, torch.ops.lstm_ext.zoneout_mask(like, torch.tensor([11]), [50, 7, 9], 0.4))
    assert not torch.equal(a, torch.ops.lstm_ext.zoneout_mask(like, torch.tensor([12]), [50, 7, 9], 0.4))
    assert not torch.ops.lstm_ext.zoneout_mask(like, torch.tensor([1]), [100], 0.0).any()
    assert torch.ops.lstm_ext.zoneout_mask(like, torch.tensor([1]), [100], 1.0).all()


def philox_mask_reference(seed: int, n: int, rate: float) -> torch.Tensor:
    """zoneout_mask's definition in Python: element 4 d + k is 1 where word k of Philox4x32-10 draw d (counter
    d, key seed), shifted right by 8, falls below rate * 2^24."""
    M = 0xFFFFFFFF
    threshold = int(rate * 16777216.0)
    out = []
    for d in range((n + 3) // 4):
        c = [d & M, d >> 32, 0, 0]
        k0, k1 = seed & M, (seed >> 32) & M
        for _ in range(10):
            p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
            c = [((p1 >> 32) ^ c[1] ^ k0) & M, p1 & M, ((p0 >> 32) ^ c[3] ^ k1) & M, p0 & M]
            k0, k1 = (k0 + 0x9E3779B9) & M, (k1 + 0xBB67AE85) & M
        out += [1.0 if (w >> 8) < threshold else 0.0 for w in c]
    return torch.tensor(out[:n], dtype=F64)


@pytest.mark.parametrize("capability", lstm_ext.backends()["cpu"])
def test_zoneout_mask_is_philox_on_every_capability(capability):
    """The mask kernels (a vector Philox on AVX2 and AVX-512, the scalar loop elsewhere and in the tails) give
    the words of Philox4x32-10 in the documented order, in every dtype: sizes around the vector blocks of 128
    elements and the parallel tasks' boundaries."""
    seed = 0x1234_5678_9ABC_DEF
    expected = philox_mask_reference(seed, 70000, 0.3)
    with cpu_kernels(capability):
        for dtype in (torch.float32, F64, torch.bfloat16, torch.float16):
            for n in (1, 5, 127, 128, 129, 300, 70000):
                mask = torch.ops.lstm_ext.zoneout_mask(torch.empty(0, dtype=dtype), torch.tensor([seed]), [n], 0.3)
                assert mask.dtype == dtype and torch.equal(mask.to(F64), expected[:n]), (dtype, n)


def test_inference_is_bitwise_the_training_forward():
    module = randomized(lstm_ext.LayerNormLSTM(6, 40, num_layers=2, bidirectional=True))
    x = torch.randn(7, 5, 6, requires_grad=True)
    train = module(x)
    with torch.no_grad():
        infer = module(x)
    with torch.inference_mode():
        infer2 = module(x)
    for a, b, c in zip((train[0], *train[1]), (infer[0], *infer[1]), (infer2[0], *infer2[1])):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    module = randomized(lstm_ext.LayerNormLSTM(4, 6, num_layers=2, batch_first=True, bidirectional=True))
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(3, 5, 4, requires_grad=True)
    eager = module(x)
    out = compiled(x)
    assert_close(out[0], eager[0])
    g_eager = torch.autograd.grad(eager[0].sum(), [x, *module.parameters()])
    g_compiled = torch.autograd.grad(out[0].sum(), [x, *module.parameters()])
    for a, b in zip(g_compiled, g_eager):
        assert_close(a, b)


@pytest.mark.parametrize("training", [False, True])
def test_lstm_zoneout_compiles_fullgraph(training):
    """lstm_ext.LSTM with zoneout is one lstm operator call (its masks drawn inside): it compiles without a
    graph break; in eval mode (d = the rates) the compiled forward and backward equal eager's. In training
    the compiled graph draws its own masks, so only their effect is checked: not the eval result."""
    torch._dynamo.reset()
    module = lstm_ext.LSTM(4, 6, num_layers=2, batch_first=True, bidirectional=True, zoneout_cell=0.3,
                           zoneout_hidden=0.2).train(training)
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(3, 5, 4, requires_grad=True)
    out = compiled(x)
    grads = torch.autograd.grad(out[0].sum(), [x, *module.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)
    eval_out = module.eval()(x)
    if training:
        assert not torch.equal(out[0], eval_out[0])
        return
    assert_close(out[0], eval_out[0])
    for a, b in zip(grads, torch.autograd.grad(eval_out[0].sum(), [x, *module.parameters()])):
        assert_close(a, b)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_second_bias_adds_to_the_first_and_shares_its_gradient(layer_norm):
    """bias_hh (the plain LSTM's b_hh, which LSTM's zoneout passes beside b_ih): the result of bias + bias_hh
    as one bias, each getting that bias's gradient (gradcheck), opcheck, and its errors on the fake path too."""
    from torch.library import opcheck

    torch.manual_seed(0)
    T, B, I, H = 4, 3, 5, 6
    x, h0, c0 = torch.randn(T, B, I, dtype=F64), torch.randn(B, H, dtype=F64), torch.randn(B, H, dtype=F64)
    w_ih, w_hh = 0.4 * torch.randn(4 * H, I, dtype=F64), 0.4 * torch.randn(4 * H, H, dtype=F64)
    b1, b2 = torch.randn(4 * H, dtype=F64), torch.randn(4 * H, dtype=F64)
    ln = ([1 + 0.2 * torch.randn(n, dtype=F64) for n in (4 * H, 4 * H, H)] + [0.1 * torch.randn(H, dtype=F64)]
          if layer_norm else [None] * 4)
    masks = [(torch.rand(T, B, H) < 0.3).to(F64), None]
    op = torch.ops.lstm_ext.ln_lstm_layer_forward

    def run(x, h0, c0, w_ih, w_hh, b1, b2):
        return op(x, h0, c0, w_ih, w_hh, b1, *ln, *masks, 0.3, 0.2, False, None, b2)[:3]

    one_bias = op(x, h0, c0, w_ih, w_hh, b1 + b2, *ln, *masks, 0.3, 0.2, False)[:3]
    for a, b in zip(run(x, h0, c0, w_ih, w_hh, b1, b2), one_bias):
        assert_close(a, b, **EXACT)
    args = [t.clone().requires_grad_() for t in (x, h0, c0, w_ih, w_hh, b1, b2)]
    assert torch.autograd.gradcheck(run, args)
    opcheck(op.default, [*args[:6], *ln, *masks, 0.3, 0.2, False, None, args[6]])
    for device in ("cpu", "meta"):
        def on(t):
            return None if t is None else t.detach().to(device)

        common = [on(t) for t in (x, h0, c0, w_ih, w_hh)]
        with pytest.raises(ValueError, match="bias_hh is given only with bias"):
            op(*common, None, *map(on, ln), None, None, 0.0, 0.0, False, None, on(b2))
        with pytest.raises(ValueError, match=r"bias_hh must have shape"):
            op(*common, on(b1), *map(on, ln), None, None, 0.0, 0.0, False, None, on(b2[:-1]))


def test_lstm_operator_with_zoneout_opcheck_and_errors():
    """The lstm operator's zoneout arguments: opcheck in eval mode (deterministic), the same result as the
    module, and clear errors for a rate outside [0, 1] and for zoneout with projections."""
    from torch.library import opcheck

    module = lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True, dtype=F64, zoneout_cell=0.3,
                           zoneout_hidden=0.2).eval()
    x = torch.randn(5, 3, 4, dtype=F64, requires_grad=True)
    params = list(module._flat_weights)
    args = [x, [], params, True, 2, 0.0, False, True, False, 0.3, 0.2]
    opcheck(torch.ops.lstm_ext.lstm.default, args)
    output, h_n, c_n = torch.ops.lstm_ext.lstm(*args)
    expected = module(x)
    assert torch.equal(output, expected[0]) and torch.equal(h_n, expected[1][0]) and torch.equal(c_n, expected[1][1])
    direct = lstm_ext._native.native.lstm(x, None, *args[2:])  # the binding the module calls
    assert torch.equal(direct[0], output) and torch.equal(direct[1][0], h_n) and torch.equal(direct[1][1], c_n)
    with pytest.raises(ValueError, match=r"lstm_ext.LSTM: zoneout rates must be in \[0, 1\], got zoneout_cell=1.5"):
        torch.ops.lstm_ext.lstm(*args[:9], 1.5, 0.2)
    proj = lstm_ext.LSTM(4, 6, proj_size=3, dtype=F64)
    with pytest.raises(NotImplementedError, match="zoneout with proj_size > 0 is not supported"):
        torch.ops.lstm_ext.lstm(x, [], list(proj._flat_weights), True, 1, 0.0, True, False, False, 0.1, 0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_close_to_float64(dtype):
    module = randomized(lstm_ext.LayerNormLSTM(8, 16, dtype=F64))
    x = torch.randn(6, 4, 8, dtype=F64)
    expected = module(x)[0]
    low = lstm_ext.LayerNormLSTM(8, 16, dtype=dtype)
    low.load_state_dict(module.state_dict())
    out, (h, c) = low(x.to(dtype))
    assert out.dtype == h.dtype == c.dtype == dtype
    tol = {torch.bfloat16: 5e-2, torch.float16: 1e-2, torch.float32: 1e-5}[dtype]
    assert_close(out.double(), expected, rtol=tol, atol=tol)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in low.parameters())


def test_double_backward_is_an_error():
    module = lstm_ext.LayerNormLSTM(3, 4, dtype=F64)
    x = torch.randn(2, 2, 3, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(module(x)[0].sum(), x, create_graph=False)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(module(x)[0].sum(), x, create_graph=True)
    # torch.func's transforms differentiate the backward too: the same clear error, never a wrong gradient.
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.func.grad(lambda x: module(x)[0].sum())(x.detach())


def test_module_conventions():
    module = lstm_ext.LayerNormLSTM(4, 6, num_layers=2, bidirectional=True, bias=True)
    names = [n for n, _ in module.named_parameters()]
    assert names[:7] == ["weight_ih_l0", "weight_hh_l0", "bias_l0", "ln_ih_weight_l0", "ln_hh_weight_l0",
                         "ln_c_weight_l0", "ln_c_bias_l0"]
    assert "ln_c_bias_l1_reverse" in names
    assert module.weight_ih_l1.shape == (24, 12)
    assert torch.equal(module.bias_l0[6:12], torch.ones(6)) and not module.bias_l0[:6].any()
    assert torch.equal(module.ln_hh_weight_l0, torch.ones(24)) and not module.ln_c_bias_l0.any()
    assert (module.weight_hh_l0.abs() <= 6 ** -0.5).all()
    # unbatched input, state_dict round trip, meta-device init
    out, (h, c) = module(torch.randn(5, 4))
    assert out.shape == (5, 12) and h.shape == (4, 6)
    other = lstm_ext.LayerNormLSTM(4, 6, num_layers=2, bidirectional=True)
    other.load_state_dict(module.state_dict())
    x = torch.randn(5, 2, 4)
    assert torch.equal(other(x)[0], module(x)[0])
    with torch.device("meta"):
        meta = lstm_ext.LayerNormLSTM(4, 6, num_layers=2)
    out, (h, c) = meta(torch.randn(5, 2, 4, device="meta"))
    assert out.shape == (5, 2, 6) and out.device.type == "meta"
    # the reference cell carries the same parameter names and initialisation
    cell = LayerNormLSTMCell(4, 6)
    single = lstm_ext.LayerNormLSTM(4, 6)
    single.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})


def test_errors_name_what_is_wrong():
    module = lstm_ext.LayerNormLSTM(4, 6, num_layers=2)
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 3, 6\)"):
        module(torch.randn(5, 3, 4), (torch.randn(2, 3, 5), torch.randn(2, 3, 6)))
    with pytest.raises(ValueError, match=r"input has 5 features but input_size is 4"):
        module(torch.randn(5, 3, 5))
    with pytest.raises(ValueError, match=r"zoneout_cell should be a number in \[0, 1\]"):
        lstm_ext.LayerNormLSTM(4, 6, zoneout_cell=1.5)
    with pytest.raises(NotImplementedError, match="proj_size"):
        lstm_ext.LSTM(4, 6, proj_size=3, zoneout_cell=0.1)
    with pytest.raises(ValueError, match="no zoneout"):
        lstm_ext.LSTM(4, 6, zoneout_hidden=0.1).to_torch()


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LSTM"])
def test_trace_and_export_with_dynamic_shapes(cls):
    """In eval (zoneout's d the rates), batch and time stay dynamic: LSTM with zoneout runs from the lstm
    operator, whose driver fixes sizes only where it draws masks (training)."""
    rates = dict(zoneout_cell=0.2, zoneout_hidden=0.1)
    module = randomized(getattr(lstm_ext, cls)(4, 6, num_layers=2, batch_first=True, bidirectional=True,
                                               **rates)).eval()
    x, other = torch.randn(3, 5, 4), torch.randn(2, 7, 4)
    traced = torch.jit.trace(module, (x,))
    assert_close(traced(other)[0], module(other)[0], rtol=0, atol=0)
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    exported = torch.export.export(module, (x,), dynamic_shapes={"input": {0: batch, 1: time}})
    out, (h, c) = exported.module()(other)
    expected, (h_ref, c_ref) = module(other)
    for a, b in ((out, expected), (h, h_ref), (c, c_ref)):
        assert_close(a, b, rtol=0, atol=0)


LENGTHS = {"sorted": [5, 4, 4, 2, 1], "unsorted": [2, 5, 1, 4, 3], "equal": [3, 3, 3], "all one": [1, 1, 1, 1],
           "one long, many short": [1, 6, 1, 1, 2, 1]}


def per_sequence(module, sequences, hx):
    """Each sequence alone (batch of one) through the reference loop: outputs, h_n, c_n."""
    D = 2 if module.bidirectional else 1
    layers = [layer_tensors(module, layer, d) for layer in range(module.num_layers) for d in range(D)]
    outs, hs, cs = [], [], []
    for b, seq in enumerate(sequences):
        state = None if hx is None else (hx[0][:, b:b + 1], hx[1][:, b:b + 1])
        out, (h, c) = layer_norm_lstm_stacked(seq.unsqueeze(1), state, layers, module.bidirectional, False,
                                              module.dropout, False, module.zoneout_cell, module.zoneout_hidden)
        outs.append(out[:, 0])
        hs.append(h)
        cs.append(c)
    return outs, torch.cat(hs, 1), torch.cat(cs, 1)


@pytest.mark.parametrize("lengths", list(LENGTHS), ids=str)
@pytest.mark.parametrize("config", [dict(num_layers=1), dict(num_layers=2, bidirectional=True),
                                    dict(num_layers=2, bidirectional=True, bias=False)], ids=str)
@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LSTM"])
def test_packed_sequence_matches_each_sequence_alone(device, cls, config, lengths):
    """Each packed sequence runs over its own length: outputs, h_n, c_n and every gradient as if alone (eval:
    zoneout by its rates)."""
    module = getattr(lstm_ext, cls)(3, 5, dtype=F64, device=device, zoneout_cell=0.2, zoneout_hidden=0.1,
                                    **config).eval()
    if cls == "LayerNormLSTM":
        randomized(module)
    torch.manual_seed(4)
    sequences = [torch.randn(n, 3, dtype=F64).to(device).requires_grad_() for n in LENGTHS[lengths]]
    D = 2 if module.bidirectional else 1
    hx = tuple(torch.randn(module.num_layers * D, len(sequences), 5, dtype=F64).to(device).requires_grad_()
               for _ in range(2))
    packed = nn.utils.rnn.pack_sequence(sequences, enforce_sorted=False)
    out, (h, c) = module(packed, hx)
    padded, _ = nn.utils.rnn.pad_packed_sequence(out)
    ref_out, ref_h, ref_c = per_sequence(module, sequences, hx)
    for b, n in enumerate(LENGTHS[lengths]):
        assert_close(padded[:n, b], ref_out[b], **EXACT)
    assert_close(h, ref_h, **EXACT)
    assert_close(c, ref_c, **EXACT)
    wrt = sequences + list(hx) + list(module.parameters())
    weights = [torch.linspace(-1, 1, o.numel(), dtype=F64, device=device).reshape(o.shape) for o in ref_out]
    loss = sum((padded[:o.shape[0], b] * w).sum() for b, (o, w) in enumerate(zip(ref_out, weights)))
    got = torch.autograd.grad(loss + 2 * h.sum() + 3 * c.sum(), wrt)
    ref_loss = sum((o * w).sum() for o, w in zip(ref_out, weights))
    expected = torch.autograd.grad(ref_loss + 2 * ref_h.sum() + 3 * ref_c.sum(), wrt)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, **EXACT, msg=lambda m: f"grad {k}: {m}")


def test_packed_training_reproducible_and_inference_bitwise():
    module = randomized(lstm_ext.LayerNormLSTM(3, 20, num_layers=2, bidirectional=True, zoneout_cell=0.2,
                                               zoneout_hidden=0.1))
    packed = nn.utils.rnn.pack_sequence([torch.randn(n, 3) for n in (2, 7, 4)], enforce_sorted=False)
    torch.manual_seed(1)
    first = module(packed)
    torch.manual_seed(1)
    second = module(packed)
    assert torch.equal(first[0].data, second[0].data) and torch.equal(first[1][1], second[1][1])
    module.eval()
    train_forward = module(packed)
    with torch.no_grad():
        inference = module(packed)
    for a, b in ((train_forward[0].data, inference[0].data), (train_forward[1][0], inference[1][0]),
                 (train_forward[1][1], inference[1][1])):
        assert torch.equal(a, b)


def test_packed_gradcheck():
    torch.manual_seed(0)
    batch_sizes = torch.tensor([3, 2, 2, 1])
    N, I, H = int(batch_sizes.sum()), 2, 3

    def r(*s, shift=0.0):
        return (shift + 0.5 * torch.randn(*s, dtype=F64)).requires_grad_()

    args = (r(N, I), r(3, H), r(3, H), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H, shift=1), r(4 * H, shift=1),
            r(H, shift=1), r(H))
    mask = (torch.rand(N, H, dtype=F64) < 0.3).to(F64)

    def fn(x, h0, c0, w_ih, w_hh, b, *ln):
        out, (h, c) = layer_norm_lstm_layer(x, (h0, c0), w_ih, w_hh, b, *ln, mask, None, 0.3, 0.2, reverse=True,
                                            batch_sizes=batch_sizes)
        return out, h, c

    assert torch.autograd.gradcheck(fn, args)


def test_autocast_and_parametrizations():
    module = randomized(lstm_ext.LayerNormLSTM(4, 8, num_layers=2))
    x = torch.randn(5, 3, 4)
    expected = module(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)[0]
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), expected, rtol=5e-2, atol=5e-2)
    out.float().sum().backward()
    assert module.weight_hh_l0.grad is not None and module.weight_hh_l0.grad.dtype == torch.float32
    # a parametrization (here: the recurrent weight scaled by 2) is seen as torch.nn's modules see it
    scaled = lstm_ext.LayerNormLSTM(4, 8)
    scaled.load_state_dict({k: v for k, v in module.state_dict().items() if k.endswith("_l0")})

    class Twice(nn.Module):
        def forward(self, w):
            return 2 * w

    plain = lstm_ext.LayerNormLSTM(4, 8)
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        plain.weight_hh_l0.mul_(2)
    nn.utils.parametrize.register_parametrization(scaled, "weight_hh_l0", Twice())
    assert_close(scaled(x)[0], plain(x)[0])


# ---- On every device -------------------------------------------------------
# The fused operator on the CPU ("cpu"), the generic time loop that CUDA
# tensors take, run on the CPU ("cpu-generic": ATen products and the CPU's
# row pass), and CUDA (its row kernels), each against the reference's loop
# of torch ops on the same device.

DEVICE_GRID = [dict(num_layers=1), dict(num_layers=2, bidirectional=True),
               dict(num_layers=2, bidirectional=True, batch_first=True, bias=False)]


def _fused_calls(module, x, hx):
    """The module's outputs, asserting that the fused operator ran (not the composite loop)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = module(x, hx)
    names = {e.name for e in prof.events()}
    assert any(n.startswith("lstm_ext::ln_lstm_layer") for n in names), sorted(names)[:20]
    return out


@pytest.mark.parametrize("config", DEVICE_GRID, ids=str)
@pytest.mark.parametrize("shape", [(5, 3, 4, 6), (4, 1, 3, 1), (3, 0, 2, 4), (3, 5, 7, 33), (2, 20, 9, 300)],
                         ids=str)
@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LSTM"])
def test_fused_on_device_matches_reference(device, cls, config, shape):
    T, B, I, H = shape
    module = getattr(lstm_ext, cls)(I, H, dtype=F64, device=device, **config)
    if cls == "LayerNormLSTM":
        randomized(module)
    else:
        module.zoneout_cell, module.zoneout_hidden = 0.2, 0.1  # the row engine (eval: by the rates)
        module.eval()
    x, hx = inputs(module, T, B, I, device=device)
    compare(module, x, hx, reference_forward(module, x, hx), fused_out=_fused_calls(module, x, hx))


@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LSTM"])
def test_zoneout_on_device_matches_reference_with_the_same_masks(device, cls):
    module = getattr(lstm_ext, cls)(4, 6, num_layers=2, bidirectional=True, dtype=F64, device=device,
                                    zoneout_cell=0.25, zoneout_hidden=0.15)
    if cls == "LayerNormLSTM":
        randomized(module)
    x, hx = inputs(module, 5, 3, 4, device=device)
    torch.manual_seed(7)
    out = _fused_calls(module, x, hx)
    torch.manual_seed(7)  # the same masks
    compare(module, x, hx, reference_forward(module, x, hx), fused_out=out)


@pytest.mark.parametrize("layer_norm", [True, False])
def test_gradcheck_on_device(device, layer_norm):
    torch.manual_seed(0)
    T, B, I, H = 3, 2, 3, 4

    def r(*s, shift=0.0):
        return (shift + 0.5 * torch.randn(*s, dtype=F64)).to(device).requires_grad_()

    ln = (r(4 * H, shift=1), r(4 * H, shift=1), r(H, shift=1), r(H)) if layer_norm else ()
    masks = [(torch.rand(T, B, H, dtype=F64) < 0.3).to(F64).to(device) for _ in range(2)]
    args = (r(T, B, I), r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H)) + ln

    def fn(x, h0, c0, w_ih, w_hh, b, *ln_params):
        out, (h, c) = layer_norm_lstm_layer(x, (h0, c0), w_ih, w_hh, b, *(ln_params or (None,) * 4), *masks,
                                            0.3, 0.3, reverse=True)
        return out, h, c

    assert torch.autograd.gradcheck(fn, args)


def test_opcheck_on_device(device):
    from torch.library import opcheck

    def moved(args):
        return [a.to(device).requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]

    opcheck(torch.ops.lstm_ext.ln_lstm_layer_forward.default, moved(_op_args(True, requires_grad=True)))
    opcheck(torch.ops.lstm_ext.ln_lstm_layer_inference.default, moved(_op_args(True)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_on_device_is_the_training_forward_and_close_to_float64(device, dtype):
    reference = randomized(lstm_ext.LayerNormLSTM(8, 48, num_layers=2, bidirectional=True, dtype=F64))
    torch.manual_seed(5)
    x = torch.randn(6, 4, 8, dtype=F64)
    expected = reference(x)[0]
    module = lstm_ext.LayerNormLSTM(8, 48, num_layers=2, bidirectional=True, dtype=dtype, device=device)
    module.load_state_dict(reference.state_dict())
    x_low = x.to(device=device, dtype=dtype).requires_grad_()
    train = module(x_low)
    with torch.no_grad():
        infer = module(x_low)
    for a, b in zip((train[0], *train[1]), (infer[0], *infer[1])):
        assert torch.equal(a, b)
    tol = {torch.bfloat16: 5e-2, torch.float32: 1e-5}[dtype]
    assert_close(train[0].double().cpu(), expected, rtol=tol, atol=tol)
    train[0].float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype and p.grad.isfinite().all() for p in module.parameters())
