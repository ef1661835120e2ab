"""``torch.nn.parameter``'s names: `Parameter` (tracejit.nn.module's)."""

from .module import Parameter

__all__ = ["Parameter"]
