"""tracejit.nn: Module, Parameter, containers, layers, losses, ``functional`` and ``init``.

``import tracejit.nn as nn`` gives the names PyTorch tutorials use (nn.Linear, nn.Conv2d, ...).
"""

from . import functional, init, modules, parallel, parameter, utils  # noqa: F401  (modules: PyTorch's paths, nn.modules.linear...)
from .distance import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential  # noqa: F401
from .parallel import DataParallel  # noqa: F401
from .upsampling import *  # noqa: F401,F403
