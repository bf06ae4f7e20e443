"""Timing and reporting shared by the benchmarks.

Every benchmark times its implementations side by side in one run with
torch.utils.benchmark (this machine is shared and noisy: compare ratios
within a run, not absolute times across runs), prints a Compare table and a
ratio table, and merges its rows into benchmarks/results/<machine>.json:

    {"machine": {device, cpu, threads, torch, lstm_ext, cpu_kernels},
     "results": [{"bench", "cell", "impl", "pass", "B", "I", "H", "T", "dtype",
                  "device", "median_us", ...}]}

"cell" is "lstm", "gru" or "lstmp" (the LSTM with projections; rows without
it are the LSTM's).
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.utils.benchmark as benchmark

import lstm_ext

# The one ratio convention of every table, plot and document.
SPEEDUP = "Speed-up: the other implementation's median time / lstm_ext's (above 1: lstm_ext is faster)"

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    info = {
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lstm_ext": lstm_ext.__version__,
        "cpu_kernels": lstm_ext.cpu_capability(),
    }
    return info


def machine_name(device: str) -> str:
    """File name for a machine's results: the GPU's name, or the CPU's and its thread count (and its vector
    capability below AVX-512: hosts of one model name differ, and their numbers do not compare)."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
    else:
        capability = torch.backends.cpu.get_cpu_capability()
        vectors = "" if capability.startswith("AVX512") else f" {capability}"
        name = f"cpu {cpu_model()}{vectors} {torch.get_num_threads()}t"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def row_identity(row: dict) -> tuple:
    """What a result row measured: everything but its numbers."""
    numbers = {"median_us", "min_us", "gflops", "sgemm_fraction", "peak_fraction", "peak_mib", "gbps"}
    return tuple(sorted((k, str(v)) for k, v in row.items() if k not in numbers))


class Bench:
    """Collects measurements of one benchmark script and reports them."""

    def __init__(self, bench: str, device: str, min_run_time: float = 0.5, verbose: bool = True,
                 cell: str = "lstm", only: Optional[List[str]] = None) -> None:
        self.bench = bench
        # Implementations to time (None: all). Floors are always timed: they are cheap
        # and the ratio table's floor columns read them.
        self.only = set(only) if only else None
        self.cell = cell
        self.verbose = verbose  # a line per measurement on stderr
        self.device = device
        self.min_run_time = min_run_time
        self.measurements: List[benchmark.Measurement] = []
        self.rows: List[dict] = []
        self.last_rows: List[dict] = []  # the rows that the latest compare() added
        self.machine_extra: dict = {}  # measured once per run (the sgemm floor), merged into "machine"
        self.started = time.time()

    def compare(self, fns: Dict[str, Callable[[], object]], *, pass_: str, shape: Dict[str, int],
                dtype: torch.dtype, extras: Optional[Dict[str, dict]] = None, rounds: int = 5) -> Dict[str, float]:
        """Median microseconds of each fn, timed round-robin in `rounds` rounds
        so that the machine's drifts hit every implementation alike."""
        extras = extras or {}
        if self.only is not None:
            fns = {k: f for k, f in fns.items() if k.split(":")[0] in self.only or k.startswith("floor:")}
        self.last_rows = []
        sub_label = " ".join(f"{k}={v}" for k, v in shape.items() if v is not None) + f" {str(dtype)[6:]}"
        timers, parts = {}, {}
        for name, fn in fns.items():
            fn()  # warm up (and compile, for torch.compile)
            synchronize(self.device)
            extra = extras.get(name)
            desc = name if not extra else f"{name.split(':')[0]} ({', '.join(str(v) for v in extra.values())})"
            timers[name] = benchmark.Timer(
                stmt="fn()", globals={"fn": fn}, label=f"{self.bench} {pass_} (us)", sub_label=sub_label,
                description=desc, num_threads=torch.get_num_threads())
            parts[name] = []
        for _ in range(rounds):
            for name, timer in timers.items():
                parts[name].append(timer.blocked_autorange(min_run_time=self.min_run_time / rounds))
        medians = {}
        for name, ms in parts.items():
            m = benchmark.Measurement.merge(ms)[0]
            self.measurements.append(m)
            medians[name] = median_us = m.median * 1e6
            row = {"bench": self.bench, "cell": self.cell, "impl": name.split(":")[0], "pass": pass_}
            row.update({k: shape.get(k) for k in ("B", "I", "H", "T")})
            row.update({"dtype": str(dtype).replace("torch.", ""), "device": self.device,
                        "median_us": round(median_us, 3), "min_us": round(min(m.times) * 1e6, 3)})
            row.update(extras.get(name) or {})
            self.rows.append(row)
            self.last_rows.append(row)
            if self.verbose:
                print(f"  [{time.time() - self.started:6.0f}s] {pass_:7s} {sub_label:32s} {m.task_spec.description:34s} "
                      f"{median_us:12.1f} us", file=sys.stderr, flush=True)
        return medians

    def report(self, ratios: List[tuple]) -> str:
        """Prints the Compare table and the ratio table; writes the JSON. Returns its path."""
        compare = benchmark.Compare(self.measurements)
        compare.trim_significant_figures()
        compare.print()
        self.print_ratios(ratios)
        return self.write_json()

    def print_ratios(self, ratios: List[tuple]) -> None:
        """ratios: (other impl, lstm_ext impl, caption): the speed-up, other's time / lstm_ext's,
        above 1 when lstm_ext is faster (for a floor: the fraction of lstm_ext's time it takes)."""
        def key(r):
            return (r["pass"], r["B"], r["I"], r["H"], r["T"], r["dtype"], r.get("layers"))

        by_case: Dict[tuple, Dict[str, float]] = {}
        for r in self.rows:
            if "median_us" not in r:  # a memory row
                continue
            name = r["impl"] if "floor" not in r else f"floor:{r['floor']}"
            by_case.setdefault(key(r), {})[name] = r["median_us"]
        header = ["pass", "shape"] + [caption for _, _, caption in ratios]
        lines = [header]
        for k, times in by_case.items():
            shape = " ".join(f"{n}={v}" for n, v in zip("BIHT", k[1:5]) if v is not None)
            if k[6] is not None:
                shape += f" L={k[6]}"
            cells = []
            for num, den, _ in ratios:
                cells.append(f"{times[num] / times[den]:.2f}x" if num in times and den in times else "-")
            lines.append([k[0], f"{shape} {k[5]}"] + cells)
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        print(f"\n{SPEEDUP}")
        for line in lines:
            print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))

    def write_json(self) -> str:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        path = os.path.join(RESULTS_DIR, machine_name(self.device) + ".json")
        old_rows, old_machine = [], {}
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            # This run replaces the rows it measured again (the same benchmark,
            # cell, pass, shape, dtype and implementation) and keeps the rest:
            # a --dtype bfloat16 or --impls run leaves the float32 rows, or the
            # other implementations', as they were.
            measured = {row_identity(r) for r in self.rows}
            old_rows = [r for r in old.get("results", []) if row_identity(r) not in measured]
            old_machine = old.get("machine", {})  # keeps what another benchmark measured (the sgemm floor)
        machine = {**old_machine, **machine_info(self.device), **self.machine_extra}
        with open(path, "w") as f:
            json.dump({"machine": machine, "results": old_rows + self.rows}, f, indent=1)
            f.write("\n")
        print(f"\nwrote {path}")
        return path


def parse_common_args(description: str):
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="smallest shapes only (a smoke run)")
    parser.add_argument("--cell", default="lstm", choices=["lstm", "gru", "lstmp", "lnlstm"],
                        help="the recurrent cell to time (lstmp: the LSTM with projections, proj_size = H/2; "
                             "lnlstm: the LayerNorm LSTM and zoneout)")
    parser.add_argument("--dtype", default=None,
                        help="comma-separated: float32, bfloat16, float16 (default: float32; on CUDA also bfloat16)")
    parser.add_argument("--impls", default=None,
                        help="comma-separated implementations to time (default: all), e.g. lstm_ext,torch: "
                             "skips the reference loops and torch.compile (minutes of compiling on a GPU)")
    return parser


def impls_of(args) -> Optional[List[str]]:
    return [name.strip() for name in args.impls.split(",")] if args.impls else None


def dtypes_of(args) -> List[torch.dtype]:
    if args.dtype:
        return [getattr(torch, name.strip()) for name in args.dtype.split(",")]
    return [torch.float32, torch.bfloat16] if args.device.startswith("cuda") else [torch.float32]


def rnn_flops(B: int, T: int, I: int, H: int, layers: int = 1, directions: int = 1, backward: bool = False,
              gates: int = 4, proj: int = 0) -> float:
    """2*gates*B*H*(I+H) per step and layer forward (the gate products: 8*B*H*(I+H) for the
    LSTM's 4 gates, 6*B*H*(I+H) for the GRU's 3), 3x that with the backward. With
    projections (proj = P) h has P features: 8*B*H*(I+P) plus the projection's 2*B*H*P."""
    width = proj or H
    forward = sum((2 * gates * B * H * ((I if layer == 0 else directions * width) + width) + 2 * B * H * proj)
                  * T * directions for layer in range(layers))
    return forward * (3 if backward else 1)


def fma_peak_gflops() -> Optional[float]:
    """This CPU's float32 FMA ceiling in GFLOP/s (benchmarks/fma_peak.c, built
    with the system's C compiler), or None where it cannot run (no compiler,
    no AVX2/FMA). The sgemm floor is what a product reaches; this is what none
    can pass (MKL's sgemm runs at ~30% of it on AMD CPUs)."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    if compiler is None or " avx2" not in flags or " fma" not in flags:
        return None
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fma_peak.c")
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "fma_peak")
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
        try:
            # AVX-512 vectors where the CPU has them: full-width units (Zen 5,
            # Intel server cores) do twice AVX2's flops per cycle.
            wide = ["-mavx512f"] if " avx512f" in flags else []
            subprocess.run([compiler, "-O2", "-mavx2", "-mfma", *wide, "-fopenmp", source, "-o", binary],
                           check=True, capture_output=True)
            return float(subprocess.run([binary], check=True, capture_output=True, text=True, env=env).stdout)
        except (subprocess.CalledProcessError, OSError, ValueError):
            return None


def sgemm_gflops(device: str, m: int = 4096, k: int = 1024, n: int = 4096) -> float:
    """GFLOP/s of one large float32 torch.mm (the floor the tables compare with)."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    c = torch.empty(m, n, device=device)
    timer = benchmark.Timer("torch.mm(a, b, out=c)", globals={"torch": torch, "a": a, "b": b, "c": c})
    return 2 * m * n * k / timer.blocked_autorange(min_run_time=1.0).median / 1e9
