"""The PyTorch API surface tracejit provides: `python -m tracejit info --api` lists it by namespace, and
``--vs-torch`` compares it with the installed PyTorch's (how many of its public names exist here, which do not).

A namespace's names are its public attributes (no leading underscore), without the modules it happens to import
(``np``, ``math``) and without tracejit's own internals (the op table, the dispatcher); tracejit's additions to
PyTorch's API (``compile``, ``explain``, ``SyntheticImages``, ...) are listed as such when PyTorch is there to tell.
"""

from __future__ import annotations
import __future__

import importlib
import inspect
import textwrap
import types

# (PyTorch's name, tracejit's module or "Tensor") -- in the order a program meets them
NAMESPACES = [
    ("torch", "tracejit"),
    ("torch.Tensor", "Tensor"),
    ("torch.nn", "tracejit.nn"),
    ("torch.nn.functional", "tracejit.nn.functional"),
    ("torch.nn.init", "tracejit.nn.init"),
    ("torch.nn.utils", "tracejit.nn.utils"),
    ("torch.optim", "tracejit.optim"),
    ("torch.optim.lr_scheduler", "tracejit.optim.lr_scheduler"),
    ("torch.autograd", "tracejit.autograd"),
    ("torch.linalg", "tracejit.linalg"),
    ("torch.utils.data", "tracejit.utils.data"),
    ("torch.serialization", "tracejit.serialization"),
    ("torch.cuda", "tracejit.cuda"),
    ("torch.accelerator", "tracejit.accelerator"),
    ("torch.backends.mps", "tracejit.backends.mps"),
    ("torchvision.transforms", "tracejit.transforms"),
    ("torchvision.datasets", "tracejit.datasets"),
]

# tracejit's own modules and internals that `import tracejit` exposes but PyTorch programs never name
_INTERNAL = {"tracejit": {"OPS", "OpError", "DType", "bool_", "dispatch", "dtypes", "errors", "factories",
                          "functions", "indexing", "ops", "ref_kernels", "scalar", "devices", "random"}}
_LAZY = {"tracejit": ("compile", "explain", "set_num_threads", "get_num_threads", "datasets", "transforms", "cuda",
                      "accelerator", "backends")}
_SUBMODULES = {name for _, name in NAMESPACES} | {"tracejit.utils", "tracejit.backends", "tracejit.optim",
                                                  "tracejit.nn.modules"}


def _namespace(name: str):
    if name == "Tensor":
        from ._tensor import Tensor

        return Tensor
    return importlib.import_module(name)


def _ours(module_name: str, name: str, obj) -> bool:
    if name.startswith("_") or name in _INTERNAL.get(module_name, ()):
        return False
    if isinstance(obj, types.ModuleType):  # a namespace of its own (nn, optim, ...), not an incidental import
        return obj.__name__ in _SUBMODULES and obj.__name__.startswith(module_name + ".")
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return (getattr(obj, "__module__", "") or "").startswith("tracejit")
    return not isinstance(obj, __future__._Feature)  # constants and objects (dtypes, default_generator)


def names(module_name: str) -> list[str]:
    """The public names tracejit provides in one namespace of NAMESPACES."""
    ns = _namespace(module_name)
    if module_name == "Tensor":
        return sorted(n for n in dir(ns) if not n.startswith("_"))
    exported = getattr(ns, "__all__", None)
    if exported is not None:  # the module says what it exports; its namespaces (optim.lr_scheduler) come too
        out = set(exported) | {n for n, obj in vars(ns).items()
                               if isinstance(obj, types.ModuleType) and _ours(module_name, n, obj)}
    else:
        out = {n for n, obj in vars(ns).items() if _ours(module_name, n, obj)}
    out |= {n for n in _LAZY.get(module_name, ()) if hasattr(ns, n)}
    return sorted(out)


def _torch_names(torch_name: str) -> set[str] | None:
    try:
        if torch_name == "torch.Tensor":
            import torch

            return {n for n in dir(torch.Tensor) if not n.startswith("_")}
        mod = importlib.import_module(torch_name)
    except ImportError:
        return None
    return {n for n in dir(mod) if not n.startswith("_")}


def _wrap(items, indent: str = "    ") -> str:
    return textwrap.fill(" ".join(items), width=116, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False)


def listing(vs_torch: bool = False) -> str:
    from . import __version__

    lines = [f"The PyTorch API surface of tracejit {__version__} (`import tracejit as torch`), by namespace."]
    total = 0
    for torch_name, ours_name in NAMESPACES:
        ours = names(ours_name)
        total += len(ours)
        theirs = _torch_names(torch_name) if vs_torch else None
        head = f"{torch_name} ({len(ours)} names)"
        if theirs is not None:
            common = [n for n in ours if n in theirs]
            share = len(common) / len(theirs) if theirs else 1.0
            head = (f"{torch_name}: {len(common)} of the installed {torch_name.split('.')[0]}'s {len(theirs)} "
                    f"names ({100 * share:.0f}%)")
        lines += ["", head]
        if theirs is None:
            lines.append(_wrap(ours))
            continue
        lines.append(_wrap(n for n in ours if n in theirs))
        extra = [n for n in ours if n not in theirs]
        if extra:
            lines += ["  tracejit's own:", _wrap(extra)]
        missing = sorted(theirs.difference(ours))
        if missing:
            lines += ["  not in tracejit:", _wrap(missing)]
    lines += ["", f"{total} names in {len(NAMESPACES)} namespaces. Ops are composites of the primitives "
                  f"`python -m tracejit ops` lists; what a name does differently from PyTorch is in its docstring."]
    if vs_torch and _torch_names("torch") is None:
        lines.append("(--vs-torch: PyTorch is not installed here, so there was nothing to compare with)")
    return "\n".join(lines)
