"""Times one time step's recurrent product on CUDA, the ways the layers could
form it, at the T=100 grid's sizes: which layout and library cuBLAS runs
fastest for a [B, H] x [H, 4H] product. On an H200 in float32 the transposed
view of W_hh took 24 us of device time at B=16, H=128 and the row-major copy
4.7 us, which is why the CUDA layers copy W_hh^T once per call.

    python benchmarks/cuda_step_products.py            # prints a table, writes JSON

Each variant runs `--calls` times back to back between two CUDA events (the
launches overlap the previous kernels, so a kernel shorter than a launch
shows the launch's time) and, separately, under torch.profiler for the
device time of its kernels; times are per call, min over `--repeats`.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

SIZES = [(16, 128), (32, 256), (64, 512)]


def variants(B: int, H: int, device: str):
    """name -> (dtype, settings, function of nothing): the step's product in each layout."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        weight = torch.randn(4 * H, H, device=device, dtype=dtype)  # weight_hh, as the module holds it
        weight_t = weight.t().contiguous()  # [H, 4H]
        h = torch.randn(B, H, device=device, dtype=dtype)
        gates = torch.randn(B, 4 * H, device=device, dtype=dtype)
        result = torch.empty(B, 4 * H, device=device, dtype=dtype)
        tag = str(dtype).replace("torch.", "")
        out[f"{tag} mm(h, W.t()) (a transposed view)"] = (
            dtype, {}, lambda h=h, w=weight, r=result: torch.mm(h, w.t(), out=r))
        out[f"{tag} mm(h, W^T contiguous)"] = (dtype, {}, lambda h=h, w=weight_t, r=result: torch.mm(h, w, out=r))
        out[f"{tag} addmm_(gates, h, W.t())"] = (dtype, {}, lambda g=gates, h=h, w=weight: g.addmm_(h, w.t()))
        out[f"{tag} mm(W, h.t()) (transposed result)"] = (
            dtype, {}, lambda h=h, w=weight: torch.mm(w, h.t()))
        if dtype == torch.float32:
            out[f"{tag} mm(h, W.t()), TF32 allowed"] = (dtype, {"tf32": True},
                                                        lambda h=h, w=weight, r=result: torch.mm(h, w.t(), out=r))
        out[f"{tag} mm(h, W.t()), cuBLASLt"] = (dtype, {"blas": "cublaslt"},
                                                lambda h=h, w=weight, r=result: torch.mm(h, w.t(), out=r))
    return out


class Settings:
    def __init__(self, settings: dict):
        self.settings = settings

    def __enter__(self):
        self.tf32 = torch.backends.cuda.matmul.allow_tf32
        self.blas = torch.backends.cuda.preferred_blas_library()
        torch.backends.cuda.matmul.allow_tf32 = self.settings.get("tf32", False)
        if "blas" in self.settings:
            torch.backends.cuda.preferred_blas_library(self.settings["blas"])

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cuda.preferred_blas_library(self.blas)


def wall_us(fn, calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / calls)
    return best


def device_us(fn, calls: int) -> tuple[float, str]:
    """Device time per call of the kernels fn launches, and their names."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time for e in kernels)
    names = sorted({e.name[:60] for e in kernels})
    return total / calls, "; ".join(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<gpu>-step-products.json)")
    args = parser.parse_args()
    device = "cuda"
    name = torch.cuda.get_device_name().lower().replace(" ", "-")
    rows = []
    print(f"{'B':>4} {'H':>5}  {'variant':<44} {'wall us':>8} {'device us':>9}  kernels")
    for B, H in SIZES:
        for label, (dtype, settings, fn) in variants(B, H, device).items():
            with Settings(settings):
                for _ in range(20):
                    fn()
                torch.cuda.synchronize()
                wall = wall_us(fn, args.calls, args.repeats)
                dev, kernels = device_us(fn, 50)
            rows.append({"B": B, "H": H, "variant": label, "wall_us": round(wall, 2), "device_us": round(dev, 2),
                         "kernels": kernels})
            print(f"{B:>4} {H:>5}  {label:<44} {wall:8.2f} {dev:9.2f}  {kernels}")
    path = args.out or os.path.join(os.path.dirname(__file__), "results", f"{name}-step-products.json")
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
