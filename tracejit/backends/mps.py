"""`torch.backends.mps`: Apple's Metal devices. tracejit has no MPS backend."""


def is_available() -> bool:
    return False


def is_built() -> bool:
    return False
