"""Custom ops with pure-PyTorch references and optional CUDA kernels (METHOD.md §11).

bias_act, upfirdn2d (with CUDA kernels in cuda/, built lazily on first CUDA use), conv2d_resample,
conv2d_gradfix, grid_sample_gradfix, fma.  Import the submodules directly:
`from torch_utils.ops import bias_act, upfirdn2d`.
"""
