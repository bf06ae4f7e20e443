"""bfloat16 and float16 layers on the CPU: float32 state inside, and (with
AVX512-BF16 under the AVX512 kernels) the products on bfloat16 operands.

Judged against a float64 run: the error may not exceed torch.nn's own
bfloat16 (float16) error by more than a small factor, and every gradient
must be there and finite.
"""
import pytest
import torch

import lstm_ext

CONFIGS = [  # B, T, I, H, layers, bidirectional
    (4, 7, 5, 3, 1, False),      # H below a vector, odd input size
    (3, 9, 33, 37, 1, True),     # a narrow last panel, odd K
    (16, 12, 64, 128, 2, True),  # several panels, two layers
    (5, 1, 40, 24, 2, True),     # one step (T = 1: no time loop; bfloat16's products on its own operands)
]


def _error(out, ref):
    return ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("config", CONFIGS)
def test_16bit_layers_against_float64(cpu_capability, dtype, cell, config):
    B, T, I, H, L, bi = config
    torch.manual_seed(0)
    torch_cls, ours_cls = (torch.nn.LSTM, lstm_ext.LSTM) if cell == "lstm" else (torch.nn.GRU, lstm_ext.GRU)
    truth = torch_cls(I, H, L, bidirectional=bi).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    ref, _ = truth(x)
    reference = torch_cls(I, H, L, bidirectional=bi)
    reference.load_state_dict(truth.state_dict())
    reference = reference.to(dtype)
    ours = ours_cls(I, H, L, bidirectional=bi).to(dtype)
    ours.load_state_dict(reference.state_dict())
    x_truth = x.clone().requires_grad_()
    truth(x_truth)[0].square().sum().backward()
    x_reference = x.to(dtype).requires_grad_()
    reference_out, _ = reference(x_reference)
    reference_out.float().square().sum().backward()
    torch_error = _error(reference_out, ref)
    xg = x.to(dtype).requires_grad_()
    out, _ = ours(xg)
    assert out.dtype == dtype
    assert _error(out, ref) <= 2 * torch_error + 1e-3
    with torch.no_grad():  # inference: the same numbers, bitwise
        assert torch.equal(ours(x.to(dtype))[0], out.detach())
    out.float().square().sum().backward()
    # Every gradient present, 16-bit, and no further from float64's than
    # torch.nn's own 16-bit gradient (by the same margin as the output).
    assert xg.grad.dtype == dtype
    assert _error(xg.grad, x_truth.grad) <= 2 * _error(x_reference.grad, x_truth.grad) + 1e-3
    truth_params, reference_params = dict(truth.named_parameters()), dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None and p.grad.dtype == dtype, name
        expected = truth_params[name].grad
        assert _error(p.grad, expected) <= 2 * _error(reference_params[name].grad, expected) + 1e-3, name


def test_bfloat16_packed_matches_each_sequence():
    torch.manual_seed(1)
    rnn = lstm_ext.LSTM(6, 20, bidirectional=True).bfloat16()
    lengths = [9, 4, 7]
    seqs = [torch.randn(n, 6).bfloat16() for n in lengths]
    packed = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    with torch.no_grad():
        out, _ = rnn(packed)
        padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
        for b, s in enumerate(seqs):
            alone, _ = rnn(s.unsqueeze(1))
            assert torch.equal(padded[:lengths[b], b], alone[:, 0])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bfloat16_packed_gradients_against_float64(cpu_capability, cell):
    torch.manual_seed(4)
    cls = lstm_ext.LSTM if cell == "lstm" else lstm_ext.GRU
    truth = cls(6, 40, bidirectional=True).double()
    ours = cls(6, 40, bidirectional=True).bfloat16()
    ours.load_state_dict(truth.state_dict())
    lengths = [9, 4, 7, 1]
    seqs = [torch.randn(n, 6, dtype=torch.float64) for n in lengths]
    results = []
    for model, dtype in ((truth, torch.float64), (ours, torch.bfloat16)):
        xs = [s.detach().to(dtype).requires_grad_() for s in seqs]
        out, _ = model(torch.nn.utils.rnn.pack_sequence(xs, enforce_sorted=False))
        out.data.float().square().sum().backward()
        results.append([x.grad for x in xs] + [p.grad for p in model.parameters()])
    for ours_grad, truth_grad in zip(results[1], results[0]):
        assert ours_grad.dtype == torch.bfloat16
        assert _error(ours_grad, truth_grad) <= 2e-2


@pytest.mark.parametrize("T", [5, 1], ids=lambda t: f"T={t}")  # T = 1: one step, no time loop
def test_saved_tensors_are_float32_and_opcheck(cpu_capability, T):
    torch.manual_seed(2)
    B, I, H = 3, 7, 16
    args = (torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H), torch.randn(4 * H, I), torch.randn(4 * H, H),
            torch.randn(4 * H), torch.randn(4 * H), False)
    args16 = tuple(a.bfloat16() if isinstance(a, torch.Tensor) else a for a in args)
    output, h_n, c_n, gates, cells = torch.ops.lstm_ext.layer_forward(*args16)
    assert output.dtype == h_n.dtype == c_n.dtype == torch.bfloat16
    assert gates.dtype == cells.dtype == torch.float32
    torch.library.opcheck(torch.ops.lstm_ext.layer_forward.default, args16)
    torch.library.opcheck(torch.ops.lstm_ext.layer_inference.default, args16)
    gru_args16 = tuple(a.bfloat16() for a in (args[0], args[1], torch.randn(3 * H, I), torch.randn(3 * H, H),
                                              torch.randn(3 * H), torch.randn(3 * H))) + (False,)
    output, h_n, gates, hidden_n = torch.ops.lstm_ext.gru_layer_forward(*gru_args16)
    assert output.dtype == h_n.dtype == torch.bfloat16
    assert gates.dtype == hidden_n.dtype == torch.float32
    torch.library.opcheck(torch.ops.lstm_ext.gru_layer_forward.default, gru_args16)
    torch.library.opcheck(torch.ops.lstm_ext.gru_layer_inference.default, gru_args16)


def test_compile_bfloat16():
    torch.manual_seed(3)
    rnn = lstm_ext.LSTM(8, 16).bfloat16()
    x = torch.randn(5, 2, 8).bfloat16()
    compiled = torch.compile(rnn, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x)[0], rnn(x)[0])


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bfloat16_bad_input(cpu_capability, cell, steps):
    """bfloat16 layers take their own paths on AVX512-BF16 (T = 1, and the
    time loop on the bfloat16 operands, which gets shape-only float32
    stand-ins for them): the same checks and messages as every other call,
    on real and meta tensors."""
    torch.manual_seed(4)
    cls = lstm_ext.LSTM if cell == "lstm" else lstm_ext.GRU
    gates = 4 if cell == "lstm" else 3
    for device in ("cpu", "meta"):
        rnn = cls(8, 16, device=device, dtype=torch.bfloat16)
        x = torch.randn(steps, 3, 8, device=device, dtype=torch.bfloat16)
        w_ih = torch.zeros(gates * 16, 9, device=device, dtype=torch.bfloat16)  # input size 9, not 8
        w_hh = torch.zeros(gates * 16, 16, device=device, dtype=torch.bfloat16)
        h = torch.zeros(3, 16, device=device, dtype=torch.bfloat16)
        op_args = (x, h, h, w_ih, w_hh) if cell == "lstm" else (x, h, w_ih, w_hh)
        layer = torch.ops.lstm_ext.layer_forward if cell == "lstm" else torch.ops.lstm_ext.gru_layer_forward
        with pytest.raises((ValueError, RuntimeError), match=r"input has 8 features but input_size is 9"):
            layer(*op_args, None, None, False)
        h0 = torch.zeros(1, 2, 16, device=device, dtype=torch.bfloat16)  # batch 2, not 3
        state = (h0, torch.zeros(1, 3, 16, device=device, dtype=torch.bfloat16)) if cell == "lstm" else h0
        with pytest.raises((ValueError, RuntimeError), match=r"h_0"):
            rnn(x, state)
        wrong_dtype = (torch.zeros(1, 3, 16, device=device), state[1]) if cell == "lstm" else torch.zeros(1, 3, 16, device=device)
        with pytest.raises((ValueError, RuntimeError, TypeError), match=r"h_0"):
            rnn(x, wrong_dtype)
