"""`tracejit.nn.modules`: PyTorch's module paths -- ``torch.nn.modules.linear.Linear``,
``torch.nn.modules.loss._Loss``, ``torch.nn.modules.batchnorm._BatchNorm``, ``nn.modules.module.Module`` -- for code
that names classes by them. Every submodule PyTorch has here resolves a name to tracejit.nn's class of that name
when it is asked for (so layers added to tracejit.nn later are found too); PyTorch's private base classes map to
tracejit's (``_ConvNd`` -> the conv layer, ``_NormBase`` -> ``_BatchNorm``, ...).
"""

from __future__ import annotations

import sys
import types

# PyTorch's submodules of torch.nn.modules
SUBMODULES = ("activation", "adaptive", "batchnorm", "channelshuffle", "container", "conv", "distance", "dropout",
              "flatten", "fold", "instancenorm", "lazy", "linear", "loss", "module", "normalization", "padding",
              "pixelshuffle", "pooling", "rnn", "sparse", "transformer", "upsampling", "utils")
# PyTorch's private base classes: the tracejit names tried in order
PRIVATE = {"_ConvNd": ("_ConvNd", "Conv2d"), "_ConvTransposeNd": ("_ConvTransposeNd", "ConvTranspose2d"),
           "_NormBase": ("_NormBase", "_BatchNorm"), "_DropoutNd": ("_DropoutNd", "Dropout"),
           "_MaxPoolNd": ("_MaxPoolNd", "MaxPool2d"), "_AvgPoolNd": ("_AvgPoolNd", "AvgPool2d"),
           "_AdaptiveAvgPoolNd": ("_AdaptiveAvgPoolNd", "AdaptiveAvgPool2d"), "_InstanceNorm": ("_InstanceNorm",),
           "_RNNBase": ("RNNBase", "_RNNBase"), "RNNBase": ("RNNBase", "_RNNBase")}


def resolve(name: str):
    """tracejit.nn's object for PyTorch's name `name` under torch.nn.modules (AttributeError if none)."""
    from ... import nn  # (loaded: this is one of its modules)
    from .. import container, layers, loss, module
    places = [nn, layers, loss, module, container]
    places += [m for m in vars(nn).values() if isinstance(m, types.ModuleType)
               and m.__name__.startswith(nn.__name__ + ".") and not m.__name__.startswith(__name__)]
    for candidate in PRIVATE.get(name, (name,)):
        for place in places:
            obj = getattr(place, candidate, None)
            if obj is not None and not isinstance(obj, types.ModuleType):
                return obj
    raise AttributeError(f"tracejit.nn has no counterpart of torch.nn.modules' {name!r}")


class _PathModule(types.ModuleType):
    """``torch.nn.modules.<sub>``: names resolve to tracejit.nn's."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return resolve(name)
        except AttributeError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None

    def __dir__(self):
        from ... import nn

        return sorted(set(super().__dir__()) | {n for n in dir(nn) if not n.startswith("_")})


for _sub in SUBMODULES:
    _m = _PathModule(f"{__name__}.{_sub}", f"PyTorch's torch.nn.modules.{_sub}: names resolve to tracejit.nn's.")
    globals()[_sub] = _m
    sys.modules[_m.__name__] = _m  # so that `import tracejit.nn.modules.linear` works too


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return resolve(name)
