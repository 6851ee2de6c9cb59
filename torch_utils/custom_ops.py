"""Lazy builder for the optional CUDA kernels of `torch_utils.ops`.

A plugin is compiled with ninja through `torch.utils.cpp_extension.load` the first time an op
runs on a CUDA tensor, never at import.  The extension name carries a hash of the sources (and
of the torch/CUDA versions), so the build directory in the torch extensions dir acts as a cache:
editing a kernel gives a new name and a fresh build, an unchanged kernel is loaded from disk.

Anything that goes wrong (no CUDA device, no toolkit, no ninja, a compiler error, a missing
symbol) turns into ONE warning per plugin and a `None` result; the caller then runs its
pure-PyTorch reference, which is the specification anyway.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from types import ModuleType

import torch

verbosity = 'brief'  # 'none' | 'brief' | 'full' (full shows the compiler output)

_plugins: dict[str, ModuleType | None] = {}
build_errors: dict[str, str] = {}  # module_name → the whole text of its failure (compiler output included)

_OPS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ops')


def _source_hash(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.basename(path).encode())
        with open(path, 'rb') as file:
            digest.update(file.read())
    digest.update(torch.__version__.encode())
    digest.update(str(torch.version.cuda).encode())
    return digest.hexdigest()[:16]


def _why_unavailable() -> str | None:
    """A reason a CUDA plugin cannot be built here, or None when building is worth a try."""
    if not torch.cuda.is_available():
        return 'no CUDA device'
    from torch.utils import cpp_extension
    if cpp_extension.CUDA_HOME is None:
        return 'no CUDA toolkit found (set CUDA_HOME)'
    if not cpp_extension.is_ninja_available():
        return 'ninja is not installed'
    return None


def get_plugin(module_name: str, sources: list[str], headers: list[str] = (),
               extra_cuda_cflags: list[str] = ()) -> ModuleType | None:
    """Build (or load from the cache) a CUDA extension; None, with one warning, on failure.

    module_name: stem of the extension, e.g. 'bias_act_plugin'.
    sources: file names relative to torch_utils/ops/ (.cpp bindings and .cu kernels).
    headers: further files that only enter the source hash.
    """
    if module_name in _plugins:
        return _plugins[module_name]
    plugin = None
    reason = _why_unavailable()
    if reason is None:
        try:
            source_paths = [os.path.join(_OPS_DIR, s) for s in sources]
            header_paths = [os.path.join(_OPS_DIR, h) for h in headers]
            name = f'{module_name}_{_source_hash(source_paths + header_paths)}'
            from torch.utils import cpp_extension
            if verbosity != 'none':
                print(f'Setting up CUDA plugin "{module_name}"... ', end='', flush=True)
            plugin = cpp_extension.load(
                name=name, sources=source_paths, extra_include_paths=[_OPS_DIR],
                extra_cflags=['-O3'], extra_cuda_cflags=['-O3', *extra_cuda_cflags],
                verbose=(verbosity == 'full'))
            if verbosity != 'none':
                print('done.', flush=True)
        except Exception as error:  # any build/load failure means: use the reference
            if verbosity != 'none':
                print('failed.', flush=True)
            reason = f'{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ""}'
            build_errors[module_name] = f'{type(error).__name__}: {error}'
            plugin = None
    if plugin is None:
        warnings.warn(f'CUDA plugin "{module_name}" unavailable ({reason}); '
                      f'falling back to the pure-PyTorch reference implementation.')
    _plugins[module_name] = plugin
    return plugin


def passes_self_test(module_name: str, self_test) -> bool:
    """Run a freshly loaded plugin's self-test; on an exception or a wrong answer warn once
    (the caller then keeps to the reference).  Catches what building cannot: a kernel compiled
    for another GPU architecture, a broken launch, wrong numbers."""
    try:
        ok = bool(self_test())
        reason = 'its results disagree with the reference'
    except Exception as error:
        ok = False
        reason = f'{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ""}'
    if not ok:
        warnings.warn(f'CUDA plugin "{module_name}" failed its self-test ({reason}); '
                      f'falling back to the pure-PyTorch reference implementation.')
    return ok
