"""Vectorizable scalar math for generated CPU kernels: range reduction + polynomial in plain arithmetic,
so LLVM vectorizes a loop that calls these (libm's expf/tanhf stay scalar). Generated modules import the
functions by name (``from tracejit.compiler.backends.cpu import vecmath as M``); ``FUNCS`` maps op names.

Accuracy, max error against float64 NumPy/SciPy on the same input, in ulp of the correctly rounded
result. float32, exhaustive over all 2**32 inputs: exp 1.02 (subnormal results included), log 0.83
(subnormal inputs included), tanh 1.33, sigmoid 2.40 (relative down to subnormal results), erf 2.50
(abs 1.3e-7), sin/cos abs 7.9e-8 for |x| <= 1e5 (so ulp error is large only near their zeros).
float64, dense sweeps: exp 1.0, log 1.0, tanh 3, sigmoid 4 (the float64 references err too); erf, sin
and cos call libm. `tanh_sigmoid_f32` (both from one exp, for kernels that take both of one value): its
sigmoid is `sigmoid_f32`'s bits, its tanh within 3.2 ulp (all float32 in 1e-3 <= |x| <= 12: the division by
1 + e**-2|x| in [1, 2] rounds relative to it, up to an ulp where tanh is in [0.25, 0.5]; 0.6 % of them over
2 ulp). tests/compiler/test_cpu_math.py checks these bounds.
Edge cases as NumPy: NaN propagates, exp overflows to inf and underflows to 0, exp(-inf)=0, log(0)=-inf,
log(x<0)=nan, log(inf)=inf, tanh/sigmoid/erf saturate (±1, 0/1) for huge and infinite |x|, sin/cos(inf)=nan.

Speed (shared 2-core AVX-512 machine, benchmarks/bench_cpu_math.py): y = tanh(x)*sigmoid(x) + exp(-x*x)
over 2**22 float32 in one njit kernel: 3.2 ms parallel on 2 threads (5.5 ms serial) with these functions,
60 ms parallel with math.tanh/math.exp (scalar libm), 29 ms in NumPy; a parallel copy takes 0.41 ms.
Serial loops over 2**22 float32: exp 1.4 ms (16-wide zmm FMA code, no cvtss2sd), sigmoid 1.7, sin/cos
1.5, log 2.5, tanh 2.6, erf 3.0; float64 exp/log/tanh/sigmoid 3.9-4.8 ms; libm erf/sin/cos_f64 ~40 ms.

Compiled with ``fastmath={"nsz", "arcp", "contract", "afn"}`` rather than ``fastmath=True``: the same
speed (FMA contraction is what matters), but without ``nnan``/``ninf``, which would license LLVM to
delete the NaN/inf handling above, and without ``reassoc``, which turned ``p * 2**64 * 2**64`` into
``p * inf`` in exp near its overflow threshold.
"""

import math

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import helper, host_avx512

__all__ = [
    "FUNCS",
    "maximum",
    "cos_f32", "cos_f64", "erf_f32", "erf_f64", "exp_f32", "exp_f64", "log_f32", "log_f64",
    "relu_f32", "relu_f64", "sigmoid_f32", "sigmoid_f64", "sign_f32", "sign_f64",
    "sin_f32", "sin_f64", "tanh_f32", "tanh_f64", "tanh_sigmoid_f32", "tanh_sigmoid_f64",
    "truncdiv_f32", "truncdiv_f64", "remainder_f32", "remainder_f64", "fmod_f32", "fmod_f64",
]

FASTMATH = {"nsz", "arcp", "contract", "afn"}
_jit = helper(cache=True, fastmath=FASTMATH, error_model="numpy")
# erf_f32 (two polynomials and an exp) is over LLVM's inlining threshold, and a call left in a loop stops
# vectorization (38 ms instead of 3 ms for 2**22): it is inlined at the Numba IR level instead.
_jit_inline = numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")

f32 = np.float32
f64 = np.float64
i32 = np.int32
i64 = np.int64

# ---------------------------------------------------------------- float32 -------------------------------
# Module-level NumPy scalars are frozen by Numba as typed constants, so these stay float32 (no cvtss2sd).
_ONE = f32(1.0)
_HALF = f32(0.5)
_TWO = f32(2.0)
_ZERO = f32(0.0)
_INF = f32(np.inf)
_NAN = f32(np.nan)
_LOG2E = f32(1.44269504088896341)
_LN2_HI = f32(0.693359375)  # 9 significant bits: n * _LN2_HI is exact for |n| < 2**15 (Cody-Waite)
_LN2_LO = f32(-2.12194440e-4)
_EXP_LO = f32(-104.0)  # exp(-104) < half the smallest subnormal: the result is 0 below this
_EXP_HI = f32(89.0)  # exp(89) > FLT_MAX: the result is inf above this
# Cephes expf: e**r ~ 1 + r + r*r*P(r) on |r| <= ln2/2
_EXP_P0 = f32(1.9875691500e-4)
_EXP_P1 = f32(1.3981999507e-3)
_EXP_P2 = f32(8.3334519073e-3)
_EXP_P3 = f32(4.1665795894e-2)
_EXP_P4 = f32(1.6666665459e-1)
_EXP_P5 = f32(5.0000001201e-1)


@_jit
def _pow2_f32(k):
    """2.0**k for int k in [-126, 127], built from the exponent bits (vectorizes; ldexpf would not)."""
    return i32((k + 127) << 23).view(np.float32)


# AVX-512 scales by 2**n in one instruction (vscalefps, subnormal and overflowing results correctly rounded), which
# LLVM (20 and later) emits for a vectorized llvm.ldexp; elsewhere llvm.ldexp is a libm call per element, so the
# exponent bits are built by hand (`_pow2_f32`). A constant: the branch not taken compiles to nothing.
_SCALEF = host_avx512() and llvm.llvm_version_info >= (20,)


@intrinsic
def _ldexp_f32(typingctx, x, n):
    """x * 2**n for float32 x and int32 n (llvm.ldexp: one rounding, as NumPy's ldexp); only where `_SCALEF`."""
    if x != types.float32 or n != types.int32:
        return None

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.FloatType(), [ir.FloatType(), ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.ldexp.f32.i32")
        return builder.call(fn, args)

    return types.float32(types.float32, types.int32), codegen


@_jit
def _exp_parts(t):
    """(n, q) with e**t = (1 + q) * 2**n for a clamped t: Cephes's reduction r = t - n ln 2 (in two parts) and
    q = r + r*r*P(r), shared by `exp_f32` and `_exp_em1_f32` so that their bits agree."""
    n = np.floor(t * _LOG2E + _HALF)
    r = t - n * _LN2_HI
    r = r - n * _LN2_LO
    p = _EXP_P0
    p = p * r + _EXP_P1
    p = p * r + _EXP_P2
    p = p * r + _EXP_P3
    p = p * r + _EXP_P4
    p = p * r + _EXP_P5
    return n, p * r * r + r


@_jit
def exp_f32(x):
    """e**x in float32: ``exp_f32(np.float32(1.0)) -> 2.7182817``."""
    t = x if x > _EXP_LO else _EXP_LO  # also maps NaN to a harmless value: float->int of NaN is poison
    t = t if t < _EXP_HI else _EXP_HI
    n, q = _exp_parts(t)
    p = q + _ONE
    k = i32(n)
    if _SCALEF:
        y = _ldexp_f32(p, k)
    else:
        # Two factors so that n in [-150, 128] works: subnormal results and the last binade below FLT_MAX.
        h = i32(k >> 1)
        # p * 2**h is exact and normal (p in [0.7, 1.5], |h| <= 75): an integer add on p's exponent bits, one
        # instruction fewer than building 2**h and multiplying; the rounding (subnormal results) is the second
        # factor's
        y = i32(f32(p).view(np.int32) + (h << 23)).view(np.float32) * _pow2_f32(i32(k - h))
    return y if x == x else x


_SQRT2 = f32(1.41421356237309505)
_FLT_MIN = f32(1.17549435e-38)
_TWO23 = f32(8388608.0)
# Cephes logf: log(1+f) ~ f - f*f/2 + f**3 * P(f) on sqrt(1/2)-1 <= f <= sqrt(2)-1
_LOG_P = (
    f32(7.0376836292e-2), f32(-1.1514610310e-1), f32(1.1676998740e-1), f32(-1.2420140846e-1),
    f32(1.4249322787e-1), f32(-1.6668057665e-1), f32(2.0000714765e-1), f32(-2.4999993993e-1),
    f32(3.3333331174e-1),
)
_L0, _L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8 = _LOG_P


@_jit
def log_f32(x):
    """Natural logarithm in float32: ``log_f32(np.float32(2.0)) -> 0.6931472``; log(0) = -inf."""
    tiny = x < _FLT_MIN  # subnormals have no implicit bit: scale them into the normal range first
    # Numba accepts .view() only on a value made by an np.<dtype>() call, hence the f32()/i32() wraps.
    bits = f32(x * (_TWO23 if tiny else _ONE)).view(np.int32)
    e = i32(((bits >> 23) & 0xFF) - 127) - (i32(23) if tiny else i32(0))
    m = i32((bits & 0x7FFFFF) | 0x3F800000).view(np.float32)  # mantissa in [1, 2)
    big = m > _SQRT2
    m = m * _HALF if big else m
    fe = f32(e + (i32(1) if big else i32(0)))
    f = m - _ONE
    z = f * f
    p = _L0
    p = p * f + _L1
    p = p * f + _L2
    p = p * f + _L3
    p = p * f + _L4
    p = p * f + _L5
    p = p * f + _L6
    p = p * f + _L7
    p = p * f + _L8
    y = p * f * z + fe * _LN2_LO - _HALF * z
    y = (f + y) + fe * _LN2_HI
    y = -_INF if x == _ZERO else y
    y = _NAN if x < _ZERO else y
    return y if x < _INF else x  # +inf -> inf, NaN -> NaN


_TANH_SMALL = f32(0.625)
_TANH_SAT = f32(9.5)  # tanh(9.5) rounds to 1 in float32; clamping keeps exp finite
# Cephes tanhf: tanh(x) ~ x + x**3 * P(x*x) on |x| < 0.625
_TANH_P0 = f32(-5.70498872745e-3)
_TANH_P1 = f32(2.06390887954e-2)
_TANH_P2 = f32(-5.37397155531e-2)
_TANH_P3 = f32(1.33314422036e-1)
_TANH_P4 = f32(-3.33332819422e-1)


@_jit
def _tanh_small_f32(x):
    """tanh for |x| < _TANH_SMALL: x + x**3 * P(x*x) (tanh_f32 and tanh_sigmoid_f32 take it below there)."""
    z = x * x
    p = _TANH_P0
    p = p * z + _TANH_P1
    p = p * z + _TANH_P2
    p = p * z + _TANH_P3
    p = p * z + _TANH_P4
    return p * z * x + x


@_jit
def tanh_f32(x):
    """Hyperbolic tangent in float32: ``tanh_f32(np.float32(0.5)) -> 0.46211717``; saturates to ±1."""
    a = abs(x)
    small = _tanh_small_f32(x)
    t = a if a < _TANH_SAT else _TANH_SAT  # NaN -> 9.5 here; the small branch carries the NaN
    big = _ONE - _TWO / (exp_f32(t + t) + _ONE)
    big = big if x > _ZERO else -big
    return big if a >= _TANH_SMALL else small


@_jit
def sigmoid_f32(x):
    """Logistic 1 / (1 + e**-x) in float32: ``sigmoid_f32(np.float32(0.0)) -> 0.5``; saturates to 0/1."""
    e = exp_f32(-abs(x))  # e <= 1: no overflow, and x < 0 keeps relative accuracy down to subnormals
    return (_ONE if x >= _ZERO else e) / (_ONE + e)  # NaN: e is NaN


@_jit
def _exp_em1_f32(t):
    """(e**t, e**t - 1) for t <= 0 or NaN, e**t with `exp_f32`'s bits for non-NaN t (the same steps, less its clamp
    at the top: t <= 0 here), e**t - 1 without the cancellation of e**t - 1 near t = 0: for n = 0, -1 (t > -1.04)
    it is q * 2**n + (2**n - 1) in one FMA, where 2**n - 1 is exact; below, e**t <= 0.36 and e**t - 1 is exact to
    an ulp of the result. A NaN t gives numbers; the caller puts NaN back."""
    t = t if t > _EXP_LO else _EXP_LO
    n, q = _exp_parts(t)
    k = i32(n)
    if _SCALEF:
        y = _ldexp_f32(q + _ONE, k)
        s1 = _ONE if k == i32(0) else _HALF  # 2**n for n = 0, -1 (the only ones it is used for)
    else:
        h = i32(k >> 1)
        s1 = _pow2_f32(h)  # 2**n for n = 0, -1 (h = n there, k - h = 0)
        y = (q + _ONE) * s1 * _pow2_f32(i32(k - h))
    em = q * s1 + (s1 - _ONE) if k >= i32(-1) else y - _ONE
    return y, em


@_jit
def tanh_sigmoid_f32(x):
    """(tanh(x), sigmoid(x)) in float32 from ONE exp: with e = e**-|x|, sigmoid as `sigmoid_f32` (the same bits)
    and tanh(|x|) = (1 - e*e) / (1 + e*e) = -m * (m + 2) / (2 + m * (m + 2)) with m = e - 1 from `_exp_em1_f32`, free of
    cancellation for small |x| (so no second polynomial for them: ~10 fewer vector instructions per 16 elements
    than the polynomial below 0.625 and its select). The CPU backend calls it where a kernel takes both of one
    value (an LSTM gate, the ewchain benchmark): the exp is a quarter of such a loop's work.
    ``tanh_sigmoid_f32(np.float32(1.0)) -> (0.7615942, 0.7310586)``"""
    e, m = _exp_em1_f32(-abs(x))
    sig = (_ONE if x >= _ZERO else e) / (_ONE + e)
    u = m * m + (m + m)  # e*e - 1 = m * (m + 2) in one rounding (an FMA; m + m is exact)
    th = u / (_TWO + u)  # -tanh(|x|): (e*e - 1) / (e*e + 1)
    th = np.copysign(th, x)  # tanh(-0) = -0 as torch (bit operations, no compare)
    nan = x != x
    return (x if nan else th), (x if nan else sig)


_ERF_SPLIT = f32(0.921875)
_ERF_SAT = f32(4.0)  # erf(4) rounds to 1 in float32
# Minimax fits made for tracejit (Lawson IRLS in float64, rounded to float32):
# erf(x) ~ x * A(x*x) for |x| < 0.921875 (relative error 1.6e-8 before rounding)
_ERF_A = (f32(-5.9908349e-04), f32(4.9931766e-03), f32(-2.6766613e-02), f32(1.1281816e-01),
          f32(-3.7612495e-01), f32(1.1283791e00))
# log(erfc(t)) ~ B(t) for 0.921875 <= t <= 4 (so erf = 1 - exp(B(t)) there)
_ERF_B = (f32(-2.1118383e-05), f32(4.3473241e-04), f32(-4.1723703e-03), f32(2.5122870e-02),
          f32(-1.0828541e-01), f32(-6.3334209e-01), f32(-1.1295173e00), f32(1.7518213e-04))
_EA0, _EA1, _EA2, _EA3, _EA4, _EA5 = _ERF_A
_EB0, _EB1, _EB2, _EB3, _EB4, _EB5, _EB6, _EB7 = _ERF_B


@_jit_inline
def erf_f32(x):
    """Error function in float32: ``erf_f32(np.float32(1.0)) -> 0.8427008``; erf(±inf) = ±1."""
    s = x * x
    p = _EA0
    p = p * s + _EA1
    p = p * s + _EA2
    p = p * s + _EA3
    p = p * s + _EA4
    p = p * s + _EA5
    small = p * x  # NaN stays NaN here
    a = abs(x)
    t = a if a < _ERF_SAT else _ERF_SAT
    q = _EB0
    q = q * t + _EB1
    q = q * t + _EB2
    q = q * t + _EB3
    q = q * t + _EB4
    q = q * t + _EB5
    q = q * t + _EB6
    q = q * t + _EB7
    big = _ONE - exp_f32(q)
    big = big if x > _ZERO else -big
    return big if a >= _ERF_SPLIT else small


_TWO_OVER_PI = f32(0.636619772367581343)
# pi/2 in three float32 pieces (Cody-Waite); FMA keeps q * piece from rounding before the subtraction.
_PIO2_1 = f32(1.5703125)
_PIO2_2 = f32(4.837512969970703125e-4)
_PIO2_3 = f32(7.54978995489188216e-8)
# Cephes sinf/cosf polynomials on |r| <= pi/4
_SIN_P0 = f32(-1.9515295891e-4)
_SIN_P1 = f32(8.3321608736e-3)
_SIN_P2 = f32(-1.6666654611e-1)
_COS_P0 = f32(2.443315711809948e-5)
_COS_P1 = f32(-1.388731625493765e-3)
_COS_P2 = f32(4.166664568298827e-2)
_QMAX = f32(1e9)


@_jit
def _sincos_f32(x, shift):
    """sin(x + shift * pi/2) for shift in {0, 1}: pick the sin or cos polynomial by quadrant."""
    q = np.floor(x * _TWO_OVER_PI + _HALF)
    r = x - q * _PIO2_1
    r = r - q * _PIO2_2
    r = r - q * _PIO2_3  # inf or NaN input gives r = NaN, which the polynomials propagate
    z = r * r
    s = _SIN_P0
    s = s * z + _SIN_P1
    s = s * z + _SIN_P2
    s = s * z * r + r
    c = _COS_P0
    c = c * z + _COS_P1
    c = c * z + _COS_P2
    c = c * z * z - _HALF * z + _ONE
    q = q if q > -_QMAX else -_QMAX  # keep the float->int conversion defined (NaN, inf, huge x)
    q = q if q < _QMAX else _QMAX
    j = i32(i32(q) + shift)
    y = c if (j & i32(1)) != i32(0) else s
    return -y if (j & i32(2)) != i32(0) else y


@_jit
def sin_f32(x):
    """Sine in float32: ``sin_f32(np.float32(1.0)) -> 0.84147096``; abs error 8e-8 for |x| <= 1e5."""
    return _sincos_f32(x, i32(0))


@_jit
def cos_f32(x):
    """Cosine in float32: ``cos_f32(np.float32(1.0)) -> 0.5403023``; abs error 8e-8 for |x| <= 1e5."""
    return _sincos_f32(x, i32(1))


@_jit
def relu_f32(x):
    """max(x, 0) in float32 that propagates NaN like ``np.maximum``: ``relu_f32(np.float32(-2)) -> 0.0``."""
    return _ZERO if x <= _ZERO else x


@_jit
def sign_f32(x):
    """Sign in float32 as ``np.sign``: -1, 0 or 1, NaN for NaN."""
    return _ONE if x > _ZERO else (-_ONE if x < _ZERO else x * _ZERO)


# ---------------------------------------------------------------- float64 -------------------------------
# float64 is the dtype of gradient checks, so these favour accuracy: exp/log/tanh/sigmoid are vectorizable
# polynomials (1-3 ulp); erf/sin/cos call libm.
_D_ONE = f64(1.0)
_D_HALF = f64(0.5)
_D_TWO = f64(2.0)
_D_ZERO = f64(0.0)
_D_INF = f64(np.inf)
_D_NAN = f64(np.nan)
_D_LOG2E = f64(1.4426950408889634)
_D_LN2_HI = f64(6.93147180369123816490e-01)  # fdlibm split: n * hi is exact for |n| < 2**20
_D_LN2_LO = f64(1.90821492927058770002e-10)
_D_EXP_LO = f64(-746.0)
_D_EXP_HI = f64(710.0)
# e**r - 1 - r = r*r * (1/2! + r/3! + ... + r**11/13!) on |r| <= ln2/2: truncation below 2**-60
_D_EXPM1_C = tuple(f64(1.0 / math.factorial(k)) for k in range(13, 1, -1))
_D2, _D3, _D4, _D5, _D6, _D7, _D8, _D9, _D10, _D11, _D12, _D13 = _D_EXPM1_C[::-1]


@_jit
def _pow2_f64(k):
    """2.0**k for int k in [-1022, 1023] from the exponent bits."""
    return i64((k + 1023) << 52).view(np.float64)


@_jit
def _reduce_f64(x):
    """Split x (finite, clamped) as n*ln2 + r with |r| <= ln2/2; returns (n, r, e**r - 1)."""
    n = np.floor(x * _D_LOG2E + _D_HALF)
    r = x - n * _D_LN2_HI
    r = r - n * _D_LN2_LO
    p = _D13
    p = p * r + _D12
    p = p * r + _D11
    p = p * r + _D10
    p = p * r + _D9
    p = p * r + _D8
    p = p * r + _D7
    p = p * r + _D6
    p = p * r + _D5
    p = p * r + _D4
    p = p * r + _D3
    p = p * r + _D2
    return n, r, p * r * r + r


@_jit
def exp_f64(x):
    """e**x in float64: ``exp_f64(1.0) -> 2.718281828459045``."""
    t = x if x > _D_EXP_LO else _D_EXP_LO
    t = t if t < _D_EXP_HI else _D_EXP_HI
    n, r, em = _reduce_f64(t)
    k = i64(n)
    h = i64(k >> 1)
    y = (em + _D_ONE) * _pow2_f64(h) * _pow2_f64(i64(k - h))
    return y if x == x else x


_D_SQRT2 = f64(1.4142135623730951)
_D_DBL_MIN = f64(2.2250738585072014e-308)
_D_TWO54 = f64(18014398509481984.0)
# log(1+f) = 2*atanh(s), s = f/(2+f): 2s + s*(s*s)*R(s*s), fdlibm's Lg1..Lg7 minimax coefficients
_LG1 = f64(6.666666666666735130e-01)
_LG2 = f64(3.999999999940941908e-01)
_LG3 = f64(2.857142874366239149e-01)
_LG4 = f64(2.222219843214978396e-01)
_LG5 = f64(1.818357216161805012e-01)
_LG6 = f64(1.531383769920937332e-01)
_LG7 = f64(1.479819860511658591e-01)


@_jit
def log_f64(x):
    """Natural logarithm in float64: ``log_f64(2.0) -> 0.6931471805599453``; log(0) = -inf."""
    tiny = x < _D_DBL_MIN
    bits = f64(x * (_D_TWO54 if tiny else _D_ONE)).view(np.int64)
    e = i64(((bits >> 52) & 0x7FF) - 1023) - (i64(54) if tiny else i64(0))
    m = i64((bits & 0xFFFFFFFFFFFFF) | 0x3FF0000000000000).view(np.float64)
    big = m > _D_SQRT2
    m = m * _D_HALF if big else m
    fe = f64(e + (i64(1) if big else i64(0)))
    f = m - _D_ONE
    s = f / (_D_TWO + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    hfsq = _D_HALF * f * f
    y = fe * _D_LN2_HI - ((hfsq - (s * (hfsq + t1 + t2) + fe * _D_LN2_LO)) - f)
    y = -_D_INF if x == _D_ZERO else y
    y = _D_NAN if x < _D_ZERO else y
    return y if x < _D_INF else x


_D_TANH_SAT = f64(20.0)  # tanh(20) rounds to 1 in float64


@_jit
def _expm1_f64(x):
    """e**x - 1 for finite x in [-746, 710] without cancellation near 0."""
    n, r, em = _reduce_f64(x)
    k = i64(n)
    s = _pow2_f64(k)  # |x| <= 40 where this is used, so one factor suffices
    return em * s + (s - _D_ONE)


@_jit
def tanh_f64(x):
    """Hyperbolic tangent in float64 via expm1: ``tanh_f64(0.5) -> 0.46211715726000974``."""
    a = abs(x)
    a = a if a < _D_TANH_SAT else _D_TANH_SAT
    em = _expm1_f64(a + a)
    y = em / (em + _D_TWO)
    y = y if x >= _D_ZERO else -y
    return y if x == x else x


@_jit
def sigmoid_f64(x):
    """Logistic 1 / (1 + e**-x) in float64: ``sigmoid_f64(0.0) -> 0.5``."""
    e = exp_f64(-abs(x))
    return (_D_ONE if x >= _D_ZERO else e) / (_D_ONE + e)


@_jit
def tanh_sigmoid_f64(x):
    """(tanh(x), sigmoid(x)) in float64: the float32 twin's interface, computed as the two functions."""
    return tanh_f64(x), sigmoid_f64(x)


@_jit
def erf_f64(x):
    """Error function in float64 (libm, scalar): ``erf_f64(1.0) -> 0.8427007929497149``."""
    return math.erf(x)


@_jit
def sin_f64(x):
    """Sine in float64 (libm, scalar)."""
    return math.sin(x)


@_jit
def cos_f64(x):
    """Cosine in float64 (libm, scalar)."""
    return math.cos(x)


@_jit
def relu_f64(x):
    """max(x, 0) in float64, NaN-propagating like ``np.maximum``."""
    return _D_ZERO if x <= _D_ZERO else x


@_jit
def sign_f64(x):
    """Sign in float64 as ``np.sign``."""
    return _D_ONE if x > _D_ZERO else (-_D_ONE if x < _D_ZERO else x * _D_ZERO)


# Without fastmath: the kernels' `arcp` lets LLVM divide by a constant or loop-invariant divisor as a multiplication
# by its reciprocal (1 ulp off), which moves trunc(a / b) to the next integer where the quotient is one (x / 0.3 for
# 818 of 6000 integers). The flags are per instruction, so this division stays IEEE's when LLVM inlines the call.
_jit_ieee = helper(cache=True, fastmath=False, error_model="numpy")  # False, not left out: callees inherit


@_jit_ieee
def truncdiv_f32(a, b):
    """trunc(a / b) in float32 with an IEEE division: PyTorch's div(rounding_mode="trunc") bit for bit."""
    return np.trunc(a / b)


@_jit_ieee
def truncdiv_f64(a, b):
    """trunc(a / b) in float64 with an IEEE division."""
    return np.trunc(a / b)


# remainder and fmod without fastmath too: nsz would lose PyTorch's -0.0 (remainder(-2.0, 2.0)), nnan/ninf the
# NaN of x % 0 and the x of fmod(x, inf)


@_jit_ieee
def fmod_f32(a, b):
    """C's fmod in float32 (exact: the result is representable)."""
    return np.fmod(a, b)


@_jit_ieee
def fmod_f64(a, b):
    """C's fmod in float64."""
    return np.fmod(a, b)


@_jit_ieee
def remainder_f32(a, b):
    """PyTorch's remainder in float32: fmod moved by b where it is non-zero and its sign differs from b's."""
    m = np.fmod(a, b)
    return m + b if (m != 0 and ((b < 0) != (m < 0))) else m


@_jit_ieee
def remainder_f64(a, b):
    """PyTorch's remainder in float64."""
    m = np.fmod(a, b)
    return m + b if (m != 0 and ((b < 0) != (m < 0))) else m


@intrinsic
def _llvm_maximum(typingctx, a, b):
    if not isinstance(a, types.Float) or not isinstance(b, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        x, y = args[0], context.cast(builder, args[1], sig.args[1], sig.args[0])
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(x.type, [x.type, x.type]),
                                            f"llvm.maximum.f{sig.args[0].bitwidth}")
        return builder.call(fn, [x, y])

    return a(a, b), codegen


@_jit
def maximum(a, b):
    """max(a, b) for floats of a's type, NaN winning (either NaN gives NaN), as NumPy's max: LLVM's
    llvm.maximum, whose reductions LLVM vectorizes. The spelling `b if (b > a or b != b) else a` computes the
    same but leaves a reduction over it scalar, one compare and select per element (a softmax's or a
    cross-entropy's row max: 0.72 vs 0.025 ms for 1024 rows of 512). Which zero a max of -0.0 and +0.0 is
    depends on the order of the vectorized reduction (the kernels' `nsz`), as it does in NumPy. A jitted
    function around the intrinsic, so the rendered text also runs as Python (`py_func`)."""
    return _llvm_maximum(a, b)


# Op name -> (float32 function, float64 function). The code generator renders a call to the function
# matching the kernel's compute dtype, importing it by its ``__name__`` (names are stable API).
FUNCS = {
    "exp": (exp_f32, exp_f64),
    "log": (log_f32, log_f64),
    "tanh": (tanh_f32, tanh_f64),
    "sigmoid": (sigmoid_f32, sigmoid_f64),
    "erf": (erf_f32, erf_f64),
    "sin": (sin_f32, sin_f64),
    "cos": (cos_f32, cos_f64),
    "relu": (relu_f32, relu_f64),
    "sign": (sign_f32, sign_f64),
}
