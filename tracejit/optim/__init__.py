"""Optimizers (SGD, Adam, AdamW, RMSprop, Adadelta, Adagrad, LBFGS) and learning-rate schedulers,
PyTorch-compatible.

Per-step state and the learning rate live in tensors, so `optimizer.step()` traces into the graph (LBFGS,
whose step is data-dependent Python control flow, runs eagerly).
"""

from . import lr_scheduler
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .lbfgs import LBFGS
from .optimizer import Optimizer, ParamGroup
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "ParamGroup", "SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "Adagrad", "LBFGS",
           "lr_scheduler"]
