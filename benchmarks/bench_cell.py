"""One LSTM cell step: lstm_ext.LSTMCell against the reference cell,
torch.nn.LSTMCell, torch.compile of the reference, and the floors that the
fused cell cannot go below (its matrix products; at small sizes the cost of
starting a backward pass and of a Python autograd.Function). With --cell gru:
lstm_ext.GRUCell against torch.nn.GRUCell, the reference GRU cell and
torch.compile of it.

    python benchmarks/bench_cell.py                 # CPU grid
    python benchmarks/bench_cell.py --cell gru      # the GRU cell
    python benchmarks/bench_cell.py --device cuda   # GPU grid, float32 and bfloat16
"""
from __future__ import annotations

import torch

import lstm_ext
from common import Bench, dtypes_of, impls_of, parse_common_args

CPU_GRID = [(100, 4, 3), (16, 32, 128), (64, 256, 256), (64, 512, 512), (16, 1024, 1024)]
GPU_GRID = [(100, 4, 3)] + [(B, H, H) for B in (16, 64, 256) for H in (128, 512, 1024)]


class _Identity(torch.autograd.Function):
    """The cheapest Python autograd.Function: what any such wrapper costs."""

    @staticmethod
    def forward(ctx, h, c):
        return h.view_as(h), c.view_as(c)

    @staticmethod
    def backward(ctx, grad_h, grad_c):
        return grad_h, grad_c


def bench_shape(bench: Bench, B: int, I: int, H: int, dtype: torch.dtype, device: str) -> None:
    torch.manual_seed(0)
    shape = {"B": B, "I": I, "H": H, "T": None}
    ref = lstm_ext.reference.LSTMCell(I, H).to(device=device, dtype=dtype)
    fused = lstm_ext.LSTMCell(I, H, device=device, dtype=dtype)
    fused.load_state_dict(ref.state_dict())
    torch_cell = fused.to_torch()
    torch._dynamo.reset()  # a fresh compile per shape: no recompiles, no recompile-limit warnings
    compiled = torch.compile(ref)

    def state(requires_grad):
        return [torch.randn(B, n, device=device, dtype=dtype, requires_grad=requires_grad) for n in (I, H, H)]

    impls = {
        "lstm_ext": lambda x, h, c: fused(x, (h, c)),
        "lstm_ext_pyfunc": lambda x, h, c: lstm_ext.LSTMCellFunction.apply(x, h, c, fused.weight, fused.bias)[:2],
        "reference": lambda x, h, c: ref(x, (h, c)),
        "torch": lambda x, h, c: torch_cell(x, (h, c)),
        "compile": lambda x, h, c: compiled(x, (h, c)),
    }
    weight_t = fused.weight.detach().t()
    weight = fused.weight.detach()
    floors = {f"floor:{k}": {"floor": k} for k in ("matmul", "backward_start", "python_autograd_function")}

    # Forward, inference (no_grad).
    x, h, c = state(False)
    xh = torch.cat([x, h], 1)
    with torch.no_grad():
        fns = {impl: (lambda f=f: f(x, h, c)) for impl, f in impls.items()}
        fns["floor:matmul"] = lambda: torch.mm(xh, weight_t)
        bench.compare(fns, pass_="fwd", shape=shape, dtype=dtype, extras=floors)

    # Forward and backward, everything requiring grad as in training.
    x, h, c = state(True)
    grads = [torch.randn(B, H, device=device, dtype=dtype) for _ in range(2)]
    fns = {impl: (lambda f=f: torch.autograd.backward(f(x, h, c), grads)) for impl, f in impls.items()}
    xh = torch.cat([x, h], 1).detach()
    gates_grad = torch.randn(B, 4 * H, device=device, dtype=dtype)

    # Into preallocated outputs: a fresh 32 MiB result would time page faults, not the product.
    outs = [torch.empty(B, 4 * H, device=device, dtype=dtype), torch.empty(B, I + H, device=device, dtype=dtype),
            torch.empty(4 * H, I + H, device=device, dtype=dtype)]

    def matmuls():
        torch.mm(xh, weight_t, out=outs[0])
        torch.mm(gates_grad, weight, out=outs[1])
        torch.mm(gates_grad.t(), xh, out=outs[2])
    h0, c0 = [t.detach().requires_grad_() for t in (h, c)]
    fns["floor:matmul"] = matmuls
    fns["floor:backward_start"] = lambda: torch.autograd.backward([h0, c0], grads)
    fns["floor:python_autograd_function"] = lambda: torch.autograd.backward(_Identity.apply(h0, c0), grads)
    bench.compare(fns, pass_="fwd+bwd", shape=shape, dtype=dtype, extras=floors)


def bench_gru_shape(bench: Bench, B: int, I: int, H: int, dtype: torch.dtype, device: str) -> None:
    """lstm_ext.GRUCell against torch.nn.GRUCell, the reference GRU cell and torch.compile of it."""
    torch.manual_seed(0)
    shape = {"B": B, "I": I, "H": H, "T": None}
    ref = lstm_ext.reference.GRUCell(I, H).to(device=device, dtype=dtype)
    torch_cell = torch.nn.GRUCell(I, H, device=device, dtype=dtype)
    torch_cell.load_state_dict(ref.torch_parameters())
    fused = lstm_ext.GRUCell.from_torch(torch_cell)
    torch._dynamo.reset()
    compiled = torch.compile(ref)
    impls = {"lstm_ext": fused, "torch": torch_cell, "reference": ref, "compile": compiled}

    def state(requires_grad):
        return [torch.randn(B, n, device=device, dtype=dtype, requires_grad=requires_grad) for n in (I, H)]

    x, h = state(False)
    with torch.no_grad():
        bench.compare({k: (lambda f=f: f(x, h)) for k, f in impls.items()}, pass_="fwd", shape=shape, dtype=dtype)
    x, h = state(True)
    grad = torch.randn(B, H, device=device, dtype=dtype)
    bench.compare({k: (lambda f=f: torch.autograd.backward(f(x, h), grad)) for k, f in impls.items()},
                  pass_="fwd+bwd", shape=shape, dtype=dtype)


def pointwise_bandwidth(bench: Bench, B: int, H: int, dtype: torch.dtype, device: str) -> None:
    """Achieved GB/s of the CUDA pointwise kernels, their device time from the profiler.

    Bytes moved per element of the [B, H] state: forward reads 4 gates and
    c_prev and writes 4 gates, c and h (11); backward reads 4 gates, c_prev, c,
    dh, dc and writes 4 gate gradients and dc_prev (13).
    """
    from torch.profiler import ProfilerActivity, profile

    cell = lstm_ext.LSTMCell(H, H, device=device, dtype=dtype)
    x, h, c = [torch.randn(B, H, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
    grads = [torch.randn(B, H, device=device, dtype=dtype) for _ in range(2)]
    step = lambda: torch.autograd.backward(cell(x, (h, c)), grads)  # noqa: E731
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    runs = 50
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            step()
        torch.cuda.synchronize()
    element = torch.empty((), dtype=dtype).element_size()
    for kernel, per_element, pass_ in (("forward_kernel", 11, "fwd-pointwise"), ("backward_kernel", 13, "bwd-pointwise")):
        events = [e for e in prof.key_averages() if kernel in e.key and "lstm_ext" in e.key]
        if not events:
            print(f"pointwise bandwidth: no {kernel} in the profile")
            continue
        total = sum(getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0) for e in events)
        us = total / sum(e.count for e in events)
        gbps = per_element * B * H * element / (us * 1e-6) / 1e9
        bench.rows.append({"bench": "cell", "cell": "lstm", "impl": "lstm_ext", "pass": pass_, "B": B, "I": H, "H": H, "T": None,
                           "dtype": str(dtype).replace("torch.", ""), "device": device, "median_us": round(us, 3),
                           "gbps": round(gbps, 1)})
        print(f"{pass_:14s} B={B} H={H} {str(dtype)[6:]:9s} {us:8.2f} us  {gbps:7.1f} GB/s")


GRU_RATIOS = [("reference", "lstm_ext", "vs reference"), ("torch", "lstm_ext", "vs torch.nn.GRUCell"),
              ("compile", "lstm_ext", "vs compile(reference)")]

RATIOS = [  # (other, lstm_ext, caption): other's time / lstm_ext's; a floor's is the share of lstm_ext's time
    ("reference", "lstm_ext", "vs reference"),
    ("torch", "lstm_ext", "vs torch.nn.LSTMCell"),
    ("compile", "lstm_ext", "vs compile(reference)"),
    ("lstm_ext_pyfunc", "lstm_ext", "vs Python autograd.Function"),
    ("floor:matmul", "lstm_ext", "floor: its matmuls"),
    ("floor:backward_start", "lstm_ext", "floor: backward start"),
]


def main() -> None:
    parser = parse_common_args(__doc__)
    args = parser.parse_args()
    device = args.device
    bench = Bench("cell", device, min_run_time=args.min_run_time, cell=args.cell, only=impls_of(args))
    grid, dtypes = (GPU_GRID if device.startswith("cuda") else CPU_GRID), dtypes_of(args)
    if args.quick:
        grid = grid[:2]
    print(f"lstm_ext {lstm_ext.__version__}, torch {torch.__version__}, device {device}, "
          f"threads {torch.get_num_threads()}, CPU kernels {lstm_ext.cpu_capability()}")
    shape_bench = bench_gru_shape if args.cell == "gru" else bench_shape
    for dtype in dtypes:
        for B, I, H in grid:
            shape_bench(bench, B, I, H, dtype, device)
    bench.report(GRU_RATIOS if args.cell == "gru" else RATIOS)
    if device.startswith("cuda") and args.cell == "lstm":
        print("\nPointwise kernels alone (device time from the profiler):")
        for dtype in dtypes:
            pointwise_bandwidth(bench, 256, 1024, dtype, device)
        bench.write_json()


if __name__ == "__main__":
    main()
