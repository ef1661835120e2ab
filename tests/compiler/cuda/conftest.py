"""The CUDA backend's tests. sim/ runs under Numba's CUDA simulator, which must be switched on before numba.cuda is
first imported: test_simulator.py runs it in a subprocess with NUMBA_ENABLE_CUDASIM=1, and a plain pytest run
(without that variable) does not collect it here. test_gpu.py needs a real GPU (marked `cuda`, deselected by
default: `pytest -m cuda`); it runs sim/ on the GPU (TRACEJIT_CUDA_TESTS=gpu)."""

import os

RUN_SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or os.environ.get("TRACEJIT_CUDA_TESTS") == "gpu"
collect_ignore = [] if RUN_SIM else ["sim"]
