"""Inference: without a gradient to form, the layers run layer_inference,
which gives the training forward's results bitwise and keeps nothing for a
backward (no gates, no per-step cells: two steps' c while it runs)."""
import pytest
import torch
from torch import nn
from torch.testing import assert_close

import lstm_ext

CONFIGS = [dict(), dict(num_layers=2, bidirectional=True, batch_first=True), dict(bias=False)]


# (T, B, I, H): one panel of 16 units; then 3 panels, the last one 8 wide, and
# enough rows to split each step between threads (the CPU inference forward
# permutes its gates into panel order, see csrc/lstm_kernels.h).
SHAPES = [(7, 3, 5, 16), (4, 64, 24, 40), (3, 2, 3, 5)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_inference_is_bitwise_the_training_forward(config, shape, dtype, device):
    torch.manual_seed(0)
    T, B, I, H = shape
    rnn = lstm_ext.LSTM(I, H, device=device, dtype=dtype, **config)
    x = torch.randn(T, B, I, device=device, dtype=dtype)
    trained = rnn(x)  # parameters require grad: layer_forward
    with torch.no_grad():
        no_grad = rnn(x)
    with torch.inference_mode():
        inference = rnn(x)
    for got in (no_grad, inference):
        assert_close(got[0], trained[0], rtol=0, atol=0)
        assert_close(got[1], trained[1], rtol=0, atol=0)
    assert not no_grad[0].requires_grad
    ref = rnn.to_torch()
    with torch.no_grad():
        expected = ref(x)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    assert_close(no_grad[0], expected[0], **tol)
    assert_close(no_grad[1][1], expected[1][1], **tol)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_layer_inference_operator_matches_layer_forward(reverse, device):
    torch.manual_seed(0)
    args = [torch.randn(*s, device=device, dtype=torch.float64)
            for s in ((4, 3, 2), (3, 5), (3, 5), (20, 2), (20, 5), (20,), (20,))]
    out, h_n, c_n, _, _ = torch.ops.lstm_ext.layer_forward(*args, reverse)
    for a, b in zip(torch.ops.lstm_ext.layer_inference(*args, reverse), (out, h_n, c_n)):
        assert_close(a, b, rtol=0, atol=0)
    torch.library.opcheck(torch.ops.lstm_ext.layer_inference.default, (*args, reverse))
    zero_batch = [a[:, :0] if a.dim() == 3 else a[:0] if a.dim() == 2 and a.shape[0] == 3 else a for a in args]
    torch.library.opcheck(torch.ops.lstm_ext.layer_inference.default, (*zero_batch, reverse))


def test_lstm_layer_without_grad_uses_the_inference_operator():
    torch.manual_seed(0)
    args = [torch.randn(*s) for s in ((4, 3, 2), (3, 5), (3, 5), (20, 2), (20, 5))]
    from conftest import RecordsTorchFunctions
    with RecordsTorchFunctions() as mode:
        lstm_ext.lstm_layer(args[0], (args[1], args[2]), *args[3:])
    assert torch.ops.lstm_ext.layer_inference.default in mode.called
    args[3].requires_grad_()
    with RecordsTorchFunctions() as mode:
        output, _ = lstm_ext.lstm_layer(args[0], (args[1], args[2]), *args[3:])
    assert torch.ops.lstm_ext.layer_forward.default in mode.called and output.requires_grad


def test_layer_inference_where_a_gradient_is_needed_runs_as_layer_forward():
    """A graph traced without grad and run with it (an exported program in
    training) must not lose the gradient."""
    torch.manual_seed(0)
    args = [torch.randn(*s, dtype=torch.float64) for s in ((4, 3, 2), (3, 5), (3, 5), (20, 2), (20, 5))]
    args[4].requires_grad_()
    output, h_n, c_n = torch.ops.lstm_ext.layer_inference(*args, None, None, False)
    assert output.requires_grad and c_n.requires_grad
    expected = torch.ops.lstm_ext.layer_forward(*args, None, None, False)
    for a, b in zip((output, h_n, c_n), expected):
        assert_close(a, b, rtol=0, atol=0)
    assert_close(torch.autograd.grad(output.sum() + c_n.sum(), args[4])[0],
                 torch.autograd.grad(expected[0].sum() + expected[2].sum(), args[4])[0], rtol=0, atol=0)


def test_inference_keeps_no_cells():
    """The pool's blocks of one call, freed afterwards, are what it allocated:
    the training forward's include the cells [T, B, H] (and its graph holds
    them), inference's do not."""
    T, B, H = 64, 32, 128
    rnn = lstm_ext.LSTM(H, H)
    x = torch.randn(T, B, H)

    def pooled_bytes_of(fn):
        lstm_ext.empty_cache()
        fn()
        return lstm_ext.cached_bytes()

    def training():
        output, _ = rnn(x)
        del output  # frees the graph and what it saved

    def inference():
        with torch.inference_mode():
            rnn(x)

    cells = T * B * H * 4
    assert pooled_bytes_of(training) - pooled_bytes_of(inference) >= cells
    projection_and_output = T * B * 5 * H * 4
    assert pooled_bytes_of(inference) <= projection_and_output + (1 << 20)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_inference_keeps_no_cells(cell):
    """On the GPU too, inference allocates the input projection, the output
    and a step's working state, never every step's cells; training keeps them."""
    T, B, H = 64, 32, 128
    module = (lstm_ext.LSTM if cell == "lstm" else lstm_ext.GRU)(H, H, device="cuda")
    x = torch.randn(T, B, H, device="cuda")

    def peak_bytes_of(fn):
        fn()  # warm up: cuBLAS's workspace is allocated once, on the first product
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before

    def training():
        output, _ = module(x)
        del output

    def inference():
        with torch.inference_mode():
            module(x)

    gates = 4 if cell == "lstm" else 3
    cells = T * B * H * 4
    assert peak_bytes_of(training) - peak_bytes_of(inference) >= cells - 2 * B * H * 4
    projection_and_output = T * B * (gates + 1) * H * 4
    assert peak_bytes_of(inference) <= projection_and_output + (1 << 20)


@pytest.mark.parametrize("batch", [1, 5, 9, 16, 40], ids=lambda b: f"B={b}")
@pytest.mark.parametrize("steps", [1, 4], ids=lambda t: f"T={t}")
def test_results_do_not_depend_on_the_thread_count(batch, steps, cpu_capability):
    """One thread or two, the same numbers bitwise: layers (one step and
    several) and cells, forward and every gradient. MKL's sgemm changes its
    sums with the thread count at some row counts (5-7, 9-11 here), so
    products over few rows take our own kernels (row_dots, small_gemm)."""
    torch.manual_seed(0)
    H = 144  # the backward's products with a weight above small_gemm's plain size at B=5
    modules = [lstm_ext.LSTM(H, H, num_layers=2, bidirectional=True), lstm_ext.GRU(H, H, num_layers=2),
               lstm_ext.LSTMCell(H, H), lstm_ext.GRUCell(H, H)]
    x = torch.randn(steps, batch, H)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                out = [m(x)[0] for m in modules[:2]] + [modules[2](x[0])[0], modules[3](x[0])]
            for m in modules:
                m.zero_grad(set_to_none=True)
            xg = x.clone().requires_grad_()
            loss = sum(m(xg)[0].square().sum() for m in modules[:2])
            loss = loss + modules[2](xg[0])[0].square().sum() + modules[3](xg[0]).square().sum()
            loss.backward()
            out += [xg.grad] + [p.grad for m in modules for p in m.parameters()]
            results.append(out)
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# Rows 1-13 (float_tile's blocks of 1 to 6 rows, and uneven splits), hidden
# sizes that leave part-filled 16-column vectors (17, 40) and whole panels
# (32), and hidden sizes below a SIMD vector (1, 3, 5, 7: every count of
# leftover lanes the AVX2 tile stores, and the pointwise pass's columns taken
# a vector of rows at a time, 8 and 16 rows whole and the rest partial).
SMALL_HIDDEN = [(3, 19, 4, 3), (2, 9, 5, 1), (2, 17, 3, 5), (2, 8, 2, 7)]


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("shape", [(5, 1, 7, 17), (4, 7, 33, 40), (3, 13, 16, 32), (6, 11, 9, 17)] + SMALL_HIDDEN,
                         ids=str)
def test_float32_time_loop_matches_torch_nn_under_every_capability(shape, cell, cpu_capability):
    """The float32 time loop under each CPU kernel variant (float_tile on AVX2
    and AVX512, brgemm elsewhere): torch.nn's results, and the training
    forward bitwise the inference one."""
    torch.manual_seed(0)
    T, B, I, H = shape
    ref = getattr(nn, cell)(I, H, num_layers=2, bidirectional=True)
    rnn = getattr(lstm_ext, cell).from_torch(ref)
    x = torch.randn(T, B, I)
    trained = rnn(x)
    with torch.no_grad():
        inference = rnn(x)
        expected = ref(x)
    assert_close(inference[0], trained[0], rtol=0, atol=0)
    assert_close(inference[0], expected[0], rtol=1e-5, atol=1e-5)
    assert_close(inference[1], expected[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("shape", SMALL_HIDDEN, ids=str)
def test_float32_small_hidden_gradients_under_every_capability(shape, cell, cpu_capability):
    """Below a SIMD vector of hidden units (the course's H = 3) the pointwise
    passes take each column a vector of rows at a time and the tile stores
    part of a vector: forward and backward match torch.nn in float32 under
    each CPU kernel variant."""
    torch.manual_seed(0)
    T, B, I, H = shape
    ref = getattr(nn, cell)(I, H, num_layers=2, bidirectional=True)
    rnn = getattr(lstm_ext, cell).from_torch(ref)
    x = torch.randn(T, B, I, requires_grad=True)
    results = []
    for module in (ref, rnn):
        output, state = module(x)
        states = state if isinstance(state, tuple) else (state,)
        loss = (output * torch.linspace(-1, 1, output.numel()).view_as(output)).sum() + sum(s.sum() for s in states)
        grads = torch.autograd.grad(loss, [x, *module.parameters()])
        results.append((output, *states, *grads))
    for expected, actual in zip(*results):
        assert_close(actual, expected, rtol=1e-5, atol=1e-5)
