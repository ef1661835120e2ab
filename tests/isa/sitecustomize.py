"""Run the test suite (or any command) as if on an older CPU: with this folder on PYTHONPATH and
TRACEJIT_FAKE_ISA=avx2 (no AVX-512) or sse4.2 (no AVX at all), LLVM -- and so every Numba kernel, tracejit's
GEMM shape included -- sees only that ISA's features, in this process and in every subprocess a test starts.

    NUMBA_CACHE_DIR=/tmp/nc-avx2 TRACEJIT_CACHE_DIR=/tmp/tj-avx2 TRACEJIT_FAKE_ISA=avx2 \\
        PYTHONPATH=$PWD/tests/isa python -m pytest -n 2 -q -p no:cacheprovider

Give such a run its own NUMBA_CACHE_DIR: Numba keys its cache on the real CPU's name. Give PYTHONPATH as an
absolute path: a tiered compile's spawned child runs in another directory, and with a relative one it would compile
for the real CPU (the parent then finds nothing of it in the cache). The x86-64-v3 kernel pack fits such a run."""

import os

# avx2 is a Zen 3 (AVX2 + FMA): beside AVX-512, what Zen 4/5 added that LLVM can use in vector code (GFNI showed
# up as vgf2p8affineqb in "AVX2" kernels), AVX-VNNI and its relatives
_OFF = {"avx2": ("avx512", "gfni", "avxvnni", "avxifma", "avxneconvert"),
        "sse4.2": ("avx512", "avx", "fma", "f16c", "gfni", "vaes", "vpclmulqdq")}
_isa = os.environ.get("TRACEJIT_FAKE_ISA", "")
if _isa:
    import llvmlite.binding as _llvm

    _real = _llvm.get_host_cpu_features

    def _restricted():
        features = _real()
        for name in [k for k in features if k.startswith(_OFF[_isa])]:
            features[name] = False
        return features

    _llvm.get_host_cpu_features = _restricted
