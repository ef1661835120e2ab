"""Look inside a compiled training step: the traced IR (forward, backward and optimizer update as one graph),
the optimized IR after the passes, tracejit.explain(), and the dump directory with one file per stage.

    python examples/inspect_ir.py [--dump DIR] [--backend cpu]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import tracejit as torch
import tracejit.nn as nn
import tracejit.nn.functional as F
import tracejit.optim as optim
from tracejit.__main__ import summarize_dump


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dump", help="dump directory (default: $TRACEJIT_DUMP or a new temporary directory)")
    p.add_argument("--backend", default="cpu", help="compile backend: cpu, reference or cuda")
    p.add_argument("--quick", action="store_true", help="accepted for symmetry with the other examples")
    args = p.parse_args(argv)
    dump = args.dump or os.environ.get("TRACEJIT_DUMP") or tempfile.mkdtemp(prefix="tracejit-dump-")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    @torch.compile(backend=args.backend, dump=dump)
    def train_step(x, y):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(3):  # the first calls compile (see the log below); later ones reuse the variant
        loss = train_step(x, y)

    print("=== traced IR (before any pass) ===")
    print(train_step.ir("traced"))
    print("\n=== optimized IR (after the pass pipeline) ===")
    print(train_step.ir())
    print("\n=== tracejit.explain(train_step, x, y) ===")
    explanation = torch.explain(train_step, x, y)
    print(explanation)
    print("\n=== compile log ===")
    for line in train_step.log:
        print(f"  {line}")
    print("\n=== dump ===")
    print(summarize_dump(dump, render_svg=False))
    print(f"\nfinal loss {loss.item():.4f}; dump written to {dump}")
    return {"dump": dump, "variants": len(train_step.history), "traced": train_step.ir("traced"),
            "final": train_step.ir(), "explain": str(explanation)}


if __name__ == "__main__":
    main()
