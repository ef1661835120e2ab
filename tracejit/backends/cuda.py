"""`torch.backends.cuda`: the flags (`matmul.allow_tf32`) are accepted and change nothing in tracejit."""


class _Matmul:
    allow_tf32 = False
    allow_fp16_reduced_precision_reduction = True
    allow_bf16_reduced_precision_reduction = True


matmul = _Matmul()


def is_built() -> bool:
    return False
