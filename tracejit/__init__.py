"""tracejit: a PyTorch-style deep-learning library whose @compile traces a whole training step into fused
Numba kernels. ``import tracejit as torch`` works for the supported subset.
"""

from . import autograd, linalg, nn, optim, utils  # noqa: F401
from .autograd import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .devices import device, get_default_device, set_default_device
from .dtypes import DType, bool_, float16, float32, float64, int64, uint8
from .dtypes import bool_ as bool  # noqa: A001
from .errors import OpError, TraceError
from .ops import OPS
from .random import (
    Generator,
    bernoulli,
    default_generator,
    initial_seed,
    manual_seed,
    normal,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    randperm,
    seed,
)
from .serialization import load, save
from ._tensor import Size, Tensor, cat, concat, matmul, stack, where
from .factories import (
    arange,
    as_tensor,
    empty,
    empty_like,
    eye,
    from_numpy,
    full,
    full_like,
    linspace,
    ones,
    ones_like,
    tensor,
    zeros,
    zeros_like,
)
from .functions import *  # noqa: F401,F403  (torch.exp, torch.sum, torch.max, ...)

float = float32  # noqa: A001
double = float64
half = float16
long = int64
from ._version import __version__


def __getattr__(name):
    # the compiler is imported lazily: eager users never pay for Numba's import
    if name in ("compile", "explain"):
        from .compiler import api

        return getattr(api, name)
    if name in ("set_num_threads", "get_num_threads"):
        from .compiler.backends.cpu import threads

        return getattr(threads, name)
    if name == "compiler":
        import importlib

        return importlib.import_module(".compiler", __name__)
    if name in ("datasets", "transforms", "cuda", "accelerator", "backends"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'tracejit' has no attribute {name!r}")
