"""lstm_ext.lstm_cell / LSTMCellFunction and the operators under them."""
import pytest
import torch
from torch.testing import assert_close

import lstm_ext
from conftest import TOLERANCES, RecordsTorchFunctions, available_cpu_capabilities, make_pair, random_state

SHAPES = [  # (B, I, H): the course's size, odd sizes, vector-width edges, B=1, H=1, B=0, and one whose
    # products are large enough for ATen's matrix product rather than the small-product kernel
    (100, 4, 3), (1, 1, 1), (3, 5, 7), (2, 9, 8), (4, 3, 17), (7, 16, 33), (1, 20, 64), (0, 4, 3), (5, 0, 2),
    (64, 48, 80),
]


def run_both(ref, fused, x, h, c):
    """Forward and every gradient, of the reference and the fused cell."""
    out_ref = ref(x, (h, c))
    out_fused = fused(x, (h, c))
    # Different weights on h and c so both incoming gradients matter.
    w_h = torch.linspace(-1, 2, out_ref[0].numel(), dtype=x.dtype, device=x.device).reshape(out_ref[0].shape)
    inputs = [x, h, c]
    g_ref = torch.autograd.grad((out_ref[0] * w_h).sum() + out_ref[1].sum(), inputs + list(ref.parameters()),
                                allow_unused=True)
    g_fused = torch.autograd.grad((out_fused[0] * w_h).sum() + out_fused[1].sum(), inputs + [fused.weight, fused.bias])
    return out_ref, out_fused, g_ref, g_fused


def packed_reference_grads(ref, g_ref):
    """The reference's per-gate parameter gradients in the fused packed layout (i, f, g, o)."""
    grads = dict(zip([n for n, _ in ref.named_parameters()], g_ref[3:]))
    weight = torch.cat([grads[f"{g}.weight"] for g in ("Wi", "Wf", "Wc", "Wo")])
    bias = torch.cat([grads[f"{g}.bias"] for g in ("Wi", "Wf", "Wc", "Wo")])
    return weight, bias


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_reference(shape, dtype, device, cpu_capability):
    B, I, H = shape
    rtol, atol = TOLERANCES[dtype]
    ref, fused = make_pair(I, H, dtype=dtype, device=device)
    x, h, c = random_state(B, I, H, dtype=dtype, device=device)
    out_ref, out_fused, g_ref, g_fused = run_both(ref, fused, x, h, c)
    assert_close(out_fused[0], out_ref[0], rtol=rtol, atol=atol)
    assert_close(out_fused[1], out_ref[1], rtol=rtol, atol=atol)
    for name, a, b in zip("x h c".split(), g_fused[:3], g_ref[:3]):
        assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"grad of {name}: {m}")
    weight, bias = packed_reference_grads(ref, g_ref)
    assert_close(g_fused[3], weight, rtol=rtol, atol=atol)
    assert_close(g_fused[4], bias, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (2, 4, 3), (4, 2, 9), (0, 3, 2), (2, 3, 16)], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_gradcheck(shape, bias, device):
    B, I, H = shape
    torch.manual_seed(1)
    x, h, c = random_state(B, I, H, device=device)
    weight = (torch.randn(4 * H, I + H, dtype=torch.float64, device=device) * 0.5).requires_grad_()
    b = (torch.randn(4 * H, dtype=torch.float64, device=device) * 0.5).requires_grad_() if bias else None

    def f(x, h, c, weight, b):
        return lstm_ext.lstm_cell(x, (h, c), weight, b)

    assert torch.autograd.gradcheck(f, (x, h, c, weight, b))


def test_gradcheck_op_directly_differentiable(device):
    """torch.ops.lstm_ext.cell_forward carries the same autograd as LSTMCellFunction."""
    x, h, c = random_state(3, 4, 5, device=device)
    weight = torch.randn(20, 9, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(20, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.lstm_ext.cell_forward(*a)[:2], (x, h, c, weight, b))


def test_only_h_or_only_c_used(device):
    ref, fused = make_pair(4, 6, device=device)
    x, h, c = random_state(5, 4, 6, device=device)
    for pick in (0, 1):
        g_ref = torch.autograd.grad(ref(x, (h, c))[pick].sum(), [x, h, c])
        g_fused = torch.autograd.grad(fused(x, (h, c))[pick].sum(), [x, h, c])
        for a, b in zip(g_fused, g_ref):
            assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_non_contiguous_and_transposed_inputs(device):
    ref, fused = make_pair(6, 5, device=device)
    x = torch.randn(6, 8, dtype=torch.float64, device=device).t()[:, :6]      # transposed view (8, 6)
    h = torch.randn(5, 8, dtype=torch.float64, device=device).t()              # transposed (8, 5)
    c = torch.randn(8, 10, dtype=torch.float64, device=device)[:, ::2]         # strided (8, 5)
    assert not (x.is_contiguous() or h.is_contiguous() or c.is_contiguous())
    for a, b in zip(fused(x, (h, c)), ref(x, (h, c))):
        assert_close(a, b, rtol=1e-10, atol=1e-10)
    # Expanded incoming gradients (stride 0), as sum() produces.
    x.requires_grad_()
    (g_fused,) = torch.autograd.grad(fused(x, (h, c))[0].sum(), x)
    (g_ref,) = torch.autograd.grad(ref(x, (h, c))[0].sum(), x)
    assert_close(g_fused, g_ref, rtol=1e-10, atol=1e-10)


def test_nan_and_inf_stay_in_their_row(device):
    ref, fused = make_pair(3, 4, device=device)
    x, h, c = random_state(4, 3, 4, device=device, requires_grad=False)
    x[1, 0] = float("nan")
    x[2, 1] = float("inf")
    c[3, 2] = float("-inf")
    out_ref, out_fused = ref(x, (h, c)), fused(x, (h, c))
    for a, b in zip(out_fused, out_ref):
        assert_close(a, b, rtol=1e-10, atol=1e-10, equal_nan=True)
    assert torch.isfinite(out_fused[0][0]).all()  # the clean row is untouched
    assert torch.isnan(out_fused[0][1]).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_reduced_precision_against_float32(dtype, device):
    ref, fused = make_pair(24, 40, dtype=torch.float32, device=device)
    x, h, c = random_state(8, 24, 40, dtype=torch.float32, device=device, requires_grad=False)
    expected = ref(x, (h, c))
    fused_low = fused.to(dtype)
    got = fused_low(x.to(dtype), (h.to(dtype), c.to(dtype)))
    assert got[0].dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    for a, b in zip(got, expected):
        assert_close(a.float(), b, rtol=tol, atol=tol)
    # Backward runs in the same dtype.
    xr = x.to(dtype).requires_grad_()
    fused_low(xr, (h.to(dtype), c.to(dtype)))[0].sum().backward()
    assert xr.grad.dtype == dtype and torch.isfinite(xr.grad.float()).all()


def test_cpu_capabilities_agree():
    """Every compiled SIMD variant gives the scalar (DEFAULT) variant's result."""
    _, fused = make_pair(11, 37, dtype=torch.float32)
    x, h, c = random_state(13, 11, 37, dtype=torch.float32)
    previous = lstm_ext.cpu_capability()
    results = {}
    try:
        for name in available_cpu_capabilities():
            lstm_ext.set_cpu_capability(name)
            out = fused(x, (h, c))
            grads = torch.autograd.grad(out[0].sum() + out[1].sum(), [x, h, c, fused.weight])
            results[name] = out + grads
    finally:
        lstm_ext.set_cpu_capability(previous)
    for name, values in results.items():
        for a, b in zip(values, results["DEFAULT"]):
            assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} vs DEFAULT: {m}")


def test_default_capability_is_the_fastest_supported():
    available = available_cpu_capabilities()
    assert available[0] == "DEFAULT"
    assert lstm_ext.cpu_capability() == available[-1]
    with pytest.raises(ValueError, match="not available"):
        lstm_ext.set_cpu_capability("SSE9")


@pytest.mark.parametrize("shape", [(100, 4, 3), (7, 16, 33), (64, 32, 256), (0, 3, 4)], ids=str)
def test_cuda_matches_cpu(shape):
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    B, I, H = shape
    _, cpu_cell = make_pair(I, H)
    gpu_cell = lstm_ext.LSTMCell(I, H, device="cuda", dtype=torch.float64)
    gpu_cell.load_state_dict(cpu_cell.state_dict())
    cpu_in = random_state(B, I, H)
    gpu_in = [t.detach().cuda().requires_grad_() for t in cpu_in]
    results = []
    for cell, (x, h, c) in ((cpu_cell, cpu_in), (gpu_cell, gpu_in)):
        out = cell(x, (h, c))
        results.append(out + torch.autograd.grad(out[0].sum() + 2 * out[1].sum(), [x, h, c, cell.weight, cell.bias]))
    for a, b in zip(*results):
        assert_close(b.cpu(), a, rtol=1e-10, atol=1e-10)


def test_direct_binding_and_torch_ops_agree(device):
    # Eager calls take lstm_ext._C.cell_forward; under __torch_function__ (and
    # torch.compile) the cell calls torch.ops.lstm_ext.cell_forward. Same results.
    torch.manual_seed(0)
    cell = lstm_ext.LSTMCell(3, 4, device=device, dtype=torch.float64)
    x = torch.randn(2, 3, device=device, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(2, 4, device=device, dtype=torch.float64) for _ in range(2))
    direct = [cell(x, state), lstm_ext.lstm_cell(x, state, cell.weight, cell.bias)]
    with RecordsTorchFunctions() as mode:
        via_ops = [cell(x, state), lstm_ext.lstm_cell(x, state, cell.weight, cell.bias)]
    assert mode.called.count(torch.ops.lstm_ext.cell_forward.default) == 2
    for (h_a, c_a), (h_b, c_b) in zip(direct, via_ops):
        assert_close(h_a, h_b, rtol=0, atol=0)
        assert_close(c_a, c_b, rtol=0, atol=0)
        grads = [torch.autograd.grad(h.sum() + 2 * c.sum(), [x, cell.weight]) for h, c in ((h_a, c_a), (h_b, c_b))]
        for a, b in zip(*grads):
            assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"lstm_ext.lstm_cell: h_prev must be a Tensor, got list"):
        cell(x, ([0.0], state[1]))
