"""Benchmarks shared by `python -m tracejit bench` and `benchmarks/run.py`: the workloads (`workloads.py`),
their PyTorch/JAX versions (`peers.py`), the timing harness (`harness.py`) and the command (`cli.py`).
"""

from .harness import copy_bandwidth, format_table, measure_load, other_load, run_benchmarks  # noqa: F401
from .workloads import WORKLOADS  # noqa: F401
