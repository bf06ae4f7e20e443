"""PNG charts from benchmarks/results/<machine>.json, for the README and docs/.

    python benchmarks/plot.py [benchmarks/results/<machine>.json] [--out docs/images]

Without a path, the results file of this machine. Writes:
  sequence_speedup.png  lstm_ext.LSTM's speed-up over torch.nn.LSTM per shape and pass
  cell_speedup.png      lstm_ext.LSTMCell's speed-up over torch.nn.LSTMCell and the reference
  sequence_time.png     forward+backward time per shape: lstm_ext, torch.nn.LSTM, the Python loops
  gru_speedup.png       lstm_ext.GRU's speed-up over torch.nn.GRU per shape and pass (--cell gru rows)
  proj_speedup.png      lstm_ext.LSTM(proj_size=H/2)'s over torch.nn.LSTM(proj_size=H/2) (--cell lstmp rows)
  packed_speedup.png    a PackedSequence through lstm_ext: over torch.nn's packed path, and over our padded batch
                        (packed in each call, and packed beforehand)
  layernorm_speedup.png lstm_ext.LayerNormLSTM's speed-up over its Python reference and torch.compile of it, and
                        the cost of the normalization and of zoneout (--cell lnlstm rows)
Speed-up is the other implementation's median time / lstm_ext's: above 1, lstm_ext is faster.
matplotlib is needed here only (the package never imports it).
"""
from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SPEEDUP_LABEL = "speed-up (other's time / lstm_ext's)"


def load(path: str, cell: str = "lstm"):
    with open(path) as f:
        data = json.load(f)
    times = defaultdict(dict)  # (bench, pass, B, T, I, H, layers) -> impl -> median_us
    for row in data["results"]:
        # The plots are of float32 time rows (not floors, bandwidth or memory rows).
        if row.get("impl") == "floor" or "gbps" in row or "median_us" not in row or row.get("dtype") != "float32":
            continue
        if row.get("cell", "lstm") != cell:
            continue
        # bench_sequence.py --small-batch's rows (B < 16 at T=100) have their own table in docs/performance.md.
        if row["bench"] == "sequence" and row.get("T") == 100 and row["B"] < 16:
            continue
        key = (row["bench"], row["pass"], row["B"], row.get("T"), row["I"], row["H"], row.get("layers"))
        times[key][row["impl"]] = row["median_us"]
    return data["machine"], times


def shape_label(B, T, I, H) -> str:
    return f"B={B}" + (f" T={T}" if T else "") + f"\nI={I} H={H}"


def bars(ax, groups, series, values, title):
    """Grouped bars: one group per shape, one bar per series; a line at 1."""
    width = 0.8 / max(1, len(series))
    for k, name in enumerate(series):
        xs = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ys = [values.get((group, name)) for group in groups]
        drawn = ax.bar([x for x, y in zip(xs, ys) if y], [y for y in ys if y], width, label=name)
        ax.bar_label(drawn, fmt="%.2f", fontsize=7, padding=1)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [shape_label(*g) for g in groups], fontsize=8)
    ax.set_ylabel(SPEEDUP_LABEL, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def machine_caption(machine) -> str:
    return (f"{machine['cpu'] if machine['device'] == 'cpu' else machine['device']}, {machine['threads']} threads, "
            f"torch {machine['torch']}, lstm_ext {machine['lstm_ext']}; above 1: lstm_ext is faster")


def sequence_speedup(machine, times, out, name="LSTM", file="sequence_speedup.png"):
    passes = ["fwd", "fwd, inference_mode", "fwd+bwd", "fwd+bwd, x without grad", "fwd+bwd, packed"]
    layers = sorted({k[6] for k in times if k[0] == "sequence"})
    if not layers:
        return None
    fig, axes = plt.subplots(len(layers), 1, figsize=(9, 3.6 * len(layers)), squeeze=False)
    for ax, L in zip(axes[:, 0], layers):
        groups, values = [], {}
        for (bench, pass_, B, T, I, H, lay), impls in times.items():
            if bench != "sequence" or lay != L or "torch" not in impls:
                continue
            if (B, T, I, H) not in groups:
                groups.append((B, T, I, H))
            values[((B, T, I, H), pass_)] = impls["torch"] / impls["lstm_ext"]
        groups.sort(key=lambda g: (g[1], g[0] * g[3] * (g[2] + g[3])))  # by length, then work
        bars(ax, groups, [p for p in passes if any(v[1] == p for v in values)], values,
             f"lstm_ext.{name} vs torch.nn.{name}, {L} layer{'s' if L > 1 else ''}, float32")
    fig.suptitle(machine_caption(machine), fontsize=8)
    return save(fig, out, file)


def cell_speedup(machine, times, out):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (other, title) in zip(axes, (("torch", "vs torch.nn.LSTMCell"), ("reference", "vs the reference cell"))):
        groups, values = [], {}
        for (bench, pass_, B, T, I, H, _), impls in times.items():
            if bench != "cell" or other not in impls:
                continue
            if (B, T, I, H) not in groups:
                groups.append((B, T, I, H))
            values[((B, T, I, H), pass_)] = impls[other] / impls["lstm_ext"]
        if groups:
            bars(ax, groups, ["fwd", "fwd+bwd"], values, f"lstm_ext.LSTMCell {title}, float32")
    fig.suptitle(machine_caption(machine), fontsize=8)
    return save(fig, out, "cell_speedup.png")


def sequence_time(machine, times, out):
    names = {"lstm_ext": "lstm_ext.LSTM", "torch": "torch.nn.LSTM", "reference": "reference cell loop",
             "compile": "torch.compile(reference)", "lstm_ext_cell_loop": "lstm_ext.LSTMCell loop"}
    rows = [(k, v) for k, v in times.items() if k[0] == "sequence" and k[1] == "fwd+bwd" and k[6] == 1]
    rows.sort(key=lambda kv: kv[0][2] * kv[0][3] * kv[0][5] * (kv[0][4] + kv[0][5]))  # by work: B*T*H*(I+H)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [shape_label(*k[2:6]) for k, _ in rows]
    for impl, label in names.items():
        ys = [v.get(impl, float("nan")) / 1e3 for _, v in rows]
        ax.plot(range(len(rows)), ys, marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("forward+backward time (ms, log)", fontsize=8)
    ax.set_title("One layer, float32: time per call (lower is better)", fontsize=10)
    ax.legend(fontsize=7)
    fig.suptitle(machine_caption(machine).split(";")[0], fontsize=8)
    return save(fig, out, "sequence_time.png")


def packed_speedup(machine, times_by_cell, out):
    """Per cell, per shape and layer count: torch.nn's packed time / ours, and our padded batch's / our packed
    (packed in each call, and packed beforehand)."""
    cells = [(name, times) for name, times in times_by_cell.items()
             if any(k[1] == "fwd+bwd, packed" for k in times)]
    if not cells:
        return None
    fig, axes = plt.subplots(len(cells), 1, figsize=(9, 3.6 * len(cells)), squeeze=False)
    for ax, (name, times) in zip(axes[:, 0], cells):
        groups, values, series = [], {}, []
        for (bench, pass_, B, T, I, H, lay), impls in times.items():
            if bench != "sequence" or pass_ not in ("fwd+bwd, packed", "fwd+bwd, prepacked"):
                continue
            group = (B, T, I, H)
            if group not in groups:
                groups.append(group)
            # Packed in each call (torch's packing timed too), or beforehand.
            compared = ((("torch", f"vs torch.nn.{name}, packed"), ("lstm_ext_padded", "vs our padded batch"))
                        if pass_ == "fwd+bwd, packed" else
                        (("lstm_ext_padded", "vs our padded batch, packed beforehand"),))
            for other, label in compared:
                if other in impls:
                    key = f"{label}, L={lay}"
                    values[(group, key)] = impls[other] / impls["lstm_ext"]
                    if key not in series:
                        series.append(key)
        # Rows of several runs come in the JSON's order: shapes by length and
        # work, series in one order for both cells.
        groups.sort(key=lambda g: (g[1], g[0] * g[3] * (g[2] + g[3])))
        order = ["vs torch", "vs our padded batch, L", "vs our padded batch, packed"]
        series.sort(key=lambda k: (next(i for i, o in enumerate(order) if k.startswith(o)), k))
        bars(ax, groups, series, values, f"lstm_ext.{name}, PackedSequence of lengths T/2..T, fwd+bwd, float32")
    fig.suptitle(machine_caption(machine), fontsize=8)
    return save(fig, out, "packed_speedup.png")


def layernorm_speedup(machine, times, out):
    """LayerNormLSTM: the reference's and compile's time / ours (speed-ups), and ours / lstm_ext.LSTM's and
    zoneout's time / without (costs, below 1.5 and 1.1 are the targets)."""
    if not times:
        return None
    fig, axes = plt.subplots(2, 1, figsize=(9, 7.2))
    for ax, (title, pairs) in zip(axes, (
            ("speed-up of lstm_ext.LayerNormLSTM (other's time / ours)",
             (("reference", "lstm_ext", "vs Python reference"), ("compile", "lstm_ext", "vs compile(reference step)"))),
            ("cost (time / the time without it; lower is better)",
             (("lstm_ext", "lstm_ext_lstm", "LayerNormLSTM / LSTM"),
              ("lstm_ext_zoneout", "lstm_ext", "LayerNormLSTM zoneout / none"),
              ("lstm_ext_lstm_zoneout", "lstm_ext_lstm", "LSTM zoneout / none"))))):
        groups, values, series = [], {}, []
        for (bench, pass_, B, T, I, H, lay), impls in times.items():
            if bench != "sequence":
                continue
            group = (B, T, I, H)
            if group not in groups:
                groups.append(group)
            for num, den, label in pairs:
                if num in impls and den in impls:
                    key = f"{label}, {pass_}"
                    values[(group, key)] = impls[num] / impls[den]
                    if key not in series:
                        series.append(key)
        bars(ax, groups, series, values, title)
        if "cost" in title:
            ax.set_ylabel("time ratio", fontsize=8)
    fig.suptitle(machine_caption(machine), fontsize=8)
    return save(fig, out, "layernorm_speedup.png")


def save(fig, out, name):
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def default_results() -> str:
    import sys

    sys.path.insert(0, HERE)
    from common import RESULTS_DIR, machine_name  # imports torch and lstm_ext: only when no path is given

    return os.path.join(RESULTS_DIR, machine_name("cpu") + ".json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", help="a benchmarks/results/*.json file")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "docs", "images"))
    args = parser.parse_args()
    results = args.results or default_results()
    machine, times = load(results)
    _, gru_times = load(results, cell="gru")
    _, proj_times = load(results, cell="lstmp")
    _, ln_times = load(results, cell="lnlstm")
    for path in (sequence_speedup(machine, times, args.out), cell_speedup(machine, times, args.out),
                 sequence_time(machine, times, args.out),
                 sequence_speedup(machine, gru_times, args.out, "GRU", "gru_speedup.png"),
                 sequence_speedup(machine, proj_times, args.out, "LSTM(proj_size=H/2)", "proj_speedup.png"),
                 packed_speedup(machine, {"LSTM": times, "GRU": gru_times}, args.out),
                 layernorm_speedup(machine, ln_times, args.out)):
        if path:
            print("wrote", path)


if __name__ == "__main__":
    main()
