"""The pure-Python reference: the course's maths, and its model runs its own demo."""
import torch

from lstm_ext import reference


def test_reference_cell_is_the_course_maths():
    torch.manual_seed(0)
    cell = reference.LSTMCell(4, 3).double()
    x, h, c = torch.randn(2, 4).double(), torch.randn(2, 3).double(), torch.randn(2, 3).double()
    xh = torch.cat([x, h], 1)
    f = torch.sigmoid(xh @ cell.Wf.weight.T + cell.Wf.bias)
    i = torch.sigmoid(xh @ cell.Wi.weight.T + cell.Wi.bias)
    g = torch.tanh(xh @ cell.Wc.weight.T + cell.Wc.bias)
    o = torch.sigmoid(xh @ cell.Wo.weight.T + cell.Wo.bias)
    c_new = f * c + i * g
    h_new, c_out = cell(x, (h, c))
    torch.testing.assert_close(c_out, c_new)
    torch.testing.assert_close(h_new, o * torch.tanh(c_new))


def test_reference_state_dict_keys():
    keys = list(reference.LSTMCell(4, 3).state_dict())
    assert keys == ["Wf.weight", "Wf.bias", "Wi.weight", "Wi.bias", "Wc.weight", "Wc.bias", "Wo.weight", "Wo.bias"]


def test_reference_model_runs_the_course_demo_shapes():
    # The course's own model crashes here (state zeros(1, H), loop over dim 0).
    model = reference.LSTMModel(4, 3, 1)
    out = model(torch.randn(100, 5, 4))
    assert out.shape == (100, 1)


def test_reference_cell_steps_a_sequence_as_in_the_course():
    cell = reference.LSTMCell(4, 3)
    h, c = torch.zeros(1, 3), torch.zeros(1, 3)
    for x in torch.randn(5, 1, 4):
        h, c = cell(x, (h, c))
    assert h.shape == c.shape == (1, 3)
