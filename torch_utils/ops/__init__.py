"""Custom ops with pure-PyTorch references and optional CUDA kernels."""
