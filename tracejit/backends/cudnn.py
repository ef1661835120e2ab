"""`torch.backends.cudnn`: tracejit does not call cuDNN; the flags are accepted and change nothing."""

enabled = True
benchmark = False
deterministic = False
allow_tf32 = True


def is_available() -> bool:
    return False


def version():
    return None
