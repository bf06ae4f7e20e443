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


# --- bad input: a clear Python exception, never a crash or a broadcast --------

def bad_cases():
    B, I, H = 3, 4, 5
    f64 = dict(dtype=torch.float64)
    x, h, c = torch.randn(B, I, **f64), torch.randn(B, H, **f64), torch.randn(B, H, **f64)
    return {
        "input 1-D": ((torch.randn(I, **f64), (h, c)), ValueError, r"input must be 2-D .* got a 1-D"),
        "input 3-D": ((torch.randn(2, B, I, **f64), (h, c)), ValueError, r"input must be 2-D"),
        "wrong feature size": ((torch.randn(B, I + 1, **f64), (h, c)), ValueError, r"input has 5 features but the cell's input_size is 4"),
        "batch mismatch h": ((x, (torch.randn(B + 1, H, **f64), c)), ValueError, r"hx \(h_prev\) must have shape \[3, 5\]"),
        "batch mismatch c": ((x, (h, torch.randn(1, H, **f64))), ValueError, r"cx \(c_prev\) must have shape \[3, 5\].*got \[1, 5\]"),
        "h wrong hidden": ((x, (torch.randn(B, H + 1, **f64), c)), ValueError, r"hx \(h_prev\) must have shape"),
        "c 1-D": ((x, (h, torch.randn(H, **f64))), ValueError, r"cx \(c_prev\) must have shape"),
        "hidden not a pair": ((x, h), TypeError, r"hx must be a pair \(h_prev, c_prev\), got a tensor"),
        "hidden triple": ((x, (h, c, c)), TypeError, r"hx must be a pair .* tuple of length 3"),
        "dtype mismatch input": ((x.float(), (h, c)), TypeError, r"dtype mismatch: input is torch.float32 but weight is torch.float64"),
        "dtype mismatch state": ((x, (h, c.float())), TypeError, r"dtype mismatch: cx \(c_prev\) is torch.float32"),
        "integer input": ((x.long(), (h, c)), TypeError, r"input must be a floating point tensor .* got torch.int64"),
    }


@pytest.mark.parametrize("case", list(bad_cases()))
def test_bad_input(case):
    args, error, pattern = bad_cases()[case]
    cell = lstm_ext.LSTMCell(4, 5, dtype=torch.float64)
    with pytest.raises(error, match=pattern):
        cell(*args)


def test_bad_input_integer_weights():
    with pytest.raises(TypeError, match=r"weight must be a floating point tensor .* got torch.int64"):
        lstm_ext.lstm_cell(torch.ones(2, 3).long(), (torch.ones(2, 1).long(),) * 2, torch.ones(4, 4).long())


def test_bad_input_weight_and_bias_shapes():
    x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"weight must have shape \[4\*hidden_size, input_size \+ hidden_size\]"):
        lstm_ext.lstm_cell(x, (h, c), torch.randn(15, 7))
    with pytest.raises(ValueError, match=r"bias must have shape \[16\]"):
        lstm_ext.lstm_cell(x, (h, c), torch.randn(16, 7), torch.randn(4))


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


def test_bad_input_cell_backward():
    x, h, c, weight, b = cell_args(requires_grad=False)
    h_new, c_new, gates, xh = torch.ops.lstm_ext.cell_forward(x, h, c, weight, b)
    good = [torch.randn_like(h_new), torch.randn_like(c_new), c, c_new, gates, xh, weight]
    with pytest.raises(ValueError, match=r"gates must have shape \[3, 20\]"):
        torch.ops.lstm_ext.cell_backward(*good[:4], gates[:, :-1], *good[5:])
    with pytest.raises(ValueError, match=r"grad_h must have shape \[3, 5\]"):
        torch.ops.lstm_ext.cell_backward(good[0][:2], *good[1:])
    with pytest.raises(TypeError, match=r"dtype mismatch: input_hidden is torch.float32"):
        torch.ops.lstm_ext.cell_backward(*good[:5], xh.float(), weight)
