"""Differential fuzz test: seeded random configurations of lstm_ext.LSTM
(with and without projections), LSTMCell, GRU and GRUCell against
torch.nn's modules with the same parameters, outputs and every gradient,
and of lstm_ext.LayerNormLSTM (zoneout, dropout, train and eval) against
lstm_ext.reference.LayerNormLSTM, which draws the same masks.

Each seed is one case, so a failure names the seed that reproduces it. The
suite runs LSTM_EXT_FUZZ_CASES cases of each module (default 800, 300, 400,
400 and 200, 300 of PackedSequence input, 200 of LayerNormLSTM);
set it higher to run thousands locally:

    LSTM_EXT_FUZZ_CASES=5000 pytest tests/test_fuzz.py -q
"""
import os
import random

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import lstm_ext

CASES = int(os.environ.get("LSTM_EXT_FUZZ_CASES", "0"))
LSTM_CASES = CASES or 800
PROJ_CASES = CASES or 300
PACKED_CASES = CASES or 300
CELL_CASES = CASES or 400
GRU_CASES = CASES or 400
GRU_CELL_CASES = CASES or 200
LN_CASES = CASES or 200
TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def maybe_non_contiguous(rng: random.Random, t: torch.Tensor) -> torch.Tensor:
    """The same values, sometimes as a strided view (every other column of a wider tensor)."""
    if rng.random() < 0.3 and t.numel() > 0:
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


def freeze_some(rng: random.Random, *modules: nn.Module) -> None:
    """Freeze the same random subset of parameters in each module (frozen weights need no gradient)."""
    names = [n for n, _ in modules[0].named_parameters()]
    frozen = {n for n in names if rng.random() < 0.2}
    for module in modules:
        for n, p in module.named_parameters():
            p.requires_grad_(n not in frozen)


def compare(got, expected, tol, what):
    for k, (a, b) in enumerate(zip(got, expected)):
        if b is None:
            assert a is None, f"{what}[{k}]: expected no gradient"
            continue
        assert_close(a, b, **tol, msg=lambda m: f"{what}[{k}]: {m}")


def outputs_and_grads(module, x, state, weights, wrt):
    """(output, *final states) and the gradients of a loss of them (None where not required)."""
    output, states = module(x, state) if state is not None else module(x)
    states = states if isinstance(states, tuple) else (states,)  # (h_n, c_n), or the GRU's h_n
    loss = (output * weights).sum() + sum((2 - 5 * k) * s.sum() for k, s in enumerate(states))
    grads = torch.autograd.grad(loss, [t for t in wrt if t.requires_grad], allow_unused=True) if any(
        t.requires_grad for t in wrt) else ()
    it = iter(grads)
    return (output, *states), [next(it) if t.requires_grad else None for t in wrt]


@pytest.mark.parametrize("seed", range(LSTM_CASES))
def test_lstm_against_torch(seed):
    sequence_case(seed, nn.LSTM, lstm_ext.LSTM, seed)


@pytest.mark.parametrize("seed", range(PROJ_CASES))
def test_lstm_with_projections_against_torch(seed):
    sequence_case(seed, nn.LSTM, lstm_ext.LSTM, 40_000 + seed, projections=True)


@pytest.mark.parametrize("seed", range(GRU_CASES))
def test_gru_against_torch(seed):
    sequence_case(seed, nn.GRU, lstm_ext.GRU, 20_000 + seed)


def sequence_case(seed, torch_module, fused_module, rng_seed, projections=False):
    """One random configuration of a sequence module against torch.nn's
    (projections: an LSTM with a random proj_size below hidden_size)."""
    rng = random.Random(rng_seed)
    torch.manual_seed(seed)
    dtype = torch.float64 if rng.random() < 0.8 else torch.float32
    config = dict(num_layers=rng.randint(1, 3), bidirectional=rng.random() < 0.5,
                  batch_first=rng.random() < 0.5, bias=rng.random() < 0.8)
    T, B, I, H = rng.randint(1, 6), rng.choice([0, 1, 1, 2, 3, 5]), rng.randint(1, 7), rng.randint(1, 8)
    if projections:
        H = max(H, 2)
        config["proj_size"] = rng.randint(1, H - 1)
    width = config.get("proj_size") or H  # of h
    unbatched = rng.random() < 0.15
    ref = torch_module(I, H, dtype=dtype, **config)
    fused = fused_module.from_torch(ref)
    freeze_some(rng, ref, fused)
    for module in (ref, fused):
        module.train(rng.random() < 0.5)
    shape = (T, I) if unbatched else (B, T, I) if config["batch_first"] else (T, B, I)
    x = maybe_non_contiguous(rng, torch.randn(*shape, dtype=dtype)).requires_grad_(rng.random() < 0.7)
    layers = config["num_layers"] * (2 if config["bidirectional"] else 1)
    state = None
    if rng.random() < 0.6:
        widths = (width, H) if torch_module is nn.LSTM else (H,)
        state = tuple(maybe_non_contiguous(rng, torch.randn(*((layers, n) if unbatched else (layers, B, n)),
                                                            dtype=dtype)).requires_grad_(rng.random() < 0.5)
                      for n in widths)
    out_shape = (*shape[:-1], width * (2 if config["bidirectional"] else 1))
    weights = torch.randn(*out_shape, dtype=dtype)
    wrt_ref = [x, *(state or ()), *ref.parameters()]
    wrt_fused = [x, *(state or ()), *fused.parameters()]
    if state is not None and torch_module is nn.GRU:
        state = state[0]
    what = f"seed {seed}: {config}, (T, B, I, H)={(T, B, I, H)}, {dtype}, unbatched={unbatched}"
    expected, expected_grads = outputs_and_grads(ref, x, state, weights, wrt_ref)
    got, got_grads = outputs_and_grads(fused, x, state, weights, wrt_fused)
    tol = TOLERANCES[dtype]
    compare(got, expected, tol, what + " outputs")
    compare(got_grads, expected_grads, tol, what + " grads")
    if not fused.training:  # inference (layer_inference) is the training forward, bitwise
        with torch.no_grad():
            output, states = fused(x, state) if state is not None else fused(x)
        states = states if isinstance(states, tuple) else (states,)
        compare((output, *states), [t.detach() for t in got], dict(rtol=0, atol=0), what + " no_grad")


@pytest.mark.parametrize("seed", range(CELL_CASES))
def test_cell_against_torch(seed):
    rng = random.Random(10_000 + seed)
    torch.manual_seed(seed)
    dtype = torch.float64 if rng.random() < 0.8 else torch.float32
    B, I, H = rng.choice([0, 1, 2, 3, 7]), rng.randint(0, 7), rng.randint(1, 8)
    bias = rng.random() < 0.8
    unbatched = rng.random() < 0.2
    ref = nn.LSTMCell(I, H, bias=bias, dtype=dtype)
    fused = lstm_ext.LSTMCell.from_torch(ref)
    frozen = rng.random() < 0.2
    for p in (*ref.parameters(), *fused.parameters()):
        p.requires_grad_(not frozen)
    batch = () if unbatched else (B,)
    x = maybe_non_contiguous(rng, torch.randn(*batch, I, dtype=dtype)).requires_grad_(rng.random() < 0.7)
    state = None
    if rng.random() < 0.6:
        state = tuple(maybe_non_contiguous(rng, torch.randn(*batch, H, dtype=dtype)).requires_grad_(
            rng.random() < 0.5) for _ in range(2))
    what = f"seed {seed}: (B, I, H)={(B, I, H)}, bias={bias}, {dtype}, unbatched={unbatched}"
    results = []
    for module in (ref, fused):
        h, c = module(x, state) if state is not None else module(x)
        loss = (h * torch.linspace(-1, 1, h.numel(), dtype=dtype).reshape(h.shape)).sum() + 2 * c.sum()
        params = list(module.parameters())
        wrt = [t for t in (x, *(state or ())) if t.requires_grad] + [p for p in params if p.requires_grad]
        grads = list(torch.autograd.grad(loss, wrt)) if wrt else []
        if grads and params[0].requires_grad and module is ref:  # torch's two weights, as the packed one
            n_in = len(wrt) - len(params)
            w_ih, w_hh = grads[n_in], grads[n_in + 1]
            packed = [torch.cat([w_ih, w_hh], 1)] + ([grads[n_in + 2]] if bias else [])  # d b_ih = d b
            grads = grads[:n_in] + packed
        results.append([h, c, *grads])
    assert len(results[0]) == len(results[1]), what
    compare(results[1], results[0], TOLERANCES[dtype], what)


@pytest.mark.parametrize("seed", range(GRU_CELL_CASES))
def test_gru_cell_against_torch(seed):
    rng = random.Random(30_000 + seed)
    torch.manual_seed(seed)
    dtype = torch.float64 if rng.random() < 0.8 else torch.float32
    B, I, H = rng.choice([0, 1, 2, 3, 7]), rng.randint(0, 7), rng.randint(1, 8)
    bias = rng.random() < 0.8
    unbatched = rng.random() < 0.2
    ref = nn.GRUCell(I, H, bias=bias, dtype=dtype)
    fused = lstm_ext.GRUCell.from_torch(ref)
    freeze_some(rng, ref, fused)
    batch = () if unbatched else (B,)
    x = maybe_non_contiguous(rng, torch.randn(*batch, I, dtype=dtype)).requires_grad_(rng.random() < 0.7)
    h = None
    if rng.random() < 0.6:
        h = maybe_non_contiguous(rng, torch.randn(*batch, H, dtype=dtype)).requires_grad_(rng.random() < 0.5)
    what = f"seed {seed}: (B, I, H)={(B, I, H)}, bias={bias}, {dtype}, unbatched={unbatched}"
    results = []
    for module in (ref, fused):
        out = module(x, h) if h is not None else module(x)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)).sum()
        wrt = [t for t in (x, h, *module.parameters()) if t is not None and t.requires_grad]
        results.append([out, *(torch.autograd.grad(loss, wrt) if wrt else ())])
    compare(results[1], results[0], TOLERANCES[dtype], what)


@pytest.mark.parametrize("seed", range(PACKED_CASES))
def test_packed_sequence_against_torch(seed):
    """A PackedSequence of random lengths (sorted or not) through an LSTM, an
    LSTM with projections or a GRU, against torch.nn's packed path; packed and
    padded back by lstm_ext's functions for ours, torch's for torch.nn's."""
    rng = random.Random(50_000 + seed)
    torch.manual_seed(seed)
    kind = rng.choice(["lstm", "lstmp", "gru"])
    dtype = torch.float64 if rng.random() < 0.8 else torch.float32
    config = dict(num_layers=rng.randint(1, 3), bidirectional=rng.random() < 0.5, bias=rng.random() < 0.8)
    B, I, H = rng.randint(1, 6), rng.randint(1, 7), rng.randint(2, 8)
    if kind == "lstmp":
        config["proj_size"] = rng.randint(1, H - 1)
    lengths = [rng.randint(1, 6) for _ in range(B)]
    enforce_sorted = rng.random() < 0.3
    if enforce_sorted:
        lengths.sort(reverse=True)
    torch_module = nn.GRU if kind == "gru" else nn.LSTM
    ref = torch_module(I, H, dtype=dtype, **config)
    fused = (lstm_ext.GRU if kind == "gru" else lstm_ext.LSTM).from_torch(ref)
    freeze_some(rng, ref, fused)
    x = torch.randn(max(lengths), B, I, dtype=dtype).requires_grad_(rng.random() < 0.7)
    layers = config["num_layers"] * (2 if config["bidirectional"] else 1)
    widths = (H,) if kind == "gru" else (config.get("proj_size") or H, H)
    state = None
    if rng.random() < 0.6:
        state = tuple(torch.randn(layers, B, n, dtype=dtype).requires_grad_(rng.random() < 0.5) for n in widths)
    what = f"seed {seed}: {kind} {config}, lengths={lengths}, (I, H)={(I, H)}, {dtype}"
    results = []
    total_length = max(lengths) + rng.randint(0, 2) if rng.random() < 0.5 else None
    # torch.nn's module with torch's packing, ours with ours (bitwise torch's).
    for module, (pack, pad) in ((ref, (nn.utils.rnn.pack_padded_sequence, nn.utils.rnn.pad_packed_sequence)),
                                (fused, (lstm_ext.pack_padded_sequence, lstm_ext.pad_packed_sequence))):
        packed = pack(x, lengths, enforce_sorted=enforce_sorted)
        out, states = module(packed, (state[0] if kind == "gru" else state) if state is not None else None)
        states = states if isinstance(states, tuple) else (states,)
        padded, padded_lengths = pad(out, total_length=total_length)
        assert padded_lengths.tolist() == lengths, what
        w = torch.linspace(-1, 1, padded.numel(), dtype=dtype).reshape(padded.shape)
        loss = (padded * w).sum() + sum((2 - 5 * k) * s.sum() for k, s in enumerate(states))
        wrt = [x, *(state or ()), *module.parameters()]
        needed = [t for t in wrt if t.requires_grad]
        grads = iter(torch.autograd.grad(loss, needed, allow_unused=True) if needed else ())
        results.append([out.data, padded, *states, *[next(grads) if t.requires_grad else None for t in wrt]])
    compare(results[1], results[0], TOLERANCES[dtype], what)


@pytest.mark.parametrize("seed", range(LN_CASES))
def test_layernorm_lstm_against_reference(seed):
    from lstm_ext import reference

    rng = random.Random(60_000 + seed)
    dtype = torch.float64 if rng.random() < 0.8 else torch.float32
    config = dict(num_layers=rng.randint(1, 3), bidirectional=rng.random() < 0.5, batch_first=rng.random() < 0.5,
                  bias=rng.random() < 0.8, dropout=rng.choice([0.0, 0.0, 0.3]),
                  zoneout_cell=rng.choice([0.0, 0.0, 0.2]), zoneout_hidden=rng.choice([0.0, 0.0, 0.3]))
    T, B, I, H = rng.randint(1, 6), rng.choice([0, 1, 1, 2, 3, 5]), rng.randint(1, 7), rng.randint(1, 9)
    torch.manual_seed(seed)
    fused = lstm_ext.LayerNormLSTM(I, H, dtype=dtype, **config)
    with torch.no_grad():
        for name, p in fused.named_parameters():
            if not name.startswith("weight"):
                p.add_(0.3 * torch.randn_like(p))
    ref = reference.LayerNormLSTM(I, H, **config).to(dtype)
    ref.load_state_dict(fused.state_dict())
    for p_ref, p_fused in zip(ref.parameters(), fused.parameters()):  # the same ones frozen (names differ)
        frozen = rng.random() < 0.2
        p_ref.requires_grad_(not frozen)
        p_fused.requires_grad_(not frozen)
    training = rng.random() < 0.5
    for module in (ref, fused):
        module.train(training)
    shape = (B, T, I) if config["batch_first"] else (T, B, I)
    x = maybe_non_contiguous(rng, torch.randn(*shape, dtype=dtype)).requires_grad_(rng.random() < 0.7)
    layers = config["num_layers"] * (2 if config["bidirectional"] else 1)
    state = None
    if rng.random() < 0.6:
        state = tuple(torch.randn(layers, B, H, dtype=dtype).requires_grad_(rng.random() < 0.5) for _ in range(2))
    weights = torch.randn(*shape[:-1], H * (2 if config["bidirectional"] else 1), dtype=dtype)
    what = f"seed {seed}: {config}, (T, B, I, H)={(T, B, I, H)}, {dtype}, training={training}"
    torch.manual_seed(seed)
    expected, expected_grads = outputs_and_grads(ref, x, state, weights, [x, *(state or ()), *ref.parameters()])
    torch.manual_seed(seed)
    got, got_grads = outputs_and_grads(fused, x, state, weights, [x, *(state or ()), *fused.parameters()])
    if dtype == torch.float64:
        compare(got, expected, TOLERANCES[dtype], what + " outputs")
        compare(got_grads, expected_grads, TOLERANCES[dtype], what + " grads")
        return
    # float32: a layer norm's 1 / sqrt(var + eps) magnifies rounding where a row's variance is small, in the
    # reference as in the fused layer, so the two float32 results can differ far beyond float32's epsilon
    # on ill-conditioned cases. Both are measured against the reference in float64 (the same masks: a
    # seed draws the same masks in either dtype): the fused layer's error may be neither far above the
    # reference's (either is the larger on some seeds; median ratio ~1) nor above 1e-3 of the result's
    # scale (reached where a row of H = 2 has a variance near 0: the LN backward's closed form cancels).
    truth = reference.LayerNormLSTM(I, H, **config).to(torch.float64)
    truth.load_state_dict(fused.state_dict())
    for p_ref, p_truth in zip(ref.parameters(), truth.parameters()):
        p_truth.requires_grad_(p_ref.requires_grad)
    truth.train(training)
    x64 = x.detach().double().requires_grad_(x.requires_grad)
    state64 = None if state is None else tuple(s.detach().double().requires_grad_(s.requires_grad) for s in state)
    torch.manual_seed(seed)
    exact, exact_grads = outputs_and_grads(truth, x64, state64, weights.double(),
                                           [x64, *(state64 or ()), *truth.parameters()])
    for k, (a, b, e) in enumerate(zip([*got, *got_grads], [*expected, *expected_grads], [*exact, *exact_grads])):
        if e is None:
            assert a is None and b is None, f"{what}[{k}]: expected no gradient"
            continue
        if e.numel() == 0:
            continue
        fused_error = (a.double() - e).abs().max().item()
        reference_error = (b.double() - e).abs().max().item()
        assert fused_error <= max(16 * reference_error, 1e-3 * (1 + e.abs().max().item())), (
            f"{what}[{k}]: fused float32 error {fused_error:.2e}, reference float32 error {reference_error:.2e}")


@pytest.mark.parametrize("seed", range(LN_CASES // 2))
def test_layernorm_lstm_packed_against_each_sequence(seed):
    """PackedSequence input (random lengths, unsorted) against each sequence alone through the reference."""
    from lstm_ext import reference

    rng = random.Random(70_000 + seed)
    config = dict(num_layers=rng.randint(1, 3), bidirectional=rng.random() < 0.5, bias=rng.random() < 0.8,
                  zoneout_cell=rng.choice([0.0, 0.2]), zoneout_hidden=rng.choice([0.0, 0.3]))
    I, H = rng.randint(1, 6), rng.randint(1, 8)
    lengths = [rng.randint(1, 6) for _ in range(rng.randint(1, 5))]
    torch.manual_seed(seed)
    cls = lstm_ext.LayerNormLSTM if rng.random() < 0.7 else lstm_ext.LSTM
    fused = cls(I, H, dtype=torch.float64, **config).eval()
    with torch.no_grad():
        for name, p in fused.named_parameters():
            if not name.startswith("weight"):
                p.add_(0.3 * torch.randn_like(p))
    sequences = [torch.randn(n, I, dtype=torch.float64, requires_grad=True) for n in lengths]
    D = 2 if config["bidirectional"] else 1
    state = tuple(torch.randn(config["num_layers"] * D, len(lengths), H, dtype=torch.float64, requires_grad=True)
                  for _ in range(2)) if rng.random() < 0.5 else None
    out, (h, c) = fused(nn.utils.rnn.pack_sequence(sequences, enforce_sorted=False), state)
    padded, _ = nn.utils.rnn.pad_packed_sequence(out)
    names = ("weight_ih", "weight_hh", "ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias")
    layers = []
    for layer in range(config["num_layers"]):
        for d in range(D):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            w = {n: getattr(fused, n + suffix, None) for n in names}
            if cls is lstm_ext.LSTM:
                w["bias"] = getattr(fused, "bias_ih" + suffix) + getattr(fused, "bias_hh" + suffix) \
                    if config["bias"] else None
            else:
                w["bias"] = getattr(fused, "bias" + suffix, None)
            layers.append(w)
    what = f"seed {seed}: {cls.__name__} {config}, I={I}, H={H}, lengths={lengths}"
    loss, ref_loss = 2 * h.sum() + 3 * c.sum(), 0
    for b, seq in enumerate(sequences):
        s = None if state is None else (state[0][:, b:b + 1], state[1][:, b:b + 1])
        ro, (rh, rc) = reference.layer_norm_lstm_stacked(seq.unsqueeze(1), s, layers, config["bidirectional"],
                                                         zoneout_cell=config["zoneout_cell"],
                                                         zoneout_hidden=config["zoneout_hidden"])
        assert_close(padded[:len(seq), b], ro[:, 0], **TOLERANCES[torch.float64], msg=lambda m: f"{what} out {b}: {m}")
        assert_close(h[:, b], rh[:, 0], **TOLERANCES[torch.float64], msg=lambda m: f"{what} h_n {b}: {m}")
        assert_close(c[:, b], rc[:, 0], **TOLERANCES[torch.float64], msg=lambda m: f"{what} c_n {b}: {m}")
        weights = torch.randn(ro[:, 0].shape, dtype=torch.float64)
        loss = loss + (padded[:len(seq), b] * weights).sum()
        ref_loss = ref_loss + (ro[:, 0] * weights).sum() + 2 * rh.sum() + 3 * rc.sum()
    wrt = sequences + list(state or ()) + list(fused.parameters())
    compare(torch.autograd.grad(loss, wrt, allow_unused=True), torch.autograd.grad(ref_loss, wrt, allow_unused=True),
            TOLERANCES[torch.float64], what + " grads")
