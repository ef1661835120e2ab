"""Window kernels for the CPU backend: conv2d forward with fused bias/ReLU/pool epilogues (conv.py), its
backward (backward.py, weight_grad.py), the per-image GEMM form (im2col.py), standalone pooling (pool.py), and
the steps that turn window nodes and fuse_window's patterns into calls of these (steps.py)."""
