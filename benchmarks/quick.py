"""The main job's benchmark: a few representative sizes in about a minute.

The fused cell against torch.nn.LSTMCell and the reference cell, and the
fused sequence layer against torch.nn.LSTM and the reference cell looped in
Python, forward (no_grad) and forward+backward, at the course's size and at
one mid-size shape each. Prints progress, then a short table of speed-ups,
and writes its rows (bench "quick") into benchmarks/results/<machine>.json.
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
        yield f"cell B={B} I={I} H={H}", {"B": B, "I": I, "H": H, "T": None}, impls, make


def sequence_cases(device):
    for B, T, I, H in SEQUENCES:
        torch.manual_seed(0)
        torch_lstm = nn.LSTM(I, H, device=device)
        fused = lstm_ext.LSTM.from_torch(torch_lstm)
        ref = CellStack([lstm_ext.reference.LSTMCell(I, H).to(device)])
        impls = {"lstm_ext": lambda x, s, m=fused: m(x)[0], "torch": lambda x, s, m=torch_lstm: m(x)[0],
                 "reference": lambda x, s, m=ref: m(x)}
        make = (lambda B=B, T=T, I=I, grad=False: (torch.randn(T, B, I, device=device, requires_grad=grad), None))
        yield f"sequence B={B} T={T} I={I} H={H}", {"B": B, "I": I, "H": H, "T": T}, impls, make


def main() -> None:
    parser = parse_common_args(__doc__)
    parser.set_defaults(min_run_time=0.4)
    args = parser.parse_args()
    bench = Bench("quick", args.device, min_run_time=args.min_run_time, verbose=False)
    cases = list(cell_cases(args.device)) + list(sequence_cases(args.device))
    steps = [(case, pass_) for case in cases for pass_ in ("fwd", "fwd+bwd")]
    print(f"lstm_ext {lstm_ext.__version__}, torch {torch.__version__}, {args.device}, "
          f"{torch.get_num_threads()} threads, CPU kernels {lstm_ext.cpu_capability()}", flush=True)
    summary, started = [], time.time()
    for k, ((label, shape, impls, make), pass_) in enumerate(steps):
        x, state = make(grad=pass_ != "fwd")
        if pass_ == "fwd":
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
    print(f"{'':36s} {'pass':8s} {'lstm_ext':>11s} {'vs torch.nn':>12s} {'vs reference':>13s}")
    for label, pass_, times in summary:
        ours = times["lstm_ext"]
        print(f"{label:36s} {pass_:8s} {ours:9.0f} us {times['torch'] / ours:11.2f}x "
              f"{times['reference'] / ours:12.2f}x")
    bench.write_json()


if __name__ == "__main__":
    main()
