"""Linear regression with tracejit: fit y = 2x + 3 with Linear(1, 1), MSELoss and SGD for 1000 steps,
the whole step compiled into one graph by @tracejit.compile.

    python examples/linear_regression.py [--steps 1000] [--backend cpu]
"""

from __future__ import annotations

import argparse
import time

import tracejit as torch
import tracejit.nn as nn
import tracejit.optim as optim


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--backend", default="cpu", help="compile backend: cpu, reference or cuda")
    p.add_argument("--quick", action="store_true", help="a smaller run for tests (300 steps)")
    args = p.parse_args(argv)
    steps = 300 if args.quick and args.steps == 1000 else args.steps

    torch.manual_seed(0)
    x = torch.randn(100, 1)
    y = 2 * x + 3 + 0.05 * torch.randn(100, 1)  # the line to recover, with a little noise

    model = nn.Linear(1, 1)
    criterion = nn.MSELoss()
    optimizer = optim.SGD(model.parameters(), lr=args.lr)

    @torch.compile(backend=args.backend)
    def train_step(x, y):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        loss = train_step(x, y)
        if step == 1 or step % max(1, steps // 5) == 0:
            print(f"step {step:5d}  loss {loss.item():.5f}")
    elapsed = time.perf_counter() - t0

    w, b = model.weight.item(), model.bias.item()
    print(f"learned w = {w:.4f} (true 2), b = {b:.4f} (true 3)")
    print(f"{steps} steps in {elapsed:.2f} s (compiled variants: {len(train_step.history)})")
    return {"w": w, "b": b, "loss": loss.item(), "variants": len(train_step.history)}


if __name__ == "__main__":
    main()
