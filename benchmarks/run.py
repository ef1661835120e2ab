"""Run the benchmarks from a source checkout; the same as `python -m tracejit bench` (the workloads and the
harness live in the `tracejit.bench` package so that the installed command works from any directory).

    python benchmarks/run.py --peers --json results.json
"""

import sys

from tracejit.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
