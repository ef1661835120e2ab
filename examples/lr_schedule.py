"""A learning-rate schedule (StepLR) driving a compiled training step without recompiling it: the lr lives
in a tensor that the compiled graph reads as an input, so changing it is just new data.

    python examples/lr_schedule.py [--epochs 6] [--backend cpu]
"""

from __future__ import annotations

import argparse

import tracejit as torch
import tracejit.nn as nn
import tracejit.nn.functional as F
import tracejit.optim as optim
from tracejit.optim.lr_scheduler import StepLR


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--backend", default="cpu", help="compile backend: cpu, reference or cuda")
    p.add_argument("--quick", action="store_true", help="a smaller run for tests")
    args = p.parse_args(argv)
    steps = 5 if args.quick else args.steps_per_epoch

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, :4].sum(1) > 0).long()  # a linearly separable two-class problem
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    scheduler = StepLR(optimizer, step_size=2, gamma=0.5)  # halve the lr every 2 epochs

    @torch.compile(backend=args.backend)
    def train_step(x, y):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    lrs = []
    for epoch in range(args.epochs):
        lr = optimizer.param_groups[0]["lr"]
        lrs.append(lr)
        for _ in range(steps):
            loss = train_step(x, y)
        print(f"epoch {epoch}  lr {lr:.4f}  loss {loss.item():.4f}  compiled variants so far: "
              f"{len(train_step.history)}")
        scheduler.step()
    print(f"compiled variants: {len(train_step.history)} (the lr changed {len(set(lrs)) - 1} times, "
          f"no recompilation)")
    for line in train_step.log:
        print(f"  log: {line}")
    return {"lrs": lrs, "variants": len(train_step.history), "loss": loss.item()}


if __name__ == "__main__":
    main()
