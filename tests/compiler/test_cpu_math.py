"""cpu_math against NumPy/SciPy in float64: dense sweeps of each domain with stated tolerances, special
values (NaN, ±inf, ±0, subnormals, overflow), and the vector-code shape (packed zmm/ymm FMA, no float64).
"""

import functools
import re

import llvmlite.binding as llvm
import numba
import numpy as np
import pytest
from scipy import special

from tracejit.compiler.backends.cpu import vecmath as cpu_math

N = 1_000_001

REFS = {
    "exp": np.exp, "log": np.log, "tanh": np.tanh, "sigmoid": special.expit, "erf": special.erf,
    "sin": np.sin, "cos": np.cos, "relu": lambda x: np.maximum(x, 0), "sign": np.sign,
}


@functools.cache
def over_array(name, dtype):
    """A loop applying cpu_math's `name` elementwise, compiled the way generated kernels are."""
    fn = cpu_math.FUNCS[name][0 if dtype == np.float32 else 1]

    @numba.njit(fastmath=True, error_model="numpy")
    def loop(x, y):
        for i in range(x.size):
            y[i] = fn(x[i])

    return loop


def apply(name, x):
    y = np.empty_like(x)
    over_array(name, x.dtype.type)(x, y)
    return y


def check_close(name, x, ulps, atol=0.0):
    """|f(x) - ref(x)| <= ulps * spacing(ref rounded to x.dtype) + atol, and NaN exactly where ref is."""
    y = apply(name, x)
    with np.errstate(all="ignore"):
        ref = REFS[name](x.astype(np.float64))
        rounded = ref.astype(x.dtype)
    assert np.array_equal(np.isnan(y), np.isnan(ref)), f"{name}: NaN mismatch"
    same = (y == rounded) | np.isnan(ref)
    with np.errstate(all="ignore"):
        bound = ulps * np.spacing(np.abs(rounded)).astype(np.float64) + atol
        bad = ~same & ~(np.abs(y.astype(np.float64) - ref) <= bound)
    if bad.any():
        i = np.flatnonzero(bad)[0]
        err = abs(float(y[i]) - ref[i]) / float(np.spacing(np.abs(rounded[i])))
        pytest.fail(f"{name}({x[i]!r}) = {y[i]!r}, reference {ref[i]!r} ({err:.2f} ulp); {bad.sum()} bad")


def sweep(lo, hi, dtype, n=N):
    return np.linspace(lo, hi, n, dtype=np.float64).astype(dtype)


def logsweep(lo, hi, dtype, n=N):
    x = np.geomspace(lo, hi, n // 2).astype(dtype)
    return np.concatenate([-x[::-1], x])


F32 = np.float32
F64 = np.float64
TINY32 = float(np.finfo(F32).smallest_subnormal)
TINY64 = float(np.finfo(F64).smallest_subnormal)

# (function, dtype, inputs, ulps, atol): the bounds the module docstring states.
CASES = [
    ("exp", F32, sweep(-104, 89, F32), 1.05, 0),
    ("exp", F32, sweep(-1, 1, F32), 1.05, 0),
    ("exp", F64, sweep(-746, 710, F64), 1.5, 0),
    ("exp", F64, sweep(-1, 1, F64), 1.5, 0),
    ("log", F32, np.geomspace(TINY32, 3.4e38, N).astype(F32), 1.0, 0),
    ("log", F32, sweep(0.5, 2, F32), 1.0, 0),
    ("log", F64, np.geomspace(TINY64, 1.7e308, N), 1.5, 0),
    ("log", F64, sweep(0.5, 2, F64), 1.5, 0),
    ("tanh", F32, sweep(-12, 12, F32), 2.0, 0),
    ("tanh", F32, logsweep(1e-30, 20, F32), 2.0, 0),
    ("tanh", F64, sweep(-25, 25, F64), 3.5, 0),
    ("tanh", F64, logsweep(1e-300, 40, F64), 3.5, 0),
    ("sigmoid", F32, sweep(-110, 30, F32), 3.0, 0),
    ("sigmoid", F32, sweep(-8, 8, F32), 3.0, 0),
    ("sigmoid", F64, sweep(-700, 40, F64), 4.5, 0),  # SciPy flushes to 0 below -709
    ("erf", F32, sweep(-5, 5, F32), 3.0, 0),
    ("erf", F32, logsweep(1e-30, 5, F32), 3.0, 0),
    ("erf", F64, sweep(-7, 7, F64), 3.5, 0),
    ("sin", F32, sweep(-10, 10, F32), 2.0, 1.2e-7),
    ("sin", F32, sweep(-1e5, 1e5, F32), 2.0, 1.2e-7),
    ("cos", F32, sweep(-10, 10, F32), 2.0, 1.2e-7),
    ("cos", F32, sweep(-1e5, 1e5, F32), 2.0, 1.2e-7),
    ("sin", F64, sweep(-1e5, 1e5, F64), 1.0, 0),
    ("cos", F64, sweep(-1e5, 1e5, F64), 1.0, 0),
]


@pytest.mark.parametrize(
    "name,dtype,x,ulps,atol", CASES,
    ids=[f"{c[0]}-{c[1].__name__}-{float(c[2].min()):.3g}..{float(c[2].max()):.3g}" for c in CASES],
)
def test_accuracy(name, dtype, x, ulps, atol):
    check_close(name, x, ulps, atol)


SPECIAL = [
    np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1e-40, 1e-38, 0.5, 0.625, 0.921875,
    3.0, 4.0, 9.5, 20.0, 88.72, 88.73, 89.0, -87.4, -103.0, -103.98, -104.0, 710.0, -745.2,
    1e30, -1e30, 3.4e38, -3.4e38,
]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name", list(cpu_math.FUNCS))
def test_special_values(name, dtype):
    x = np.array(SPECIAL, dtype=dtype)
    y = apply(name, x)
    with np.errstate(all="ignore"):
        ref = REFS[name](x.astype(np.float64)).astype(dtype)
    if name in ("sin", "cos"):  # huge arguments are outside the float32 versions' stated range
        keep = ~(np.abs(x) > 1e5)
        x, y, ref = x[keep], y[keep], ref[keep]
    with np.errstate(all="ignore"):
        ok = (y == ref) | (np.isnan(y) & np.isnan(ref)) | (np.abs(y - ref) <= 4 * np.spacing(np.abs(ref)))
    assert ok.all(), f"{name}: x={x[~ok]} got {y[~ok]} want {ref[~ok]}"


@pytest.mark.parametrize("dtype", [F32, F64])
def test_named_edge_cases(dtype):
    def at(name, v):
        return apply(name, np.array([v] * 3, dtype=dtype))[0]

    f = {name: functools.partial(at, name) for name in cpu_math.FUNCS}
    assert f["exp"](-np.inf) == 0 and f["exp"](1000.0) == np.inf and f["exp"](-1000.0) == 0
    assert np.isnan(f["exp"](np.nan)) and f["exp"](np.inf) == np.inf
    assert f["log"](0.0) == -np.inf and f["log"](-0.0) == -np.inf and np.isnan(f["log"](-1.0))
    assert f["log"](np.inf) == np.inf and np.isnan(f["log"](-np.inf)) and np.isnan(f["log"](np.nan))
    for name, lo, hi in [("tanh", -1, 1), ("sigmoid", 0, 1), ("erf", -1, 1)]:
        assert f[name](-np.inf) == lo and f[name](np.inf) == hi, name
        assert f[name](-1e30) == lo and f[name](1e30) == hi, name
        assert np.isnan(f[name](np.nan)), name
    assert np.isnan(f["sin"](np.inf)) and np.isnan(f["cos"](-np.inf)) and np.isnan(f["sin"](np.nan))
    assert np.isnan(f["relu"](np.nan)) and f["relu"](-2.0) == 0 and f["relu"](3.0) == 3
    assert np.isnan(f["sign"](np.nan)) and f["sign"](-2.0) == -1 and f["sign"](0.0) == 0


def test_scalar_calls_keep_dtype():
    assert isinstance(cpu_math.exp_f32(np.float32(1.0)), np.float32 | float)
    assert cpu_math.exp_f32(np.float32(1.0)) == pytest.approx(np.e, rel=1e-7)
    assert cpu_math.log_f64(2.0) == pytest.approx(np.log(2.0), rel=1e-16)


def test_funcs_mapping_names_are_importable():
    for name, (f32_fn, f64_fn) in cpu_math.FUNCS.items():
        assert f32_fn.__name__ == f"{name}_f32" and f64_fn.__name__ == f"{name}_f64"
        assert getattr(cpu_math, f32_fn.__name__) is f32_fn and f32_fn.__name__ in cpu_math.__all__


HOST = llvm.get_host_cpu_features()


@pytest.mark.skipif(not (HOST.get("avx2") and HOST.get("fma")), reason="needs an AVX2+FMA host")
@pytest.mark.parametrize("name", list(cpu_math.FUNCS))
def test_float32_loop_vectorizes(name):
    """The point of the module: a loop over float32 calling it compiles to packed AVX code, with the
    helper inlined (a call left in the loop stops vectorization) and no float64 promotion."""
    loop = over_array(name, F32)
    apply(name, np.linspace(-3, 3, 64, dtype=F32))
    sig = [s for s in loop.signatures if s[0].dtype == numba.float32][0]
    asm = loop.inspect_asm(sig)
    packed = re.findall(r"\bv\w+ps\s[^\n]*%[yz]mm", asm)
    assert packed, f"{name}_f32: no packed single-precision instructions"
    assert "cvtss2sd" not in asm and "cvtps2pd" not in asm, f"{name}_f32 promotes to float64"
    assert not re.search(rf"call[^\n]*{name}_f32", loop.inspect_llvm(sig)), f"{name}_f32 was not inlined"
    if name in ("exp", "log", "tanh", "sigmoid", "erf", "sin", "cos"):
        assert re.search(r"vfmadd\w*ps\s[^\n]*%[yz]mm", asm), f"{name}_f32: no packed FMA"
    assert not re.search(r"call[^\n]*ldexp", asm), f"{name}_f32 calls libm's ldexp per element"
    if name in ("exp", "sigmoid", "tanh") and HOST.get("avx512f"):
        # 2**n as one vscalefps (llvm.ldexp) instead of building exponent bits and two multiplies
        assert re.search(r"vscalefps\s[^\n]*%zmm", asm), f"{name}_f32: no vscalefps on this AVX-512 host"


@functools.cache
def _pair_loop(dtype):
    fn = cpu_math.tanh_sigmoid_f32 if dtype == np.float32 else cpu_math.tanh_sigmoid_f64

    @numba.njit(fastmath=True, error_model="numpy")
    def loop(x, t, s):
        for i in range(x.size):
            t[i], s[i] = fn(x[i])

    return loop


@pytest.mark.parametrize("dtype", [F32, F64])
def test_tanh_sigmoid_pair_matches_the_two_functions(dtype):
    # one exp for both: the sigmoid half is sigmoid's own computation, the tanh half keeps tanh's stated bound
    x = np.concatenate([sweep(-30, 30, dtype), logsweep(1e-30, 120, dtype), np.array(SPECIAL, dtype)])
    t, s = np.empty_like(x), np.empty_like(x)
    _pair_loop(dtype)(x, t, s)
    np.testing.assert_array_equal(s, apply("sigmoid", x))
    ref = np.tanh(x.astype(np.float64))
    rounded = ref.astype(dtype)
    assert np.array_equal(np.isnan(t), np.isnan(ref))
    ok = (t == rounded) | np.isnan(ref) | (np.abs(t - ref) <= 3.5
                                          * np.spacing(np.abs(rounded)).astype(np.float64))
    assert ok.all(), f"x={x[~ok][:5]} got {t[~ok][:5]} want {ref[~ok][:5]}"
    assert t[x == np.inf].tolist() == [1.0] and t[x == -np.inf].tolist() == [-1.0]


@functools.cache
def _max_loop():
    @numba.njit(fastmath={"contract", "arcp", "afn", "reassoc", "nsz"}, error_model="numpy")
    def row_max(x, out):
        for i in range(x.shape[0]):
            acc = x.dtype.type(-np.inf)
            for j in range(x.shape[1]):
                acc = cpu_math.maximum(acc, x[i, j])
            out[i] = acc

    return row_max


@pytest.mark.parametrize("dtype", [F32, F64])
def test_maximum_reduction_lets_nan_win_anywhere_in_a_row(dtype):
    # rows long enough for the vector body, its unrolled partial maxima and a scalar tail; NaN first, inside,
    # last, beside infinities; rows of -inf and of mixed zeros
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 203)).astype(dtype)
    x[0, 0] = x[1, 100] = x[2, 202] = np.nan
    x[3, 7] = np.inf
    x[3, 8] = np.nan
    x[4, :] = -np.inf
    x[5, 50] = np.inf
    x[6, :] = -0.0
    x[6, 150] = 0.0
    x[7, :] = rng.standard_normal(203) - 100
    out = np.empty(9, dtype)
    _max_loop()(x, out)
    with np.errstate(invalid="ignore"):
        want = x.max(1)
    np.testing.assert_array_equal(out, want)


@pytest.mark.skipif(not (HOST.get("avx2") and HOST.get("fma")), reason="needs an AVX2+FMA host")
def test_maximum_reduction_vectorizes():
    # the reason it exists: `b if (b > a or b != b) else a` left the softmax's row max one scalar step per element
    loop = _max_loop()
    loop(np.zeros((2, 64), F32), np.empty(2, F32))
    sig = [s for s in loop.signatures if s[0].dtype == numba.float32][0]
    assert re.search(r"\bv\w+ps\s[^\n]*%[yz]mm", loop.inspect_asm(sig)), "no packed single-precision code"
