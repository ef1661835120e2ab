"""The PyTorch CIFAR-10 tutorial's LeNet, trained with tracejit: the same code, `import tracejit as torch`,
and @tracejit.compile on the training step. Prints eager vs compiled step time and the final accuracy.

    python examples/train_lenet.py                          # synthetic CIFAR-shaped data (no download)
    python examples/train_lenet.py --data-root ~/data       # real CIFAR-10 from ~/data/cifar-10-batches-py
"""

from __future__ import annotations

import argparse
import statistics
import time

import tracejit as torch
import tracejit.nn as nn
import tracejit.nn.functional as F
import tracejit.optim as optim
from tracejit.utils.data import DataLoader

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional: pip install 'tracejit[examples]'
    tqdm = None


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def datasets(args):
    if args.data_root:
        from tracejit.datasets import CIFAR10

        return CIFAR10(args.data_root, train=True), CIFAR10(args.data_root, train=False)
    from tracejit.datasets import SyntheticImages

    return SyntheticImages(args.train_size, seed=0), SyntheticImages(args.test_size, seed=0, train=False)


def evaluate(net, loader) -> float:
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            predicted = net(images).argmax(1)
            correct += (predicted == labels).sum().item()
            total += labels.shape[0]
    return correct / max(total, 1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", help="directory holding cifar-10-batches-py (default: synthetic data)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--train-size", type=int, default=3200, help="synthetic training images")
    p.add_argument("--test-size", type=int, default=1000, help="synthetic test images")
    p.add_argument("--eager-steps", type=int, default=11,
                   help="steps run eagerly first, to time them (the first is a warm-up and is not timed)")
    p.add_argument("--backend", default="cpu", help="compile backend: cpu, reference or cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes for tests")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.batch_size, args.train_size, args.test_size, args.eager_steps = 1, 8, 64, 32, 3

    torch.manual_seed(0)
    trainset, testset = datasets(args)
    if not args.data_root:
        print(f"data: {len(trainset)} synthetic CIFAR-shaped images (no download; the accuracy only shows that it "
              f"learns); --data-root DIR trains on the real CIFAR-10")
    # drop_last keeps every batch the same shape, so the compiled step never recompiles
    trainloader = DataLoader(trainset, batch_size=args.batch_size, shuffle=True, drop_last=True)
    testloader = DataLoader(testset, batch_size=500)

    net = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)

    def train_step(inputs, labels):
        optimizer.zero_grad()
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        return loss

    compiled_step = torch.compile(train_step, backend=args.backend)

    eager_s, compiled_s, first_compiled_s = [], [], None
    reference_s = []  # calls that ran on the reference backend while the kernels compiled in the background
    running, seen = 0.0, 0
    for epoch in range(args.epochs):
        batches = trainloader
        if tqdm is not None and not args.no_progress:
            batches = tqdm(trainloader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        for inputs, labels in batches:
            eager = len(eager_s) < args.eager_steps
            # (a tiered compile: until its kernels are ready, calls run the traced graph on the reference backend)
            ready = not eager and first_compiled_s is not None and compiled_step.wait_compiled(0)
            t0 = time.perf_counter()
            loss = (train_step if eager else compiled_step)(inputs, labels)
            dt = time.perf_counter() - t0
            if eager:
                eager_s.append(dt)  # the first (warm-up) is dropped below
            elif first_compiled_s is None:
                first_compiled_s = dt  # tracing, passes and kernel compilation (or its start) happen in this call
            else:
                (compiled_s if ready else reference_s).append(dt)
            running += loss.item()
            seen += 1
            if tqdm is not None and not args.no_progress:
                batches.set_postfix(loss=f"{running / seen:.3f}")
        print(f"epoch {epoch + 1}: mean loss {running / max(seen, 1):.3f}")
        running, seen = 0.0, 0

    accuracy = evaluate(net, testloader)
    eager_s = eager_s[1:]  # the first eager step pays one-time costs (allocations, NumPy/BLAS warm-up)
    eager_ms = statistics.median(eager_s) * 1e3 if eager_s else float("nan")
    compiled_ms = statistics.median(compiled_s) * 1e3 if compiled_s else float("nan")
    print(f"eager step    {eager_ms:8.2f} ms (median of {len(eager_s)} after a warm-up step)")
    print(f"compiled step {compiled_ms:8.2f} ms (median of {len(compiled_s)}, backend {args.backend}); "
          f"{eager_ms / compiled_ms:.1f}x faster")
    print(f"first compiled call (trace + compile) {first_compiled_s or 0:.2f} s; compiled variants: "
          f"{len(compiled_step.history)}")
    if reference_s:
        print(f"  the kernels compiled in the background meanwhile: the next {len(reference_s)} calls ran on the "
              f"reference backend ({statistics.median(reference_s) * 1e3:.1f} ms median), the kernels from call "
              f"{len(reference_s) + 2} on")
    print(f"final loss {loss.item():.4f}; test accuracy {accuracy:.1%} on {len(testset)} images")
    return {"eager_ms": eager_ms, "compiled_ms": compiled_ms, "loss": loss.item(), "accuracy": accuracy,
            "variants": len(compiled_step.history), "reference_calls": len(reference_s)}


if __name__ == "__main__":
    main()
