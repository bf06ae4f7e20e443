"""Where a sequence layer's time goes on a GPU: per time step, the wall time of
one call, the device time its kernels take, and the operators that take the
host's time (torch.profiler). When wall time per step is well above kernel
time per step, the layer is bound by the host (dispatch and launches), not the
GPU.

    python benchmarks/profile_step.py --device cuda
    python benchmarks/profile_step.py --device cuda --shapes 16,100,128,128 --cell gru
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import lstm_ext
from bench_sequence import CELLS


def wall_us(fn, device: str, repeats: int = 20) -> float:
    fn()
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cell", default="lstm", choices=sorted(CELLS))
    parser.add_argument("--shapes", default="16,100,128,128;64,100,512,512", help="B,T,I,H;...")
    parser.add_argument("--top", type=int, default=8, help="operators listed per implementation")
    args = parser.parse_args()
    print(f"lstm_ext {lstm_ext.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name(args.device)}")
    for spec in args.shapes.split(";"):
        B, T, I, H = map(int, spec.split(","))
        torch.manual_seed(0)
        ours_type, torch_type = CELLS[args.cell][:2]
        reference = torch_type(I, H, device=args.device)
        impls = {"lstm_ext": ours_type.from_torch(reference), "torch": reference}
        x = torch.randn(T, B, I, device=args.device)
        for name, module in impls.items():
            def forward():
                with torch.no_grad():
                    module(x)
            wall = wall_us(forward, args.device)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                forward()
                torch.cuda.synchronize(args.device)
            events = prof.key_averages()
            kernel_us = sum(getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
                            for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
            print(f"\n{args.cell} {name:8s} B={B} T={T} I={I} H={H} float32 no_grad: wall {wall:9.1f} us "
                  f"({wall / T:6.2f} us/step), kernels {kernel_us:9.1f} us ({kernel_us / T:6.2f} us/step), "
                  f"launches {sum(e.count for e in events if 'LaunchKernel' in e.key)}")
            print(events.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=48))


if __name__ == "__main__":
    main()
