"""GEMM for the CPU backend: tracejit's own float32 kernel (gemm.py), the one BLAS entry generated code calls
(calls.py), BLAS thread control (control.py) and the split GEMMs of generated segments (segment.py)."""
