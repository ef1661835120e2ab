"""Random numbers from a counter-based generator whose state is a tensor.

Value i of a draw is a pure function of (seed, offset + i) (see `ref_kernels.uniform`); a draw advances
the offset with an ordinary in-place tensor op, so a traced step carries the state and draws fresh
numbers on every call.
"""

from __future__ import annotations

import math

import numpy as np

from . import dtypes as D
from .autograd.mode import no_grad
from .dispatch import TensorBase as Tensor
from .dispatch import _from_array, _sizes, apply
from .factories import _placed
from .ops import OPS, TensorType, broadcast_shapes

DEFAULT_SEED = 67280421310721


class Generator:
    """A random stream: ``g = tracejit.Generator().manual_seed(0); tracejit.rand(3, generator=g)``."""

    def __init__(self, device="cpu", seed=DEFAULT_SEED):
        # one counter-based stream serves every device: draws are made on the host and moved where asked
        self.state = Tensor._make(np.array([seed, 0], dtype=np.int64), TensorType((2,), D.int64))
        self._seed = seed

    def manual_seed(self, seed: int) -> Generator:
        seed = int(seed)
        self.state.data = Tensor._make(np.array([seed, 0], dtype=np.int64), TensorType((2,), D.int64))
        self.state._box.version += 1
        self._seed = seed
        return self

    def seed(self) -> int:
        s = int(np.random.SeedSequence().entropy % (2**63))
        self.manual_seed(s)
        return s

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self) -> Tensor:
        return self.state.clone()

    def set_state(self, state: Tensor) -> None:
        self.state.data = state.detach().to(D.int64)

    def _draw(self, shape, dtype):
        n = math.prod(shape)

        with no_grad():
            u = apply(OPS["uniform"], self.state, shape=tuple(shape), dtype=dtype)
            self.state.add_(_from_array(np.array([0, n], dtype=np.int64)))
        return u


default_generator = Generator()


def manual_seed(seed: int) -> Generator:
    """Seed the default generator (and return it), as ``torch.manual_seed``."""
    return default_generator.manual_seed(seed)


def seed() -> int:
    return default_generator.seed()


def initial_seed() -> int:
    return default_generator.initial_seed()


def _float(dtype):
    dt = D.as_dtype(dtype) if dtype is not None else D.default_float
    if not dt.is_floating_point:
        raise TypeError(f"random floats need a floating-point dtype, got {dt.name}")
    return dt


def _shape(who, sizes, size):
    if size is not None:
        if sizes:
            raise TypeError(f"{who}() got multiple values for argument 'size'")
        return _sizes((size,)) if not isinstance(size, int) else (int(size),)
    return _sizes(sizes)


def rand(*sizes, size=None, generator=None, dtype=None, requires_grad=False, device=None):
    """Uniform numbers in [0, 1)."""
    u = (generator or default_generator)._draw(_shape("rand", sizes, size), _float(dtype))
    return _placed(u, device, requires_grad)


def randn(*sizes, size=None, generator=None, dtype=None, requires_grad=False, device=None):
    """Standard normal numbers (Box-Muller over one uniform draw)."""
    shape = _shape("randn", sizes, size)
    dt = _float(dtype)
    n = math.prod(shape)
    half = (n + 1) // 2
    with no_grad():
        u = (generator or default_generator)._draw((2, half), dt)
        r = ((1.0 - u[0]).log() * -2.0).sqrt()
        theta = u[1] * (2.0 * math.pi)
        z = apply(OPS["cat"], r * theta.cos(), r * theta.sin(), axis=0)
        if z.shape[0] != n:
            z = z[:n]
        z = z.reshape(shape)
    z._view = None  # a fresh tensor, not a view of the draw it was cut from
    return _placed(z, device, requires_grad)


def randint(low, high=None, size=(), generator=None, dtype=None, device=None):
    """Uniform integers in [low, high)."""
    if high is None:
        low, high = 0, low
    elif isinstance(high, (tuple, list)):  # randint(high, size), as torch.randint(10, (3,))
        low, high, size = 0, low, high
    u = (generator or default_generator)._draw(_sizes((size,)) if not isinstance(size, int) else (size,),
                                               D.float64)
    with no_grad():
        v = (u * float(high - low)).to(D.int64) + int(low)
    return _placed(v if dtype is None else v.to(dtype), device)


def randperm(n, generator=None, dtype=None, device=None):
    """A random permutation of 0..n-1 (eager only: it sorts)."""
    u = (generator or default_generator)._draw((n,), D.float64)
    perm = _from_array(np.argsort(u.numpy(), kind="stable").astype(np.int64))
    return _placed(perm if dtype is None else perm.to(dtype), device)


def rand_like(t, generator=None, dtype=None, device=None):
    return rand(tuple(t.shape), generator=generator, dtype=dtype or t.dtype,
                device=t._box.device if device is None else device)


def randn_like(t, generator=None, dtype=None, device=None):
    return randn(tuple(t.shape), generator=generator, dtype=dtype or t.dtype,
                 device=t._box.device if device is None else device)


def bernoulli(p, generator=None):
    """1.0 with probability p (elementwise), else 0.0."""
    return (rand(tuple(p.shape), generator=generator, dtype=p.dtype, device=p._box.device) < p).to(p.dtype)



_NORMAL_FORMS = ("normal() received an invalid combination of arguments - got ({got}), but expected one of:\n"
                 " * (Tensor mean, Tensor std, *, Generator generator = None, Tensor out = None)\n"
                 " * (Tensor mean, float std = 1, *, Generator generator = None, Tensor out = None)\n"
                 " * (float mean, Tensor std, *, Generator generator = None, Tensor out = None)\n"
                 " * (float mean, float std, tuple of ints size, *, Generator generator = None, Tensor out = None, "
                 "dtype dtype = None, device device = None, bool requires_grad = False)")


def normal(mean=0.0, std=1.0, size=None, *, generator=None, out=None, dtype=None, layout=None, device=None,
           pin_memory=False, requires_grad=False):
    """Normal numbers, PyTorch's four forms: ``normal(mean_tensor, std_tensor)`` (shapes broadcast),
    ``normal(mean_tensor, std=1.0)``, ``normal(mean, std_tensor)`` and ``normal(mean, std, size)``.

    As PyTorch, the draw is not reparametrized: tensor means and stds get zero gradients."""
    tm, ts = isinstance(mean, Tensor), isinstance(std, Tensor)
    if not (tm or ts):
        if size is None:
            raise TypeError(_NORMAL_FORMS.format(got=f"{type(mean).__name__}, {type(std).__name__}"))
        if std < 0:
            raise RuntimeError(f"normal expects std >= 0.0, but found std {std:g}")
        z = randn(_sizes((size,)) if not isinstance(size, int) else (size,), generator=generator, dtype=dtype,
                  device=device)
        with no_grad():
            z = z * float(std) + float(mean) if (std, mean) != (1, 0) else z
        z = z.requires_grad_(True) if requires_grad else z
        return z if out is None else out._write_out("normal", z)
    if size is not None:
        got = ", ".join(type(a).__name__ for a in (mean, std, size))
        raise TypeError(_NORMAL_FORMS.format(got=got))
    ref = mean if tm else std
    if not ref.dtype.is_floating_point or (tm and ts and not std.dtype.is_floating_point):
        raise NotImplementedError(f'"normal" not implemented for {ref.dtype.name} (mean and std must be '
                                  f"floating-point tensors)")
    if ts:
        s = std._box.value
        if isinstance(s, np.ndarray) and s.size and s.min() < 0:  # (a traced std cannot be checked)
            raise RuntimeError("normal expects all elements of std >= 0.0")
    elif std < 0:
        raise RuntimeError(f"normal expects std >= 0.0, but found std {std:g}")
    shape = broadcast_shapes("normal", tuple(mean.shape) if tm else (), tuple(std.shape) if ts else ())
    z = randn(shape, generator=generator, dtype=ref.dtype, device=ref._box.device)
    with no_grad():
        r = z * (std.detach() if ts else float(std)) + (mean.detach() if tm else float(mean))
    for p in (mean, std):  # in the graph with zero gradient, as PyTorch's NormalBackward
        if isinstance(p, Tensor) and p.requires_grad:
            r = r + p * 0.0
    return r if out is None else out._write_out("normal", r)
