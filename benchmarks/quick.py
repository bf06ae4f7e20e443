"""The main job's benchmark: a few representative sizes in about a minute.

The fused cell against torch.nn.LSTMCell and the reference cell, and the
fused sequence layer against torch.nn.LSTM and the reference cell looped in
Python, forward (no_grad) and forward+backward, at the course's size and at
one mid-size shape each; sequences also "fwd+bwd, h_n" (x without grad, the
loss h_n.sum(): a first layer whose model reads the last state). Prints
progress, then a short table of speed-ups, and writes its rows (bench
"quick") into benchmarks/results/<machine>.json.
The full grids: bench_cell.py and bench_sequence.py.

    python benchmarks/quick.py [--min-run-time 0.4]
"""
from __future__ import annotations

import sys
import time

import torch
from torch import nn

import lstm_ext
from bench_sequence import CellStack
from common import SPEEDUP, Bench, parse_common_args

CELLS = [(100, 4, 3), (64, 512, 512)]  # (B, I, H)
SEQUENCES = [(100, 5, 4, 3), (32, 100, 256, 256)]  # (B, T, I, H), one layer


def cell_cases(device):
    for B, I, H in CELLS:
        torch.manual_seed(0)
        ref = lstm_ext.reference.LSTMCell(I, H).to(device)
        fused = lstm_ext.LSTMCell(I, H, device=device)
        fused.load_state_dict(ref.state_dict())
        torch_cell = fused.to_torch()
        impls = {"lstm_ext": lambda x, s, m=fused: m(x, s), "torch": lambda x, s, m=torch_cell: m(x, s),
                 "reference": lambda x, s, m=ref: m(x, s)}
        make = (lambda B=B, I=I, H=H, grad=False: (torch.randn(B, I, device=device, requires_grad=grad),
                                                   tuple(torch.randn(B, H, device=device) for _ in range(2))))
        yield f"cell B={B} I={I} H={H}", {"B": B, "I": I, "H": H, "T": None}, impls, make, None


def reference_h_n(cell: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference cell looped over x's steps from zero states: its last h."""
    h = x.new_zeros(x.shape[1], cell.hidden_size)
    state = (h, torch.zeros_like(h))
    for t in range(x.shape[0]):
        state = cell(x[t], state)
    return state[0]


def sequence_cases(device):
    for B, T, I, H in SEQUENCES:
        torch.manual_seed(0)
        torch_lstm = nn.LSTM(I, H, device=device)
        fused = lstm_ext.LSTM.from_torch(torch_lstm)
        ref = CellStack([lstm_ext.reference.LSTMCell(I, H).to(device)])
        impls = {"lstm_ext": lambda x, s, m=fused: m(x)[0], "torch": lambda x, s, m=torch_lstm: m(x)[0],
                 "reference": lambda x, s, m=ref: m(x)}
        make = (lambda B=B, T=T, I=I, grad=False: (torch.randn(T, B, I, device=device, requires_grad=grad), None))
        # h_n alone, for the pass whose input is data (the reference's loop
        # keeps only its last state, so its graph has no stack of outputs).
        last = {"lstm_ext": lambda x, s, m=fused: m(x)[1][0], "torch": lambda x, s, m=torch_lstm: m(x)[1][0],
                "reference": lambda x, s, cell=ref.cells[0]: reference_h_n(cell, x)}
        yield f"sequence B={B} T={T} I={I} H={H}", {"B": B, "I": I, "H": H, "T": T}, impls, make, last


def main() -> None:
    parser = parse_common_args(__doc__)
    parser.set_defaults(min_run_time=0.4)
    args = parser.parse_args()
    bench = Bench("quick", args.device, min_run_time=args.min_run_time, verbose=False)
    cases = list(cell_cases(args.device)) + list(sequence_cases(args.device))
    # Sequences (the cases with an h_n function) also as a first layer
    # trains: x is data and the loss reads h_n only.
    steps = [(case, pass_) for case in cases
             for pass_ in ("fwd", "fwd+bwd") + (("fwd+bwd, h_n",) if case[-1] is not None else ())]
    print(f"lstm_ext {lstm_ext.__version__}, torch {torch.__version__}, {args.device}, "
          f"{torch.get_num_threads()} threads, CPU kernels {lstm_ext.cpu_capability()}", flush=True)
    summary, started = [], time.time()
    for k, ((label, shape, impls, make, last), pass_) in enumerate(steps):
        x, state = make(grad=pass_ == "fwd+bwd")
        if pass_ == "fwd+bwd, h_n":
            fns = {name: (lambda f=f: f(x, state).sum().backward()) for name, f in last.items()}
            times = bench.compare(fns, pass_=pass_, shape=shape, dtype=torch.float32, rounds=3)
        elif pass_ == "fwd":
            with torch.no_grad():
                fns = {name: (lambda f=f: f(x, state)) for name, f in impls.items()}
                times = bench.compare(fns, pass_=pass_, shape=shape, dtype=torch.float32, rounds=3)
        else:
            def step(f):
                out = f(x, state)
                torch.autograd.backward(out, [torch.ones_like(t) for t in out] if isinstance(out, tuple)
                                        else torch.ones_like(out))
            fns = {name: (lambda f=f: step(f)) for name, f in impls.items()}
            times = bench.compare(fns, pass_=pass_, shape=shape, dtype=torch.float32, rounds=3)
        summary.append((label, pass_, times))
        elapsed = time.time() - started
        print(f"[{k + 1}/{len(steps)}] {label} {pass_}: done, {elapsed:.0f} s so far, "
              f"about {elapsed / (k + 1) * (len(steps) - k - 1):.0f} s left", file=sys.stderr, flush=True)
    print(f"\n{SPEEDUP}\n")
    print(f"{'':36s} {'pass':13s} {'lstm_ext':>11s} {'vs torch.nn':>12s} {'vs reference':>13s}")
    for label, pass_, times in summary:
        ours = times["lstm_ext"]
        print(f"{label:36s} {pass_:13s} {ours:9.0f} us {times['torch'] / ours:11.2f}x "
              f"{times['reference'] / ours:12.2f}x")
    bench.write_json()


if __name__ == "__main__":
    main()
