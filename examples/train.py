"""The course's training demo, on the fused model and on the reference.

Both models start from the same weights (the fused one loads the reference's
state_dict, or for the GRU converts the reference model) and see the same
data: X (100, 5, 4), y (100, 1), MSE loss, Adam with lr 0.01, 100 epochs. The
LSTM's loss curves agree; the GRU's start equal and part slightly, as torch's
GRU has two biases (b_ih, b_hh) where the reference has one per gate for r
and z, which Adam steps differently. The wall times do not agree.

    python examples/train.py [--cell lstm|gru] [--dtype float64] [--epochs 100]
"""
from __future__ import annotations

import argparse
import time
from typing import List, Tuple

import torch
from torch import nn

import lstm_ext
from lstm_ext import reference


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int = 100,
          lr: float = 0.01) -> Tuple[List[float], float]:
    """The course's loop; returns the loss of every epoch and the seconds taken."""
    criterion = nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        optimizer.zero_grad()
        loss = criterion(model(X), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, time.perf_counter() - start


def make_models(input_size=4, hidden_size=3, output_size=1, dtype=torch.float32, seed=0, cell="lstm"):
    """A reference model and a fused model with identical weights (the LSTM's or the GRU's)."""
    torch.manual_seed(seed)
    if cell == "gru":
        ref = reference.GRUModel(input_size, hidden_size, output_size).to(dtype)
        return ref, lstm_ext.GRUModel.from_reference(ref)
    ref = reference.LSTMModel(input_size, hidden_size, output_size).to(dtype)
    fused = lstm_ext.LSTMModel(input_size, hidden_size, output_size, dtype=dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def make_data(dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(100, 5, 4, generator=generator, dtype=dtype)  # 100 sequences of length 5, 4 features
    y = torch.randn(100, 1, generator=generator, dtype=dtype)     # 100 targets
    return X, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--cell", default="lstm", choices=["lstm", "gru"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    ref, fused = make_models(dtype=dtype, cell=args.cell)
    X, y = make_data(dtype)
    for warm_up in make_models(dtype=dtype, cell=args.cell):  # first-call costs out of the timing
        train(warm_up, X, y, epochs=3)
    ref_losses, ref_seconds = train(ref, X, y, args.epochs)
    fused_losses, fused_seconds = train(fused, X, y, args.epochs)
    print(f"{'epoch':>7} {'lstm_ext loss':>14} {'reference loss':>15}")
    for epoch in range(9, args.epochs, 10):
        print(f"{epoch + 1:>7} {fused_losses[epoch]:>14.6f} {ref_losses[epoch]:>15.6f}")
    worst = max(abs(a - b) for a, b in zip(fused_losses, ref_losses))
    print(f"largest loss difference over {args.epochs} epochs: {worst:.2e}")
    print(f"wall time: lstm_ext {fused_seconds * 1e3:.1f} ms, reference {ref_seconds * 1e3:.1f} ms "
          f"({ref_seconds / fused_seconds:.2f}x faster)")


if __name__ == "__main__":
    main()
