"""lstm_ext.LSTMModel against reference.LSTMModel, and the course's training demo."""
import importlib.util
import os

import pytest
import torch
from torch.testing import assert_close

import lstm_ext

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train.py")


def load_example():
    spec = importlib.util.spec_from_file_location("train_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shape", [(100, 5, 4, 3, 1), (1, 1, 2, 5, 3), (7, 12, 6, 9, 2), (0, 3, 4, 3, 1)], ids=str)
def test_model_matches_reference(shape, device):
    B, T, I, H, O = shape
    torch.manual_seed(0)
    ref = lstm_ext.reference.LSTMModel(I, H, O).to(device=device, dtype=torch.float64)
    fused = lstm_ext.LSTMModel(I, H, O, device=device, dtype=torch.float64)
    fused.load_state_dict(ref.state_dict())
    assert list(fused.state_dict()) == list(ref.state_dict())
    x = torch.randn(B, T, I, dtype=torch.float64, device=device, requires_grad=True)
    out_ref, out_fused = ref(x), fused(x)
    assert_close(out_fused, out_ref, rtol=1e-10, atol=1e-10)
    params_ref = dict(ref.named_parameters())
    g_ref = torch.autograd.grad(out_ref.sum(), [x] + list(params_ref.values()))
    g_fused = torch.autograd.grad(out_fused.sum(), [x] + list(fused.parameters()))
    assert_close(g_fused[0], g_ref[0], rtol=1e-10, atol=1e-10)
    # Packed weight gradient, gate blocks i, f, g, o, against the reference's per-gate ones.
    grads = dict(zip(params_ref, g_ref[1:]))
    packed = torch.cat([grads[f"lstm_cell.{g}.weight"] for g in ("Wi", "Wf", "Wc", "Wo")])
    assert_close(g_fused[1], packed, rtol=1e-10, atol=1e-10)
    assert_close(g_fused[3], grads["fc.weight"], rtol=1e-10, atol=1e-10)


def test_model_state_dict_round_trip():
    ref = lstm_ext.reference.LSTMModel(4, 3, 1)
    fused = lstm_ext.LSTMModel(4, 3, 1)
    fused.load_state_dict(ref.state_dict())
    back = lstm_ext.reference.LSTMModel(4, 3, 1)
    back.load_state_dict(fused.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


def test_model_rejects_non_batch_first_rank():
    with pytest.raises(ValueError, match=r"input must be 3-D \(batch, time, input_size\)"):
        lstm_ext.LSTMModel(4, 3, 1)(torch.randn(5, 4))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["float64", "float32"])
def test_training_demo_losses_agree(dtype, tol, cell):
    example = load_example()
    ref, fused = example.make_models(dtype=dtype, cell=cell)
    X, y = example.make_data(dtype)
    assert X.shape == (100, 5, 4) and y.shape == (100, 1)
    ref_losses, _ = example.train(ref, X, y, epochs=100)
    fused_losses, _ = example.train(fused, X, y, epochs=100)
    assert len(fused_losses) == 100
    assert fused_losses[-1] < fused_losses[0]  # it learns
    if cell == "gru":
        # The same function at the start, but torch's GRU has two biases where the
        # reference has one per gate (r, z): Adam then steps them differently.
        assert abs(fused_losses[0] - ref_losses[0]) <= tol * max(1.0, abs(ref_losses[0]))
        assert abs(fused_losses[-1] - ref_losses[-1]) <= 0.05 * ref_losses[-1]
        return
    for a, b in zip(fused_losses, ref_losses):
        assert abs(a - b) <= tol * max(1.0, abs(b))
