"""The registered operators: opcheck, torch.compile, and bad input."""
import pytest
import torch

import lstm_ext
from conftest import make_pair, random_state


def cell_args(B=3, I=4, H=5, device="cpu", dtype=torch.float64, requires_grad=True, bias=True):
    x, h, c = random_state(B, I, H, dtype=dtype, device=device, requires_grad=requires_grad)
    weight = torch.randn(4 * H, I + H, dtype=dtype, device=device, requires_grad=requires_grad)
    b = torch.randn(4 * H, dtype=dtype, device=device, requires_grad=requires_grad) if bias else None
    return x, h, c, weight, b


@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 1, 1), (0, 2, 3), (9, 17, 12)], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_opcheck_cell_forward(shape, bias, device):
    args = cell_args(*shape, device=device, bias=bias)
    torch.library.opcheck(torch.ops.lstm_ext.cell_forward.default, args)


@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 1, 1), (0, 2, 3)], ids=str)
def test_opcheck_cell_backward(shape, device):
    x, h, c, weight, b = cell_args(*shape, device=device, requires_grad=False)
    h_new, c_new, gates, xh = torch.ops.lstm_ext.cell_forward(x, h, c, weight, b)
    args = (torch.randn_like(h_new), torch.randn_like(c_new), c, c_new, gates, xh, weight)
    torch.library.opcheck(torch.ops.lstm_ext.cell_backward.default, args)


def test_compile_fullgraph_cell(device):
    torch._dynamo.reset()
    ref, fused = make_pair(6, 8, device=device)
    compiled = torch.compile(fused, fullgraph=True)
    x, h, c = random_state(5, 6, 8, device=device)
    for module in (compiled,):
        out = module(x, (h, c))
        grads = torch.autograd.grad(out[0].sum() + 2 * out[1].sum(), [x, h, c, fused.weight])
        out_e = fused(x, (h, c))
        grads_e = torch.autograd.grad(out_e[0].sum() + 2 * out_e[1].sum(), [x, h, c, fused.weight])
        for a, b in zip(out + grads, out_e + grads_e):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_compile_model(device):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = lstm_ext.LSTMModel(4, 3, 1, device=device, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(10, 5, 4, dtype=torch.float64, device=device)
    out = compiled(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out_e = model(x)
    out_e.sum().backward()
    torch.testing.assert_close(out, out_e, rtol=1e-10, atol=1e-10)
    for a, p in zip(grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-10, atol=1e-10)


def test_bad_input_device_mismatch():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    cell = lstm_ext.LSTMCell(4, 5).cuda()
    x = torch.randn(3, 4, device="cuda")
    state = (torch.randn(3, 5), torch.randn(3, 5))  # CPU state with CUDA input
    with pytest.raises(ValueError, match=r"device mismatch: hx \(h_prev\) is on cpu but weight is on cuda:0"):
        cell(x, state)
    if torch.cuda.device_count() > 1:
        other = tuple(s.to("cuda:1") for s in state)
        with pytest.raises(ValueError, match=r"device mismatch: hx \(h_prev\) is on cuda:1"):
            cell(x, other)
