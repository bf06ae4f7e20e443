"""Markdown tables from benchmarks/results/<machine>.json, for docs/performance.md.

    python benchmarks/report.py benchmarks/results/<machine>.json

Each row: the median time of lstm_ext and, for every other implementation,
the speed-up, its time / lstm_ext's (above 1: lstm_ext is faster); for a
floor (what lstm_ext cannot avoid) the same ratio is the share of
lstm_ext's time that the floor takes.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def name_of(row: dict) -> str:
    if row["impl"] == "floor":
        return f"floor:{row['floor']}"
    return row["impl"]


def tables(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    machine = data["machine"]
    out = [f"Machine: {machine['device']} / {machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}, "
           f"CPU kernels {machine.get('cpu_kernels')}. Times are medians of interleaved rounds in one run."]
    groups = defaultdict(lambda: defaultdict(dict))
    for row in data["results"]:
        if "gbps" in row or "median_us" not in row:
            continue
        cell = row.get("cell", "lstm")
        key = (row["bench"] if cell == "lstm" else f"{row['bench']} ({cell.upper()})", row["pass"])
        shape = (row["B"], row["T"], row["I"], row["H"], row.get("layers"), row["dtype"])
        groups[key][shape][name_of(row)] = row["median_us"]
    for (bench, pass_), shapes in groups.items():
        impls = []
        for times in shapes.values():
            impls += [n for n in times if n not in impls and n != "lstm_ext"]
        out.append(f"\n**{bench}, {pass_}** (lstm_ext's median time; other columns: speed-up, their time / "
                   f"lstm_ext's, above 1: lstm_ext is faster)\n")
        out.append("| shape | lstm_ext | " + " | ".join(impls) + " |")
        out.append("|---" * (len(impls) + 2) + "|")
        for (B, T, I, H, layers, dtype), times in shapes.items():
            label = f"B={B}" + (f" T={T}" if T else "") + f" I={I} H={H}" + (f" L={layers}" if layers else "")
            label += f" {dtype}"
            base = times.get("lstm_ext")
            cells = [f"{times[n] / base:.2f}" if base and n in times else "-" for n in impls]
            out.append(f"| {label} | {base:.0f} µs | " + " | ".join(cells) + " |")
    rates = [r for r in data["results"] if "gflops" in r]
    if rates:
        floor = machine.get("sgemm_gflops")
        peak = machine.get("fma_peak_gflops")
        ceiling = f"; then of this CPU's FMA peak, {peak} GFLOP/s (benchmarks/fma_peak.c)" if peak else ""
        out.append(f"\n**GFLOP/s** (8·B·H·(I+H) per step and layer forward for the LSTM, 6·B·H·(I+H) for the GRU, 3x with the backward; in parentheses "
                   f"the fraction of the run's sgemm floor, {floor} GFLOP/s: {machine.get('sgemm_shape')}{ceiling})\n")
        out.append("| bench, pass | shape | lstm_ext | torch |\n|---|---|---|---|")
        cells = defaultdict(dict)
        for r in rates:
            key = (r["bench"] + (" (GRU)" if r.get("cell") == "gru" else ""), r["pass"], f"B={r['B']} T={r['T']} I={r['I']} H={r['H']} L={r.get('layers')} {r['dtype']}")
            peak_part = f" / {r['peak_fraction']:.2f}" if "peak_fraction" in r else ""
            cells[key][r["impl"]] = f"{r['gflops']:.0f} ({r.get('sgemm_fraction', 0):.2f}{peak_part})"
        for (bench, pass_, shape), impls in cells.items():
            out.append(f"| {bench}, {pass_} | {shape} | {impls.get('lstm_ext', '-')} | {impls.get('torch', '-')} |")
    memory = [r for r in data["results"] if "peak_mib" in r]
    if memory:
        out.append("\n**Peak memory of one inference forward** (MiB of resident memory it adds, fresh process)\n")
        out.append("| shape | lstm_ext | torch |\n|---|---|---|")
        cells = defaultdict(dict)
        for r in memory:
            cells[("GRU " if r.get("cell") == "gru" else "") + f"B={r['B']} T={r['T']} I={r['I']} H={r['H']} L={r.get('layers')} {r['dtype']}"][r["impl"]] = r["peak_mib"]
        for shape, impls in cells.items():
            out.append(f"| {shape} | {impls.get('lstm_ext', '-')} | {impls.get('torch', '-')} |")
    bandwidth = [r for r in data["results"] if "gbps" in r]
    if bandwidth:
        out.append("\n**pointwise kernels alone**\n\n| pass | shape | time | GB/s |\n|---|---|---|---|")
        for r in bandwidth:
            out.append(f"| {r['pass']} | B={r['B']} H={r['H']} {r['dtype']} | {r['median_us']:.1f} µs | {r['gbps']} |")
    return "\n".join(out)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(tables(p))
