"""lstm_ext.LSTMCell: state_dict interchange, converters, defaults, initialisation."""
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import lstm_ext
from conftest import make_pair, random_state


def test_state_dict_uses_reference_keys():
    cell = lstm_ext.LSTMCell(4, 3)
    assert list(cell.state_dict()) == list(lstm_ext.reference.LSTMCell(4, 3).state_dict())
    assert [n for n, _ in cell.named_parameters()] == ["weight", "bias"]


def test_state_dict_round_trips_both_ways(device):
    ref, fused = make_pair(5, 7, device=device)
    # fused -> reference
    other = lstm_ext.reference.LSTMCell(5, 7).to(device=device, dtype=torch.float64)
    other.load_state_dict(fused.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    # reference -> fused -> reference, exactly
    again = lstm_ext.LSTMCell(5, 7, device=device, dtype=torch.float64)
    again.load_state_dict(other.state_dict())
    assert torch.equal(again.weight, fused.weight) and torch.equal(again.bias, fused.bias)
    # and the packed layout loads too
    packed = lstm_ext.LSTMCell(5, 7, device=device, dtype=torch.float64)
    packed.load_state_dict({"weight": fused.weight.detach(), "bias": fused.bias.detach()})
    assert torch.equal(packed.weight, fused.weight)


def test_state_dict_errors_like_torch():
    cell = lstm_ext.LSTMCell(4, 3)
    state = lstm_ext.reference.LSTMCell(4, 3).state_dict()
    missing = dict(state)
    del missing["Wo.bias"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"Wo.bias\""):
        cell.load_state_dict(missing)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"extra\""):
        cell.load_state_dict({**state, "extra": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r"size mismatch for Wf.weight"):
        cell.load_state_dict(lstm_ext.reference.LSTMCell(5, 3).state_dict())
    result = cell.load_state_dict(missing, strict=False)
    assert result.missing_keys == ["Wo.bias"]


def test_state_dict_is_a_view_without_grad():
    cell = lstm_ext.LSTMCell(4, 3)
    state = cell.state_dict()
    assert not state["Wf.weight"].requires_grad
    assert state["Wi.weight"].data_ptr() == cell.weight.data_ptr()  # block 0 (i) starts the packed weight


def test_from_torch_and_to_torch(device):
    torch.manual_seed(3)
    torch_cell = nn.LSTMCell(6, 5, device=device, dtype=torch.float64)
    fused = lstm_ext.LSTMCell.from_torch(torch_cell)
    x, h, c = random_state(4, 6, 5, device=device)
    expected = torch_cell(x, (h, c))
    got = fused(x, (h, c))
    for a, b in zip(got, expected):
        assert_close(a, b, rtol=1e-10, atol=1e-10)
    g_expected = torch.autograd.grad(expected[0].sum() + expected[1].sum(), [x, h, c])
    g_got = torch.autograd.grad(got[0].sum() + got[1].sum(), [x, h, c])
    for a, b in zip(g_got, g_expected):
        assert_close(a, b, rtol=1e-10, atol=1e-10)
    back = fused.to_torch()
    assert isinstance(back, nn.LSTMCell)
    for a, b in zip(back(x, (h, c)), expected):
        assert_close(a, b, rtol=1e-10, atol=1e-10)
    # to_torch then from_torch is exact
    again = lstm_ext.LSTMCell.from_torch(back)
    assert torch.equal(again.weight, fused.weight) and torch.equal(again.bias, fused.bias)


def test_without_bias(device):
    ref, fused = make_pair(3, 4, device=device, bias=False)
    assert fused.bias is None and list(fused.state_dict()) == ["Wf.weight", "Wi.weight", "Wc.weight", "Wo.weight"]
    x, h, c = random_state(2, 3, 4, device=device)
    for a, b in zip(fused(x, (h, c)), ref(x, (h, c))):
        assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch_cell = fused.to_torch()
    assert torch_cell.bias_ih is None
    assert lstm_ext.LSTMCell.from_torch(torch_cell).bias is None


def test_missing_state_is_zeros(device):
    ref, fused = make_pair(4, 3, device=device)
    x, _, _ = random_state(6, 4, 3, device=device)
    zeros = torch.zeros(6, 3, dtype=torch.float64, device=device)
    for a, b in zip(fused(x), ref(x, (zeros, zeros))):
        assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_initialisation_matches_the_reference_range():
    torch.manual_seed(0)
    cell = lstm_ext.LSTMCell(60, 40)
    bound = 1 / math.sqrt(100)
    for p in cell.parameters():
        assert p.abs().max() <= bound
        assert p.abs().max() > 0.9 * bound  # uniform over the whole range, not a narrower one
    assert abs(cell.weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound


def test_factory_kwargs_and_module_conversions(device):
    cell = lstm_ext.LSTMCell(4, 3, device=device, dtype=torch.float64)
    assert cell.weight.dtype == torch.float64 and cell.weight.device.type == device
    cell = cell.float()
    assert cell.weight.dtype == torch.float32
    assert "4, 3, bias=True" in repr(cell)


def test_python_autograd_function_matches_cpp_autograd(device):
    """LSTMCellFunction (Python autograd) and the operator's C++ autograd agree, and both pass gradcheck."""
    x, h, c = random_state(3, 4, 5, device=device)
    weight = torch.randn(20, 9, dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.randn(20, dtype=torch.float64, device=device, requires_grad=True)
    inputs = (x, h, c, weight, bias)
    assert torch.autograd.gradcheck(lambda *a: lstm_ext.LSTMCellFunction.apply(*a)[:2], inputs)
    py = lstm_ext.LSTMCellFunction.apply(*inputs)[:2]
    cpp = lstm_ext.lstm_cell(x, (h, c), weight, bias)
    g_py = torch.autograd.grad(py[0].sum() + 3 * py[1].sum(), inputs)
    g_cpp = torch.autograd.grad(cpp[0].sum() + 3 * cpp[1].sum(), inputs)
    for a, b in zip(g_py, g_cpp):
        assert_close(a, b, rtol=1e-12, atol=1e-12)
