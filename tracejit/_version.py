"""The package version, in a module of its own: the kernel cache keys on it without importing the package
(and with it nn and optim, which backends must not know)."""

__version__ = "0.1.0"
