"""Generic PyTorch machinery: custom ops, safe checkpoints, training stats, distributed helpers."""
