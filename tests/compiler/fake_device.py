"""A fake second device behind the Backend protocol: host memory, but its buffers are not NumPy arrays (a
`FakeBuffer` that refuses to be turned into one) and every transfer copies. Anything outside the backend that
assumes NumPy storage fails loudly on it; compiled programs run the CPU backend's program on the unwrapped arrays.
"""

from __future__ import annotations

import numpy as np

from tracejit import devices
from tracejit.compiler.backends import Backend, get_backend, register_backend, unregister_backend


class FakeBuffer:
    """Storage on the fake device. Not an array: NumPy must not see it."""

    __slots__ = ("data",)

    def __init__(self, data: np.ndarray):
        self.data = data

    def __array__(self, *a, **k):
        raise AssertionError("a fake-device buffer reached NumPy outside its backend")

    def __repr__(self):
        return f"FakeBuffer({self.data.dtype}{list(self.data.shape)})"


class FakeProgram:
    """The Program protocol over a CPU program: unwrap the buffers, run, wrap the results."""

    def __init__(self, inner, device):
        self.inner, self.device = inner, device
        self.graph, self.plan = inner.graph, inner.plan
        self.updates_in_place = inner.updates_in_place
        self.runs = 0

    @staticmethod
    def _unwrap(buffers):
        for b in buffers:
            assert isinstance(b, FakeBuffer), f"the fake program got {type(b).__name__}, not a fake buffer"
        return [b.data for b in buffers]

    def run(self, buffers):
        self.runs += 1
        return [FakeBuffer(o) for o in self.inner.run(self._unwrap(buffers))]

    def profile(self, buffers, repeat=1):
        return self.inner.profile(self._unwrap(buffers), repeat)

    def steps(self):
        return self.inner.steps()

    def sources(self):
        return self.inner.sources()

    def describe(self):
        return "fake device: " + self.inner.describe()

    def cache_stats(self):
        return self.inner.cache_stats()

    def shared_kernels(self):
        return self.inner.shared_kernels() if hasattr(self.inner, "shared_kernels") else (0, 0)

    def parametric(self):
        return self.inner.parametric() if hasattr(self.inner, "parametric") else (0, 0)


class FakeBackend(Backend):
    def __init__(self, name="fake", device="fake:0", inner="cpu"):
        self.name = name
        self.device = devices.device(device)
        self.inner = inner
        self.to_device_calls = self.to_host_calls = self.eager_ops = 0

    def compile(self, graph, dumper=None, timings=None, sizes=None):
        kw = {} if sizes is None else {"sizes": sizes}  # kernels shared across batch sizes: the inner backend's
        return FakeProgram(get_backend(self.inner).compile(graph, dumper, timings, **kw), self.device)

    def size_reuse(self):
        return get_backend(self.inner).size_reuse()

    def supports(self, pattern, attrs):
        return get_backend(self.inner).supports(pattern, attrs)  # its programs are the inner backend's

    @property
    def scalar_spelling(self):
        return get_backend(self.inner).scalar_spelling

    def alloc(self, shape, dtype):
        return FakeBuffer(np.empty(tuple(shape), dtype.np))

    def to_device(self, array):
        assert isinstance(array, np.ndarray), type(array)
        self.to_device_calls += 1
        return FakeBuffer(np.array(array, order="C", copy=True))

    def to_host(self, buffer):
        assert isinstance(buffer, FakeBuffer), f"to_host got {type(buffer).__name__}"
        self.to_host_calls += 1
        return buffer.data.copy()

    def run_eager(self, op, buffers, attrs, out_type):
        for b in buffers:
            assert isinstance(b, FakeBuffer), f"{op.name} got {type(b).__name__} on the fake device"
        self.eager_ops += 1
        return super().run_eager(op, buffers, attrs, out_type)

    def describe(self):
        return {"device": str(self.device), "threads": None, "lines": ["host memory behind the protocol"],
                "warnings": []}


def install(name="fake", device="fake:0", inner="cpu") -> FakeBackend:
    register_backend(name, lambda: FakeBackend(name, device, inner), device=device)
    return get_backend(name)


def uninstall(name="fake") -> None:
    unregister_backend(name)
