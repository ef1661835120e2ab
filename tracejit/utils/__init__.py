"""Utilities that mirror ``torch.utils``: ``tracejit.utils.data`` (datasets, samplers, DataLoader)."""

from . import data

__all__ = ["data"]
