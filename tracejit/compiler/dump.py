"""TRACEJIT_DUMP: for every compilation, the IR after each stage (text + .dot), generated kernel source,
the explanation, written under one directory per compiled variant."""

from __future__ import annotations

import os
import re

from .ir import Graph, print_graph, to_dot


def dump_root(explicit: str | None) -> str | None:
    return explicit or os.environ.get("TRACEJIT_DUMP") or None


class Dumper:
    """Writes `<root>/<function>.<variant>/NN_stage.ir` (+ `.dot`), `kernels/*.py`, `explain.txt`."""

    def __init__(self, root: str, fn_name: str, variant: int):
        safe = re.sub(r"[^\w.-]", "_", fn_name)
        self.dir = os.path.join(root, f"{safe}.{variant}")
        os.makedirs(self.dir, exist_ok=True)
        self.written: list[str] = []

    def _write(self, rel: str, text: str) -> str:
        path = os.path.join(self.dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        self.written.append(path)
        return path

    def stage(self, name: str, g: Graph) -> None:
        notes = "".join(f"# {n}\n" for n in g.notes)  # e.g. why neighbours were not fused
        self._write(f"{name}.ir", print_graph(g) + "\n" + notes)
        self._write(f"{name}.dot", to_dot(g) + "\n")

    def kernel(self, name: str, source: str) -> None:
        self._write(os.path.join("kernels", f"{name}.py"), source)

    def text(self, name: str, text: str) -> None:
        self._write(name, text)
