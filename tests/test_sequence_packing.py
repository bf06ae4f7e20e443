"""lstm_ext.pack_padded_sequence and lstm_ext.pad_packed_sequence: torch.nn's
functions, bit for bit (every field, every gradient), one row gather and one
row scatter in C++; torch's own functions under torch.compile and for lengths
it rejects; a clear error for lengths that torch's function accepts wrongly."""
import itertools
import random

import pytest
import torch
from torch import nn
from torch.nn.utils import rnn
from torch.nn.utils.rnn import PackedSequence

import lstm_ext
from conftest import cuda_usable

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not cuda_usable(), reason="no CUDA device"))]


def same(a, b) -> bool:
    """Bitwise equal, with the same dtype, device and shape (or both None)."""
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.device == b.device and a.shape == b.shape and torch.equal(a, b)


def random_batch(rng: random.Random, batch_first: bool, enforce_sorted: bool, features, dtype, device):
    B, T = rng.randint(1, 9), rng.randint(1, 7)
    lengths = [rng.randint(1, T) for _ in range(B)]
    lengths[rng.randrange(B)] = T if rng.random() < 0.7 else lengths[0]  # often a full-length sequence
    if enforce_sorted:
        lengths.sort(reverse=True)
    shape = (B, T, *features) if batch_first else (T, B, *features)
    return torch.randn(shape, dtype=dtype, device=device), lengths


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_first,enforce_sorted", list(itertools.product([False, True], [False, True])))
@pytest.mark.parametrize("features", [(), (3,), (2, 5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_pack_and_pad_equal_torch_bitwise(device, batch_first, enforce_sorted, features, dtype):
    rng = random.Random(f"{batch_first} {enforce_sorted} {features} {dtype}")
    for trial in range(12):
        x, lengths = random_batch(rng, batch_first, enforce_sorted, features, dtype, device)
        given = torch.tensor(lengths) if trial % 2 else lengths  # a tensor or a list, as torch takes
        ours_x, torch_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours = lstm_ext.pack_padded_sequence(ours_x, given, batch_first, enforce_sorted)
        theirs = rnn.pack_padded_sequence(torch_x, given, batch_first, enforce_sorted)
        assert isinstance(ours, PackedSequence)
        assert all(same(a, b) for a, b in zip(ours, theirs)), (lengths, ours, theirs)
        grad = torch.randn_like(ours.data)
        ours.data.backward(grad)
        theirs.data.backward(grad)
        assert same(ours_x.grad, torch_x.grad)

        T = x.shape[1 if batch_first else 0]
        for total_length, padding_value in [(None, 0.0), (T, -1.5), (T + 2, 3.0)]:
            data = [ours.data.detach().clone().requires_grad_() for _ in range(2)]
            padded = [pad(PackedSequence(d, ours.batch_sizes, ours.sorted_indices, ours.unsorted_indices),
                          batch_first, padding_value, total_length)
                      for pad, d in zip((lstm_ext.pad_packed_sequence, rnn.pad_packed_sequence), data)]
            assert same(padded[0][0], padded[1][0]) and same(padded[0][1], padded[1][1])
            grad = torch.randn_like(padded[0][0])
            for (out, _), d in zip(padded, data):
                out.backward(grad)
            assert same(data[0].grad, data[1].grad)


def test_round_trip_restores_each_sequence():
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    lengths = torch.tensor([2, 6, 4])
    padded, got = lstm_ext.pad_packed_sequence(lstm_ext.pack_padded_sequence(x, lengths, True, False), True)
    assert torch.equal(got, lengths)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(padded[b, :n], x[b, :n])
        assert not padded[b, n:].any()


@pytest.mark.parametrize("fn", ["pack", "pad"])
def test_gradcheck(fn):
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    lengths = [3, 4, 1]
    if fn == "pack":
        assert torch.autograd.gradcheck(lambda x: lstm_ext.pack_padded_sequence(x, lengths, False, False).data, (x,))
        assert torch.autograd.gradgradcheck(lambda x: lstm_ext.pack_padded_sequence(x, lengths, False, False).data,
                                            (x,))
    else:
        packed = rnn.pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)
        data = packed.data.requires_grad_()

        def pad(data):
            return lstm_ext.pad_packed_sequence(PackedSequence(data, *packed[1:]), padding_value=0.5)[0]

        assert torch.autograd.gradcheck(pad, (data,))
        assert torch.autograd.gradgradcheck(pad, (data,))


@pytest.mark.parametrize("module", ["lstm_ext.LSTM", "lstm_ext.GRU", "torch.nn.LSTM"])
def test_modules_take_the_packed_sequence(module):
    """Any module that takes a PackedSequence takes ours: the same outputs and
    gradients as with torch's packing and padding."""
    torch.manual_seed(0)
    make = {"lstm_ext.LSTM": lstm_ext.LSTM, "lstm_ext.GRU": lstm_ext.GRU, "torch.nn.LSTM": nn.LSTM}[module]
    layer = make(3, 5, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 5])
    results = []
    for pack, pad in ((lstm_ext.pack_padded_sequence, lstm_ext.pad_packed_sequence),
                      (rnn.pack_padded_sequence, rnn.pad_packed_sequence)):
        xi = x.clone().requires_grad_()
        out, _ = pad(layer(pack(xi, lengths, batch_first=True, enforce_sorted=False))[0], batch_first=True)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum(),
                                    [xi, *layer.parameters()])
        results.append([out, *grads])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_inference_mode_and_no_grad():
    x = torch.randn(5, 3, 2)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            ours = lstm_ext.pack_padded_sequence(x, [5, 1, 3], enforce_sorted=False)
            assert all(same(a, b) for a, b in zip(ours, rnn.pack_padded_sequence(x, [5, 1, 3], enforce_sorted=False)))
            assert same(lstm_ext.pad_packed_sequence(ours)[0], rnn.pad_packed_sequence(ours)[0])


def test_meta_input():
    """The gather runs on the fake (meta) device as on any other: shapes and
    batch sizes without data."""
    x = torch.empty(5, 3, 2, device="meta")
    ours = lstm_ext.pack_padded_sequence(x, [5, 1, 3], enforce_sorted=False)
    theirs = rnn.pack_padded_sequence(x, [5, 1, 3], enforce_sorted=False)
    assert ours.data.device.type == "meta" and ours.data.shape == theirs.data.shape
    assert torch.equal(ours.batch_sizes, theirs.batch_sizes)
    # Sorted: unsorted_indices on the meta device have no values to return lengths by.
    padded, lengths = lstm_ext.pad_packed_sequence(lstm_ext.pack_padded_sequence(x, [5, 3, 1]), total_length=6)
    assert padded.device.type == "meta" and padded.shape == (6, 3, 2) and lengths.tolist() == [5, 3, 1]


def test_compile_runs_torchs_functions():
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    lengths = torch.tensor([2, 5, 3])

    def round_trip(x):
        packed = lstm_ext.pack_padded_sequence(x, lengths, enforce_sorted=False)
        return lstm_ext.pad_packed_sequence(packed, padding_value=-1.0)[0]

    torch._dynamo.reset()
    assert torch.equal(torch.compile(round_trip, backend="eager")(x), round_trip(x))


@pytest.mark.parametrize("lengths,enforce_sorted,pattern", [
    ([5, 3], False, r"lengths has 2 entries but input \(shape \[5, 3, 2\], batch_first=False\) holds a batch of 3"),
    ([5, 3, 1, 1], True, "lengths has 4 entries"),
    ([6, 3, 1], False, r"every entry of lengths must be in \[1, 5\].*got 6"),
    ([5, 0, 1], False, r"every entry of lengths must be in \[1, 5\].*got 0"),
    ([1, 3, 2], True, "must be sorted in decreasing order when `enforce_sorted` is True"),
])
def test_bad_lengths(lengths, enforce_sorted, pattern):
    """Lengths that do not fit the input raise, naming both; torch's function
    packs only the first sequences when given too few lengths, and reads past
    the input's end for a length past T."""
    with pytest.raises(RuntimeError, match=pattern):
        lstm_ext.pack_padded_sequence(torch.randn(5, 3, 2), lengths, enforce_sorted=enforce_sorted)
    batch_first_pattern = pattern.replace(r"\[5, 3, 2\], batch_first=False", r"\[3, 5, 2\], batch_first=True")
    with pytest.raises(RuntimeError, match=batch_first_pattern):
        lstm_ext.pack_padded_sequence(torch.randn(3, 5, 2), lengths, batch_first=True, enforce_sorted=enforce_sorted)


def test_torch_func_transforms():
    """Under torch.func's transforms torch's functions run: vmap gives their
    results, and grad fails in their backward as theirs does."""
    xs = torch.randn(4, 5, 3, 2)
    got = torch.func.vmap(lambda x: lstm_ext.pack_padded_sequence(x, [5, 2, 3], enforce_sorted=False).data)(xs)
    assert same(got, torch.func.vmap(lambda x: rnn.pack_padded_sequence(x, [5, 2, 3], enforce_sorted=False).data)(xs))

    def loss(pack):
        return lambda x: (pack(x, [5, 2, 3], enforce_sorted=False).data ** 2).sum()

    x = torch.randn(5, 3, 2, dtype=torch.float64)
    try:
        expected = torch.func.grad(loss(rnn.pack_padded_sequence))(x)
    except RuntimeError as error:  # torch 2.13: its backward reads batch_sizes' storage
        with pytest.raises(RuntimeError, match=str(error)):
            torch.func.grad(loss(lstm_ext.pack_padded_sequence))(x)
    else:
        assert same(torch.func.grad(loss(lstm_ext.pack_padded_sequence))(x), expected)


def test_torch_errors_where_torch_checks():
    """Lengths that are not a 1-D CPU tensor, and a total_length short of the
    longest sequence, raise torch's own errors."""
    x = torch.randn(5, 3, 2)
    for lengths in (torch.tensor([[5, 3, 1]]), torch.tensor([5, 3, 1], device="meta")):
        with pytest.raises((RuntimeError, IndexError, NotImplementedError)) as ours:
            lstm_ext.pack_padded_sequence(x, lengths)
        with pytest.raises(type(ours.value)) as theirs:
            rnn.pack_padded_sequence(x, lengths)
        assert str(ours.value) == str(theirs.value)
    packed = rnn.pack_padded_sequence(x, [5, 3, 1])
    with pytest.raises(ValueError, match="Expected total_length to be at least"):
        lstm_ext.pad_packed_sequence(packed, total_length=4)
    # batch_sizes that no pack produced: torch's function decides.
    odd = PackedSequence(torch.randn(4, 2), torch.tensor([1, 3]), None, None)
    try:
        expected = rnn.pad_packed_sequence(odd)
    except Exception as error:
        with pytest.raises(type(error)):
            lstm_ext.pad_packed_sequence(odd)
    else:
        got = lstm_ext.pad_packed_sequence(odd)
        assert same(got[0], expected[0]) and same(got[1], expected[1])
