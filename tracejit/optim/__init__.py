"""Optimizers (SGD, Adam, AdamW) and learning-rate schedulers, PyTorch-compatible.

Per-step state and the learning rate live in tensors, so `optimizer.step()` traces into the graph.
"""

from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer, ParamGroup
from .sgd import SGD

__all__ = ["Optimizer", "ParamGroup", "SGD", "Adam", "AdamW", "lr_scheduler"]
