"""A whole sequence: lstm_ext.LSTM against torch.nn.LSTM (oneDNN/MKL on the
CPU, cuDNN on the GPU), the reference cell looped in Python, lstm_ext.LSTMCell
looped in Python, and torch.compile of the reference loop: forward,
forward+backward, and (lstm_ext and torch.nn.LSTM only) forward+backward with
an input that needs no gradient, as a first layer's data, and forward+backward
of a PackedSequence of lengths T/2 to T. With --cell gru, the same for
lstm_ext.GRU against torch.nn.GRU and the reference GRU cell, plus
lstm_ext.LSTM at the same size (impl "lstm_ext_lstm": what the GRU saves).
With --cell lstmp, the LSTM with projections (proj_size = H/2) against
torch.nn.LSTM(proj_size=H/2), which on the CPU leaves oneDNN for ATen's
per-step loop, and lstm_ext.LSTM without projections (impl "lstm_ext_lstm").
With --cell lnlstm, lstm_ext.LayerNormLSTM against its Python reference
(lstm_ext.reference.LayerNormLSTM) and torch.compile of the reference's step,
lstm_ext.LSTM at the same size (what the normalization costs), and zoneout
(rates 0.1 for c, 0.05 for h, in training) on both against the same module
without it.

    python benchmarks/bench_sequence.py                 # CPU grid
    python benchmarks/bench_sequence.py --cell gru      # the GRU
    python benchmarks/bench_sequence.py --cell lstmp    # projections
    python benchmarks/bench_sequence.py --cell lnlstm   # LayerNorm LSTM, zoneout
    python benchmarks/bench_sequence.py --device cuda   # GPU grid
    python benchmarks/bench_sequence.py --step          # one step a call (T=1)
    python benchmarks/bench_sequence.py --small-batch   # B = 1-8 at T=100

--step times one step a call (T=1, B/I=H 1/256, 16/128, 64/512), as a
decoder or a streaming model calls a layer.

torch.compile unrolls the time loop, so at T=100 it compiles the reference
cell and loops over the compiled step instead (row field "compiled": "step").
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

import lstm_ext
from common import Bench, dtypes_of, fma_peak_gflops, impls_of, parse_common_args, rnn_flops, sgemm_gflops

GRID = [(100, 5, 4, 3), (16, 100, 128, 128), (32, 100, 256, 256), (64, 100, 512, 512)]  # (B, T, I, H)
STEP_GRID = [(1, 1, 256, 256), (16, 1, 128, 128), (64, 1, 512, 512)]  # one step a call
# Small batches at T=100 (--small-batch): T*B below 1024 rows, where the layer's products were MKL's.
SMALL_BATCH_GRID = [(B, 100, H, H) for H in (128, 256, 512) for B in (1, 4, 8)]
LAYERS = (1, 2)


class CellStack(nn.Module):
    """`layers` cells stepped over (T, B, I) in Python, as a user of a cell
    would: LSTM cells (state (h, c)) or, with gru, GRU cells (state h)."""

    def __init__(self, cells: List[nn.Module], gru: bool = False) -> None:
        super().__init__()
        self.cells = nn.ModuleList(cells)
        self.gru = gru

    def forward(self, x, step=None):
        step = step or (lambda cell, xt, state: cell(xt, state))
        layer_input = x
        for cell in self.cells:
            h = x.new_zeros(x.shape[1], cell.hidden_size)
            state = h if self.gru else (h, x.new_zeros(x.shape[1], cell.hidden_size))
            outputs = []
            for t in range(x.shape[0]):
                state = step(cell, layer_input[t], state)
                outputs.append(state if self.gru else state[0])
            layer_input = torch.stack(outputs)
        return layer_input


# Per cell: (lstm_ext's module, torch.nn's, the reference cell, lstm_ext's cell, gate count).
CELLS = {
    "lstm": (lstm_ext.LSTM, nn.LSTM, lstm_ext.reference.LSTMCell, lstm_ext.LSTMCell, 4),
    "gru": (lstm_ext.GRU, nn.GRU, lstm_ext.reference.GRUCell, lstm_ext.GRUCell, 3),
}


def bench_shape(bench: Bench, B: int, T: int, I: int, H: int, layers: int, dtype, device: str) -> None:
    torch.manual_seed(0)
    shape = {"B": B, "I": I, "H": H, "T": T}
    extra = {"layers": layers}
    fused_module, torch_module, reference_cell, fused_cell, gates = CELLS[bench.cell]
    gru = bench.cell == "gru"
    torch_lstm = torch_module(I, H, num_layers=layers, device=device, dtype=dtype)
    fused = fused_module.from_torch(torch_lstm)
    sizes = [I] + [H] * (layers - 1)
    ref_loop = CellStack([reference_cell(n, H) for n in sizes], gru).to(device=device, dtype=dtype)
    cell_loop = CellStack([fused_cell(n, H, device=device, dtype=dtype) for n in sizes], gru)
    torch._dynamo.reset()  # a fresh compile per shape: no recompiles, no recompile-limit warnings
    if T <= 10:
        compiled = torch.compile(ref_loop)
        compiled_call, scope = (lambda x: compiled(x)), "loop"
    else:
        compiled_cells = [torch.compile(cell) for cell in ref_loop.cells]
        lookup = {id(c): cc for c, cc in zip(ref_loop.cells, compiled_cells)}
        compiled_call, scope = (lambda x: ref_loop(x, step=lambda cell, xt, s: lookup[id(cell)](xt, s))), "step"
    impls = {
        "lstm_ext": lambda x: fused(x)[0],
        "torch": lambda x: torch_lstm(x)[0],
        "reference": lambda x: ref_loop(x),
        "lstm_ext_cell_loop": lambda x: cell_loop(x),
        "compile": compiled_call,
    }
    if gru:  # lstm_ext.LSTM at the same size: what the GRU's fewer gates save
        fused_lstm = lstm_ext.LSTM(I, H, num_layers=layers, device=device, dtype=dtype)
        impls["lstm_ext_lstm"] = lambda x: fused_lstm(x)[0]
    extras = {name: dict(extra) for name in impls}
    extras["compile"]["compiled"] = scope

    # Interleaved rounds, many for calls under a millisecond: this machine's
    # slow spells last seconds, and three rounds let one of them land on a
    # single implementation (at the course's size the same code gave 2.3 ms
    # and 3.5 ms for the reference loop in two runs; at T=100 a round can be
    # a single call, so five rather than three).
    rounds = 15 if T * B * H * max(I, H) < 2**20 else 5
    x = torch.randn(T, B, I, device=device, dtype=dtype)
    forward_flops = rnn_flops(B, T, I, H, layers, gates=gates)
    training_flops = rnn_flops(B, T, I, H, layers, backward=True, gates=gates)
    with torch.no_grad():
        bench.compare({k: (lambda f=f: f(x)) for k, f in impls.items()}, pass_="fwd", shape=shape, dtype=dtype,
                      extras=extras, rounds=rounds)
    add_gflops(bench, forward_flops)
    # Inference as a server runs it: inference_mode, lstm_ext against torch.nn.LSTM.
    with torch.inference_mode():
        bench.compare({k: (lambda f=impls[k]: f(x)) for k in ("lstm_ext", "torch")}, pass_="fwd, inference_mode",
                      shape=shape, dtype=dtype, extras=extras, rounds=rounds)
    add_gflops(bench, forward_flops)
    grad = torch.randn(T, B, H, device=device, dtype=dtype)
    # The usual training step of a first layer: the input is data, so no
    # gradient of it is needed (lstm_ext then skips that product).
    layer_impls = {k: impls[k] for k in ("lstm_ext", "torch")}
    bench.compare({k: (lambda f=f: torch.autograd.backward(f(x), grad)) for k, f in layer_impls.items()},
                  pass_="fwd+bwd, x without grad", shape=shape, dtype=dtype, extras=extras, rounds=rounds)
    x.requires_grad_()
    bench.compare({k: (lambda f=f: torch.autograd.backward(f(x), grad)) for k, f in impls.items()},
                  pass_="fwd+bwd", shape=shape, dtype=dtype, extras=extras, rounds=rounds)
    add_gflops(bench, training_flops)
    # A padded batch of varying lengths (T/2 to T, the longest T), packed in
    # each call (x needs its gradient): lstm_ext runs one operator call per
    # layer and direction over each step's own sequences, packed by
    # lstm_ext.pack_padded_sequence (torch's function's result, one row
    # gather); torch.nn.LSTM its packed-sequence path, packed by torch's
    # function; "lstm_ext_torch_pack" is lstm_ext packed by torch's function,
    # "lstm_ext_padded" lstm_ext on the padded batch (all B sequences T
    # steps): what the packed call saves.
    lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=torch.Generator().manual_seed(0))
    lengths[0] = T
    grad_data = torch.randn(int(lengths.sum()), H, device=device, dtype=dtype)

    def packed_step(module, pack=nn.utils.rnn.pack_padded_sequence):
        packed = pack(x, lengths, enforce_sorted=False)
        torch.autograd.backward(module(packed)[0].data, grad_data)

    extras["lstm_ext_padded"] = dict(extra)
    extras["lstm_ext_torch_pack"] = dict(extra)
    bench.compare({"lstm_ext": lambda: packed_step(fused, lstm_ext.pack_padded_sequence),
                   "torch": lambda: packed_step(torch_lstm),
                   "lstm_ext_torch_pack": lambda: packed_step(fused),
                   "lstm_ext_padded": lambda: torch.autograd.backward(fused(x)[0], grad)},
                  pass_="fwd+bwd, packed", shape=shape, dtype=dtype, extras=extras, rounds=rounds)
    # The same batch packed once beforehand, as a data loader's collate_fn
    # does: the packed call's own cost, without torch's pack_padded_sequence
    # and its backward (at the course's size those cost about our whole
    # padded forward+backward). Its data needs its gradient, as x above.
    once = nn.utils.rnn.pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)
    prepacked = nn.utils.rnn.PackedSequence(once.data.requires_grad_(), once.batch_sizes, once.sorted_indices,
                                            once.unsorted_indices)
    bench.compare({"lstm_ext": lambda: torch.autograd.backward(fused(prepacked)[0].data, grad_data),
                   "torch": lambda: torch.autograd.backward(torch_lstm(prepacked)[0].data, grad_data),
                   "lstm_ext_padded": lambda: torch.autograd.backward(fused(x)[0], grad)},
                  pass_="fwd+bwd, prepacked", shape=shape, dtype=dtype, extras=extras, rounds=rounds)


def bench_proj_shape(bench: Bench, B: int, T: int, I: int, H: int, layers: int, dtype, device: str) -> None:
    """lstm_ext.LSTM(proj_size=H/2) against torch.nn.LSTM(proj_size=H/2), and lstm_ext.LSTM without."""
    torch.manual_seed(0)
    P = max(1, H // 2)
    shape = {"B": B, "I": I, "H": H, "T": T}
    extras = {name: {"layers": layers, "proj_size": P} for name in ("lstm_ext", "torch", "lstm_ext_lstm")}
    torch_lstm = nn.LSTM(I, H, num_layers=layers, proj_size=P, device=device, dtype=dtype)
    fused = lstm_ext.LSTM.from_torch(torch_lstm)
    plain = lstm_ext.LSTM(I, H, num_layers=layers, device=device, dtype=dtype)
    extras["lstm_ext_lstm"]["proj_size"] = 0
    impls = {"lstm_ext": lambda x: fused(x)[0], "torch": lambda x: torch_lstm(x)[0],
             "lstm_ext_lstm": lambda x: plain(x)[0]}
    rounds = 15 if T * B * H * max(I, H) < 2**20 else 5
    x = torch.randn(T, B, I, device=device, dtype=dtype)
    forward_flops = rnn_flops(B, T, I, H, layers, proj=P)
    with torch.no_grad():
        bench.compare({k: (lambda f=f: f(x)) for k, f in impls.items()}, pass_="fwd", shape=shape, dtype=dtype,
                      extras=extras, rounds=rounds)
    add_gflops(bench, forward_flops)
    with torch.inference_mode():
        bench.compare({k: (lambda f=f: f(x)) for k, f in impls.items()}, pass_="fwd, inference_mode", shape=shape,
                      dtype=dtype, extras=extras, rounds=rounds)
    add_gflops(bench, forward_flops)
    x.requires_grad_()
    grads = {"lstm_ext": torch.randn(T, B, P, device=device, dtype=dtype)}
    grads["torch"] = grads["lstm_ext"]
    grads["lstm_ext_lstm"] = torch.randn(T, B, H, device=device, dtype=dtype)
    bench.compare({k: (lambda f=f, g=grads[k]: torch.autograd.backward(f(x), g)) for k, f in impls.items()},
                  pass_="fwd+bwd", shape=shape, dtype=dtype, extras=extras, rounds=rounds)
    add_gflops(bench, rnn_flops(B, T, I, H, layers, backward=True, proj=P))


def bench_ln_shape(bench: Bench, B: int, T: int, I: int, H: int, layers: int, dtype, device: str) -> None:
    """lstm_ext.LayerNormLSTM against its Python reference, torch.compile of the reference's step and
    lstm_ext.LSTM; zoneout against the same modules without it (all in training mode)."""
    from lstm_ext.reference import LayerNormLSTM as ReferenceLayerNormLSTM, layer_norm_lstm_step

    torch.manual_seed(0)
    shape = {"B": B, "I": I, "H": H, "T": T}
    config = dict(num_layers=layers, device=device, dtype=dtype)
    zoneout = dict(zoneout_cell=0.1, zoneout_hidden=0.05)
    fused = lstm_ext.LayerNormLSTM(I, H, **config)
    reference = ReferenceLayerNormLSTM(I, H, num_layers=layers).to(device=device, dtype=dtype)
    reference.load_state_dict(fused.state_dict())
    plain = lstm_ext.LSTM(I, H, **config)
    fused_zoneout = lstm_ext.LayerNormLSTM(I, H, **config, **zoneout)
    plain_zoneout = lstm_ext.LSTM(I, H, **config, **zoneout)
    torch._dynamo.reset()
    step = torch.compile(layer_norm_lstm_step)

    def compiled(x):  # the reference's loop over a compiled step (compiling the loop unrolls it)
        layer_input = x
        for cell in reference.cells:
            h = c = x.new_zeros(x.shape[1], H)
            outputs = []
            for t in range(x.shape[0]):
                h, c = step(layer_input[t], h, c, cell.weight_ih, cell.weight_hh, cell.bias, cell.ln_ih_weight,
                            cell.ln_hh_weight, cell.ln_c_weight, cell.ln_c_bias)
                outputs.append(h)
            layer_input = torch.stack(outputs)
        return layer_input

    impls = {"lstm_ext": lambda x: fused(x)[0], "reference": lambda x: reference(x)[0], "compile": compiled,
             "lstm_ext_lstm": lambda x: plain(x)[0], "lstm_ext_zoneout": lambda x: fused_zoneout(x)[0],
             "lstm_ext_lstm_zoneout": lambda x: plain_zoneout(x)[0]}
    extras = {name: {"layers": layers} for name in impls}
    extras["compile"]["compiled"] = "step"
    rounds = 15 if T * B * H * max(I, H) < 2**20 else 5
    x = torch.randn(T, B, I, device=device, dtype=dtype)
    with torch.no_grad():
        bench.compare({k: (lambda f=impls[k]: f(x)) for k in ("lstm_ext", "reference", "compile", "lstm_ext_lstm")},
                      pass_="fwd", shape=shape, dtype=dtype, extras=extras, rounds=rounds)
    add_gflops(bench, rnn_flops(B, T, I, H, layers))
    x.requires_grad_()
    grad = torch.randn(T, B, H, device=device, dtype=dtype)
    bench.compare({k: (lambda f=f: torch.autograd.backward(f(x), grad)) for k, f in impls.items()},
                  pass_="fwd+bwd", shape=shape, dtype=dtype, extras=extras, rounds=rounds)
    add_gflops(bench, rnn_flops(B, T, I, H, layers, backward=True))


def add_gflops(bench: Bench, flops: float) -> None:
    """GFLOP/s of the rows of the latest compare, and their fractions of the run's sgemm floor and of
    the CPU's FMA peak."""
    for row in bench.last_rows:
        if row["impl"] in ("lstm_ext_lstm", "lstm_ext_zoneout", "lstm_ext_lstm_zoneout"):  # other work
            continue
        row["gflops"] = round(flops / (row["median_us"] * 1e-6) / 1e9, 1)
        if bench.machine_extra.get("sgemm_gflops"):
            row["sgemm_fraction"] = round(row["gflops"] / bench.machine_extra["sgemm_gflops"], 3)
        if bench.machine_extra.get("fma_peak_gflops"):
            row["peak_fraction"] = round(row["gflops"] / bench.machine_extra["fma_peak_gflops"], 3)


PEAK_MEMORY = r"""
import sys, torch
import lstm_ext

def status_kib(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key))

impl, B, T, I, H, dtype, cell = sys.argv[1], *map(int, sys.argv[2:6]), getattr(torch, sys.argv[6]), sys.argv[7]
torch.manual_seed(0)
modules = {"lstm": (lstm_ext.LSTM, torch.nn.LSTM), "gru": (lstm_ext.GRU, torch.nn.GRU)}[cell]
module = modules[0 if impl == "lstm_ext" else 1](I, H, dtype=dtype)
x = torch.randn(T, B, I, dtype=dtype)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current resident size
before = status_kib("VmRSS")
with torch.inference_mode():
    module(x)
print((status_kib("VmHWM") - before) / 1024)
"""


def peak_memory(bench: Bench, B: int, T: int, I: int, H: int, dtype) -> None:
    """Peak resident memory that one inference forward adds, in a fresh process (CPU, one layer; Linux)."""
    import subprocess
    import sys

    for impl in ("lstm_ext", "torch"):
        out = subprocess.run([sys.executable, "-c", PEAK_MEMORY, impl, str(B), str(T), str(I), str(H),
                              str(dtype).replace("torch.", ""), bench.cell], capture_output=True, text=True,
                             check=True)
        add_peak_memory_row(bench, impl, B, T, I, H, dtype, float(out.stdout))


def add_peak_memory_row(bench: Bench, impl: str, B: int, T: int, I: int, H: int, dtype, mib: float) -> None:
    bench.rows.append({"bench": bench.bench, "cell": bench.cell, "impl": impl,
                       "pass": "fwd, inference_mode, peak memory",
                       "B": B, "I": I, "H": H, "T": T, "dtype": str(dtype).replace("torch.", ""),
                       "device": bench.device, "layers": 1, "peak_mib": round(mib, 1)})


def cuda_peak_memory(bench: Bench, B: int, T: int, I: int, H: int, dtype) -> None:
    """Peak device memory that one inference forward adds (CUDA, one layer): lstm_ext against torch.nn (cuDNN)."""
    x = torch.randn(T, B, I, device=bench.device, dtype=dtype)
    for impl, module_type in zip(("lstm_ext", "torch"), CELLS[bench.cell][:2]):
        module = module_type(I, H, device=bench.device, dtype=dtype)
        with torch.inference_mode():
            module(x)  # warm up: cuBLAS's and cuDNN's workspaces are allocated once
            torch.cuda.synchronize(bench.device)
            torch.cuda.reset_peak_memory_stats(bench.device)
            before = torch.cuda.memory_allocated(bench.device)
            module(x)
            torch.cuda.synchronize(bench.device)
        add_peak_memory_row(bench, impl, B, T, I, H, dtype,
                            (torch.cuda.max_memory_allocated(bench.device) - before) / 2**20)


def ratios(cell: str) -> list:
    """(other, lstm_ext, caption): other's time / lstm_ext's."""
    name = "LSTM" if cell == "lstm" else "GRU"
    if cell == "lnlstm":
        return [("reference", "lstm_ext", "vs reference loop"), ("compile", "lstm_ext", "vs compile(reference step)"),
                ("lstm_ext", "lstm_ext_lstm", "time / lstm_ext.LSTM's"),
                ("lstm_ext_zoneout", "lstm_ext", "zoneout's cost (time with / without)"),
                ("lstm_ext_lstm_zoneout", "lstm_ext_lstm", "LSTM zoneout's cost (time with / without)")]
    if cell == "lstmp":
        return [("torch", "lstm_ext", "vs torch.nn.LSTM(proj_size=H/2)"),
                ("lstm_ext", "lstm_ext_lstm", "time / lstm_ext.LSTM's without projections")]
    rows = [("torch", "lstm_ext", f"vs torch.nn.{name}"), ("reference", "lstm_ext", "vs reference loop"),
            ("lstm_ext_cell_loop", "lstm_ext", f"vs {name}Cell loop"), ("compile", "lstm_ext", "vs compile(reference)")]
    if cell == "gru":
        rows.append(("lstm_ext", "lstm_ext_lstm", "GRU time / lstm_ext.LSTM's"))
    rows.append(("lstm_ext", "lstm_ext_padded", "packed time / padded (packed rows)"))
    rows.append(("lstm_ext_torch_pack", "lstm_ext_padded", "packed by torch's pack_padded_sequence / padded"))
    return rows


def main() -> None:
    parser = parse_common_args(__doc__)
    parser.add_argument("--step", action="store_true", help="one step a call (T=1) instead of the sequence grid")
    parser.add_argument("--small-batch", action="store_true",
                        help="B = 1, 4, 8 at T=100, I=H = 128, 256, 512 instead of the sequence grid")
    args = parser.parse_args()
    bench = Bench("sequence", args.device, min_run_time=args.min_run_time, cell=args.cell, only=impls_of(args))
    grid = STEP_GRID if args.step else SMALL_BATCH_GRID if args.small_batch else GRID[:2] if args.quick else GRID
    print(f"lstm_ext {lstm_ext.__version__}, torch {torch.__version__}, device {args.device}, "
          f"threads {torch.get_num_threads()}, CPU kernels {lstm_ext.cpu_capability()}")
    bench.machine_extra["sgemm_gflops"] = round(sgemm_gflops(args.device), 1)
    bench.machine_extra["sgemm_shape"] = "torch.mm float32 4096x1024 @ 1024x4096"
    print(f"sgemm floor: {bench.machine_extra['sgemm_gflops']} GFLOP/s ({bench.machine_extra['sgemm_shape']})")
    if args.device == "cpu":
        peak = fma_peak_gflops()
        if peak is not None:
            bench.machine_extra["fma_peak_gflops"] = peak
            print(f"FMA peak (the ceiling): {peak} GFLOP/s (benchmarks/fma_peak.c)")
    for dtype in dtypes_of(args):
        for layers in ((1,) if args.cell == "lnlstm" else LAYERS):
            for B, T, I, H in grid:
                run = {"lstmp": bench_proj_shape, "lnlstm": bench_ln_shape}.get(args.cell, bench_shape)
                run(bench, B, T, I, H, layers, dtype, args.device)
        if args.cell not in ("lstmp", "lnlstm"):
            for B, T, I, H in grid:
                (cuda_peak_memory if args.device.startswith("cuda") else peak_memory)(bench, B, T, I, H, dtype)
    bench.report(ratios(args.cell))
    print(f"\nGFLOP/s (lstm_ext / torch.nn.{args.cell.upper()[:4]}) and their fractions of the sgemm floor / the FMA peak; peak memory "
          "of one inference forward (MiB added: resident memory of a fresh process on the CPU, allocated device "
          "memory on CUDA)")
    for row in bench.rows:
        if row["impl"] in ("lstm_ext", "torch") and ("gflops" in row or "peak_mib" in row):
            value = f"{row['gflops']} GFLOP/s ({row.get('sgemm_fraction')} / {row.get('peak_fraction', '-')})" \
                if "gflops" in row else \
                f"{row['peak_mib']} MiB"
            print(f"  {row['pass']:34s} B={row['B']} T={row['T']} I={row['I']} H={row['H']} "
                  f"L={row.get('layers')} {row['dtype']:9s} {row['impl']:9s} {value}")


if __name__ == "__main__":
    main()
