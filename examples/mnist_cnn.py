"""The PyTorch MNIST example's CNN (conv-conv-pool-dropout-fc-dropout-fc, log_softmax + nll_loss), slimmed
to train in under a minute on 2 cores, with @tracejit.compile on the training step.

    python examples/mnist_cnn.py                        # synthetic 1x28x28 digits-shaped data
    python examples/mnist_cnn.py --data-root ~/data     # real MNIST IDX files in ~/data/MNIST/raw
"""

from __future__ import annotations

import argparse
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
    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(2 * width * 12 * 12, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


def datasets(args):
    if args.data_root:
        from tracejit.datasets import MNIST

        return MNIST(args.data_root, train=True), MNIST(args.data_root, train=False)
    from tracejit.datasets import SyntheticImages

    shape = (1, 28, 28)
    return (SyntheticImages(args.train_size, shape=shape, seed=1),
            SyntheticImages(args.test_size, shape=shape, seed=1, train=False))


def test(model, loader) -> tuple[float, float]:
    model.eval()  # dropout off; a different module mode, so the compiled train step is not reused
    loss_sum, correct, total = 0.0, 0, 0
    with torch.no_grad():
        for data, target in loader:
            output = model(data)
            loss_sum += F.nll_loss(output, target, reduction="sum").item()
            correct += (output.argmax(1) == target).sum().item()
            total += target.shape[0]
    model.train()
    return loss_sum / max(total, 1), correct / max(total, 1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", help="directory holding MNIST/raw (default: synthetic data)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=8, help="channels of the first conv (the original: 32)")
    p.add_argument("--train-size", type=int, default=3200, help="synthetic training images")
    p.add_argument("--test-size", type=int, default=1000, help="synthetic test images")
    p.add_argument("--backend", default="cpu", help="compile backend: cpu, reference or cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes for tests")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.batch_size, args.train_size, args.test_size, args.width = 1, 8, 48, 32, 2

    torch.manual_seed(1)
    train_set, test_set = datasets(args)
    if not args.data_root:
        print(f"data: {len(train_set)} synthetic MNIST-shaped images (no download; the accuracy only shows that it "
              f"learns); --data-root DIR trains on the real MNIST")
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True)
    test_loader = DataLoader(test_set, batch_size=500)
    model = Net(args.width)
    optimizer = optim.Adam(model.parameters(), lr=args.lr)

    @torch.compile(backend=args.backend)
    def train_step(data, target):
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
        return loss

    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        batches = train_loader
        if tqdm is not None and not args.no_progress:
            batches = tqdm(train_loader, desc=f"epoch {epoch}/{args.epochs}", leave=False)
        for data, target in batches:
            loss = train_step(data, target)
        test_loss, accuracy = test(model, test_loader)
        print(f"epoch {epoch}: train loss {loss.item():.4f}, test loss {test_loss:.4f}, "
              f"accuracy {accuracy:.1%}")
    print(f"trained in {time.perf_counter() - t0:.1f} s; compiled variants: {len(train_step.history)}")
    return {"loss": loss.item(), "test_loss": test_loss, "accuracy": accuracy,
            "variants": len(train_step.history)}


if __name__ == "__main__":
    main()
