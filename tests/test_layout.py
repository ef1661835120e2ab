"""The package's import structure keeps the architecture's layers apart (DESIGN.md): read from the source with
`ast`, every import counted (module level and inside functions, relative and absolute).

- the op table imports no tensor code (gradient rules reach ops through `dispatch`);
- the core -- dispatch, ops, autograd, dtypes, indexing, printing, random, factories, the Tensor API -- has no
  import cycle;
- backends import no nn/optim (they compile graphs, they do not know layers), and the passes no backend;
- nothing looks modules up by name in sys.modules to get around the above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tracejit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every tracejit module `path` imports (a `from X import name` counts X, and X.name when that is a module)."""
    tree = ast.parse(path.read_text())
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("tracejit") and m in MODULES}


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_op_table_imports_no_tensor_code():
    tensor_code = ("tracejit._tensor", "tracejit.factories", "tracejit.nn", "tracejit.optim")
    bad = {m for m in GRAPH["tracejit.ops"] if any(_under(m, t) for t in tensor_code)}
    assert not bad, f"tracejit/ops.py imports {sorted(bad)}"


CORE = ("tracejit.dispatch", "tracejit.ops", "tracejit.autograd", "tracejit.dtypes", "tracejit.errors",
        "tracejit.indexing", "tracejit._printing", "tracejit.random", "tracejit.factories", "tracejit._tensor",
        "tracejit.ref_kernels", "tracejit.devices")


def test_the_core_imports_nothing_by_name_at_run_time():
    # importlib.import_module / __import__ would hide an import from the checks above (the op table once reached
    # the tensor module that way)
    for name, path in MODULES.items():
        if any(_under(name, c) for c in CORE):
            text = path.read_text()
            assert "import_module(" not in text and "__import__(" not in text, name


def test_the_core_has_no_import_cycle():
    core = {m for m in GRAPH if any(_under(m, c) for c in CORE)}
    # a package imports its submodules on purpose (autograd/__init__ re-exports); edges into a package's own
    # __init__ from its submodules are what would make a cycle
    edges = {m: {d for d in GRAPH[m] if d in core and d != m and not _under(m, d)} for m in core}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycle = path[path.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(core):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("layer, forbidden", [
    ("tracejit.compiler.backends", ("tracejit.nn", "tracejit.optim", "tracejit.utils", "tracejit.datasets")),
    ("tracejit.compiler.passes", ("tracejit.compiler.backends",)),
])
def test_layers_do_not_reach_up(layer, forbidden):
    bad = {(m, d) for m, deps in GRAPH.items() if _under(m, layer) for d in deps
           if any(_under(d, f) for f in forbidden)}
    assert not bad, "\n".join(f"{m} imports {d}" for m, d in sorted(bad))


def test_only_the_backend_protocol_is_read_outside_the_backends():
    # report, bench, the command line and the compiler's front half read Backend/Program attributes, never a
    # backend's modules (tracejit.set_num_threads, PyTorch's CPU thread setting, is the one door into cpu/)
    allowed = {"tracejit"}
    bad = {(m, d) for m, deps in GRAPH.items() if not _under(m, "tracejit.compiler.backends") and m not in allowed
           for d in deps if _under(d, "tracejit.compiler.backends") and d != "tracejit.compiler.backends"
           and not _under(d, "tracejit.compiler.backends.cache")}
    assert not bad, "\n".join(f"{m} imports {d}" for m, d in sorted(bad))


def test_the_backend_registry_and_the_devices_import_no_numba():
    # asking which backends exist, or whether CUDA is available, must not load Numba (eager users never do)
    import subprocess
    import sys

    code = ("import sys, tracejit; from tracejit.compiler import backends; tracejit.cuda.is_available(); "
            "tracejit.device('cuda:1'); backends.available.__name__; assert 'numba' not in sys.modules, 'numba'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_importing_tracejit_and_an_eager_sigmoid_load_scipy_special_only_when_the_reference_needs_it():
    # scipy.special is ~0.15 s of a ~0.45 s `import tracejit`: the reference kernels of sigmoid and erf import it
    import subprocess
    import sys

    code = ("import sys, numpy as np, tracejit; assert 'scipy.special' not in sys.modules, 'at import'; "
            "from tracejit import ops; x = np.array([-1.0, 0.0, 2.0], np.float32); "
            "y = ops.SIGMOID.ref(x); assert 'scipy.special' in sys.modules; "
            "assert np.allclose(y, 1 / (1 + np.exp(-x))), y")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_no_module_reaches_others_through_sys_modules_by_name():
    offenders = [str(p.relative_to(PKG.parent)) for p in PKG.rglob("*.py")
                 if 'sys.modules["tracejit.' in p.read_text() or "sys.modules['tracejit." in p.read_text()]
    allowed = {"tracejit/compiler/state.py"}  # (nn/optim, found only if the user imported them: never imported)
    assert set(offenders) <= allowed, offenders


def test_tracejit_tensor_is_the_factory_and_no_module_hides_behind_it():
    import tracejit

    assert callable(tracejit.tensor) and tracejit.tensor.__module__ == "tracejit.factories"
    assert "tracejit.tensor" not in MODULES
