"""`tracejit.backends`, as `torch.backends`: the flags PyTorch programs set or ask about (`mps.is_available()`,
`cudnn.benchmark = True`). tracejit runs neither MPS nor cuDNN: the answers say so, and the flags are kept but
change nothing. (The compiler's backends -- cpu, reference -- are tracejit.compiler.backends.)"""

from . import cuda, cudnn, mps  # noqa: F401
