"""Helpers that generated CPU code calls instead of costly-to-compile Numba features: `cpu_views.view` (for
`.reshape`), `cpu_segment_blas.gemm_nt` (BLAS with layouts fixed at render time), and the segment source that
uses them, whose compiled results equal eager ones."""

import os
from pathlib import Path

os.environ.setdefault("TRACEJIT_CACHE_DIR", str(Path(__file__).resolve().parents[2] / ".tracejit_cache" / "tests"))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tracejit  # noqa: E402
from tracejit.compiler.backends import cache  # noqa: E402
from tracejit.compiler.backends.cpu import program as cpu_program  # noqa: E402
from tracejit.compiler.backends.cpu import render as cpu_render  # noqa: E402
from tracejit.compiler.backends.cpu import views as cpu_views  # noqa: E402
from tracejit.compiler.backends.cpu.blas import control as blas  # noqa: E402
from tracejit.compiler.backends.cpu.blas.segment import gemm_nt, gemm_nt_par  # noqa: E402
from tracejit.compiler.backends.cpu.views import view  # noqa: E402
from tracejit.compiler.ir import FusedKind  # noqa: E402


@numba.njit
def _views(a):
    m = view(a, (2, 3, 4))
    m[1, 2, 3] = -1.0
    z = view(a[:1], ())  # one element seen as a 0-d array
    z[()] = 7.0
    return m, view(m, (4, 6)), view(m, (24,)), z


def test_view_shares_data_and_has_c_strides():
    a = np.arange(24, dtype=np.float32)
    m, m2, flat, z = _views(a)
    assert m.shape == (2, 3, 4) and m.strides == (48, 16, 4)
    assert m2.shape == (4, 6) and m2.strides == (24, 4)
    np.testing.assert_array_equal(m2, a.reshape(4, 6))
    assert a[23] == -1.0 and m[1, 2, 3] == -1.0 and flat[23] == -1.0  # one buffer
    assert z.shape == () and a[0] == 7.0
    np.testing.assert_array_equal(flat, a)


@numba.njit
def _allocate(n):
    a = cpu_views.empty((n, 3), np.float32)
    a[...] = 1.5
    b = cpu_views.empty((), np.int64)
    b[()] = 7
    return a, b, cpu_views.empty((n,), np.float32)


def test_empty_allocates_new_c_arrays_of_the_shape_and_dtype():
    a, b, c = _allocate(4)
    assert a.shape == (4, 3) and a.dtype == np.float32 and a.strides == (12, 4) and a.flags.writeable
    np.testing.assert_array_equal(a, np.full((4, 3), 1.5, np.float32))
    assert b.shape == () and b.dtype == np.int64 and b[()] == 7
    c[:] = 0
    np.testing.assert_array_equal(a, np.full((4, 3), 1.5, np.float32))  # separate buffers


def test_view_refuses_non_contiguous_layouts():
    @numba.njit
    def strided(a):
        return view(a[::2], (3,))

    with pytest.raises(numba.core.errors.TypingError):
        strided(np.zeros(6))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_nt_matches_numpy_for_every_transpose_combination(dtype, ta, tb):
    rng = np.random.default_rng(ta * 2 + tb)
    m, n, k = 5, 7, 3
    # a transposed operand is passed as the C array it transposes, with its leading dimension
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    out = np.full((m, n), np.nan, dtype)
    gemm_nt(ta, tb, m, n, k, a, a.shape[1], b, b.shape[1], out)
    want = (a.T if ta else a) @ (b.T if tb else b)
    np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("m,n", [(9, 4), (4, 9), (1, 5), (5, 1)])  # split along m, along n, fewer rows than parts
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_nt_par_blocks_cover_the_product_for_every_layout(m, n, ta, tb):
    rng = np.random.default_rng(m * 10 + n + ta * 2 + tb)
    k = 6
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    want = (a.T if ta else a) @ (b.T if tb else b)
    blas.set_threads(1)
    for parts in (1, 2, 3):
        out = np.full((m, n), np.nan, np.float32)
        gemm_nt_par(ta, tb, m, n, k, a, a.shape[1], b, b.shape[1], out, parts)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_big_gemms_in_segments_are_split_over_the_pool_and_equal_eager(monkeypatch):
    monkeypatch.setattr(blas, "SPLIT_GEMM_FLOPS", 100.0)  # every GEMM below counts as big
    monkeypatch.setattr(cpu_program.threads, "get_num_threads", lambda: 2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    w = rng.standard_normal((5, 4)).astype(np.float32)

    def fn(x, w):
        h = (x @ w.T).relu()  # [6, 5]: split along m
        return h.T @ x, h @ h.T  # [5, 4] from a transposed left operand; [6, 6] with a transposed right one

    args = [tracejit.tensor(a) for a in (x, w)]
    want = fn(*args)
    cf = tracejit.compile(fn, backend="cpu")
    got = cf(*args)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_.numpy(), w_.numpy(), rtol=1e-5, atol=1e-5)
    steps = [s for s, *_ in cf.latest().program.plan if isinstance(s, cpu_program.SegmentStep)]
    text = "\n".join(s.source for s in steps)
    assert text.count("G.gemm_nt_par(") == 3 and "G.gemm_nt(" not in text
    assert all(s.uses_threads and s.blas_threads == 1 for s in steps if "gemm_nt_par" in s.source)


def test_segment_source_uses_views_and_direct_gemm_and_equals_eager():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    v = rng.standard_normal((3, 5)).astype(np.float32)

    def fn(x, w, v):
        h = (x @ w.T).relu()  # transposed right operand
        s = h.T @ x  # transposed left operand, [3, 4]
        return (h @ v).reshape(2, 15).sum(1), s.sum(0)

    args = [tracejit.tensor(a) for a in (x, w, v)]
    want = fn(*args)
    cf = tracejit.compile(fn, backend="cpu")
    got = cf(*args)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_.numpy(), w_.numpy(), rtol=1e-5, atol=1e-5)
    sources = [s.source for s, *_ in cf.latest().program.plan if isinstance(s, cpu_program.SegmentStep)]
    assert sources, "no segment ran"
    text = "\n".join(sources)
    assert ".reshape(" not in text and ".fill(" not in text
    assert text.count("G.gemm_nt(") == 3 and "B.gemm(" not in text


# ------------------------------------------------------------------- packed multi-tensor (optimizer) kernels


@pytest.mark.parametrize("n,rows", [(1, 16), (16, 16), (20, 64), (64, 64), (70, 128)])
def test_addresses_lists_address_and_size_of_every_array_in_padded_chunks(n, rows):
    arrays = [np.zeros(k % 7 + 1, np.float32) for k in range(n)]
    table = cpu_views.addresses(arrays)
    assert table.shape == (rows, 2)
    assert table[:n].tolist() == [[a.ctypes.data, a.size] for a in arrays]
    assert table[n:].tolist() == [[arrays[0].ctypes.data, 1]] * (rows - n)  # padding repeats the first array


@numba.njit
def _double_into(table):
    from_ = cpu_views.array_at(table[0, 0], table[0, 1], np.float32)
    to = cpu_views.array_at(table[1, 0], table[1, 1], np.float32)
    for i in range(to.shape[0]):
        to[i] = 2 * from_[i]


def test_array_at_reads_and_writes_the_listed_memory():
    x = np.arange(5, dtype=np.float32)
    y = np.zeros((5,), np.float32)
    _double_into(cpu_views.addresses([x, y]))
    np.testing.assert_array_equal(y, 2 * x)


class _Net(tracejit.nn.Module):
    def __init__(self, wide=8):
        super().__init__()
        self.fc1 = tracejit.nn.Linear(6, wide)
        self.fc2 = tracejit.nn.Linear(wide, 3)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())


def _packed_steps(monkeypatch, make_opt, wide=8, steps=3):
    """Compiled vs eager training steps with the optimizer update forced into its own (packed) kernel."""
    import tracejit.nn.functional as F

    monkeypatch.setattr(cpu_program, "INPLACE_MIN", 0)
    rng = np.random.default_rng(0)
    x = tracejit.tensor(rng.standard_normal((5, 6)).astype(np.float32))
    y = tracejit.tensor(rng.integers(0, 3, 5))
    models, opts, fns = [], [], []
    for _ in range(2):
        tracejit.manual_seed(0)
        model = _Net(wide)
        opt = make_opt(model)

        def step(x, y, model=model, opt=opt):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        models.append(model)
        opts.append(opt)
        fns.append(step)
    fns[0](x, y)  # both models take the same first (eager) step, which creates the optimizer state
    fns[1](x, y)
    cf = tracejit.compile(fns[0], backend="cpu")
    for _ in range(steps):
        np.testing.assert_allclose(cf(x, y).item(), fns[1](x, y).item(), rtol=1e-5)
    for (name, p), (_, q) in zip(models[0].named_parameters(), models[1].named_parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    kernels = [s for s, *_ in cf.latest().program.plan
               if isinstance(s, cpu_program.KernelStep) and s.node.fused_kind is FusedKind.MULTI]
    assert len(kernels) == 1 and kernels[0].rows is not None, "the update did not run as one packed kernel"
    return kernels[0].source


def test_sgd_momentum_of_every_parameter_is_one_shared_loop(monkeypatch):
    src = _packed_steps(monkeypatch, lambda m: tracejit.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    assert "def kernel(P):" in src
    assert src.count("for m") == 1 and "range(4)" in src  # 4 parameters, one loop nest run over their rows


def test_param_groups_with_different_momentum_get_their_own_loops(monkeypatch):
    def make(m):
        return tracejit.optim.SGD([{"params": [m.fc1.weight, m.fc1.bias], "momentum": 0.5},
                                   {"params": [m.fc2.weight, m.fc2.bias]}], lr=0.1, momentum=0.9)
    src = _packed_steps(monkeypatch, make)
    assert src.count("for m") == 2 and "np.float32(0.5)" in src and "np.float32(0.9)" in src


def test_adam_update_in_a_packed_kernel(monkeypatch):
    src = _packed_steps(monkeypatch, lambda m: tracejit.optim.Adam(m.parameters(), lr=0.01))
    assert "def kernel(P):" in src


def test_a_large_parameter_keeps_its_own_parallel_block(monkeypatch):
    monkeypatch.setattr(cpu_render, "PARALLEL_MIN", 40)  # fc1.weight (6x8=48) runs its own prange block
    src = _packed_steps(monkeypatch, lambda m: tracejit.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    assert "numba.prange" in src and "parallel=True" in src and src.count("for m") == 1


def test_a_read_only_input_of_a_packed_kernel_is_copied_not_refused(monkeypatch):
    _packed_steps(monkeypatch, lambda m: tracejit.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    # the step above compiled the packed kernel; call such a step directly with a read-only gradient
    step = _last_packed_step(monkeypatch)
    args = [np.random.default_rng(i).standard_normal(v.shape).astype(np.float32) for i, v in
            enumerate(step.node.inputs)]
    want = step([a.copy() for a in args])  # (writable arrays are updated in place: give it copies)
    frozen = [a.copy() for a in args]
    for a in frozen:
        a.flags.writeable = False
    got = step(frozen)
    for w_, g_ in zip(want, got):
        np.testing.assert_array_equal(w_, g_)


def _last_packed_step(monkeypatch):
    captured = []
    monkeypatch.setattr(cpu_program.KernelStep, "__init__", _capturing(cpu_program.KernelStep.__init__, captured))
    _packed_steps(monkeypatch, lambda m: tracejit.optim.SGD(m.parameters(), lr=0.2, momentum=0.8))
    # (the compile also renders the step at batch size n + 1 to find its size arguments: never loaded)
    (step,) = [s for s in captured if s.rows is not None and s.fn is not None]
    return step


def _capturing(init, captured):
    def wrapped(self, *a, **kw):
        init(self, *a, **kw)
        captured.append(self)
    return wrapped


ROW_REDUCTIONS = """
graph g(%x: f32[6,5] {arg: x}) {
  %s: f32[6], %m: f32[6] = fused(%x) {kind='reduce'}
    body reduce_0(%x: f32[6,5]) {
      %s: f32[6] = sum(%x) {axes=(1,), keepdim=False}
      %m: f32[6] = amax(%x) {axes=(1,), keepdim=False}
      return %s, %m
    }
  return %s, %m
}
"""


def test_row_reductions_store_their_accumulator_without_filling_first():
    from tracejit.compiler.backends.kernel import lower
    from tracejit.compiler.ir import parse_graph

    (node,) = parse_graph(ROW_REDUCTIONS).nodes
    src = cpu_render.render(lower(node), "kernel")
    assert "fi0" not in src and "fi1" not in src  # no fill loops
    assert "o0[i0, 0] = acc0" in src and "o1[i0, 0] = acc1" in src
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    x[2, 3] = np.nan
    x[4] = -np.inf
    fn, _ = cache.load(cpu_render.PRELUDE + src, "kernel")
    s, m = np.empty((6, 1), np.float32), np.empty((6, 1), np.float32)
    fn.py_func(x, s, m)  # the Python semantics of the rendered text
    np.testing.assert_allclose(s[:, 0], x.sum(1), rtol=1e-6)
    np.testing.assert_array_equal(m[:, 0], x.max(1))  # NaN and an all -inf row as in NumPy
    fn(x, s, m)  # and compiled
    np.testing.assert_allclose(s[:, 0], x.sum(1), rtol=1e-5)
    np.testing.assert_array_equal(m[:, 0], x.max(1))


@pytest.mark.parametrize("case", ["pad", "cat", "expand_permute_bmm", "full", "slice_copy"])
def test_movement_ops_in_segments_are_loops_and_equal_eager(case):
    import tracejit.nn.functional as F

    rng = np.random.default_rng(1)
    x = tracejit.tensor(rng.standard_normal((4, 5, 6)).astype(np.float32))
    y = tracejit.tensor(rng.standard_normal((4, 5, 6)).astype(np.float32))

    def fn(x, y):
        if case == "pad":
            return (F.pad(x * 2.0, (1, 2, 2, 0)) + 1.0).sum(1)
        if case == "cat":
            return (tracejit.cat([x * 2.0, y], 1) + 1.0).sum(1), tracejit.cat([x, y * 3.0], -1) * 2.0
        if case == "expand_permute_bmm":
            return ((x * 2.0).sum(1, keepdim=True).expand(4, 5, 6) @ y.permute(0, 2, 1)).sum(1)
        if case == "full":
            return (x * 2.0) @ tracejit.ones(6, 3)
        return (x[:, 1:4, ::2] * 2.0) @ y[:, :4, :3].permute(0, 2, 1), x[1:3].transpose(0, 1) * 1.5

    want = fn(x, y)
    want = want if isinstance(want, tuple) else (want,)
    cf = tracejit.compile(fn, backend="cpu")
    got = cf(x, y)
    got = got if isinstance(got, tuple) else (got,)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_.numpy(), w_.numpy(), rtol=1e-5, atol=1e-5)
    sources = [s.source for s, *_ in cf.latest().program.plan if isinstance(s, cpu_program.SegmentStep)]
    assert sources
    for call in ("np.full", "np.broadcast_to", "np.concatenate", "np.transpose", "np.ascontiguousarray", "[...]"):
        assert all(call not in src for src in sources), call


def test_large_parameters_of_a_group_share_one_parallel_loop(monkeypatch):
    monkeypatch.setattr(cpu_render, "PARALLEL_MIN", 20)  # fc1.weight (48) and fc2.weight (24): one prange, run per row
    src = _packed_steps(monkeypatch, lambda m: tracejit.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    assert src.count("numba.prange") == 1 and src.count("for m") == 2  # the weights' loop and the biases'
