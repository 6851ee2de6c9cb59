"""Build the CUDA plugins (bias_act, upfirdn2d) on a machine without a GPU: do they compile for
the GPU they will meet? Run by bench/cuda_build_check.sh (``make cuda-build-check``), inside a
Python whose torch is a CUDA build, with an nvcc of torch's CUDA major version:

    python bench/cuda_build_check.py --out=cuda_build_check/result.json

The build goes through the project's own loader (``torch_utils.ops.<op>._plugin()`` →
``torch_utils.custom_ops.get_plugin`` → ``torch.utils.cpp_extension.load``): the same sources,
flags and extension names as on a GPU, for the architectures of ``TORCH_CUDA_ARCH_LIST``. Two
things are replaced in this process only, because each needs a device: the loader's GPU gate
(``torch.cuda.is_available``) and the self-test that launches a kernel. Each built module is then
imported and called with CPU tensors, which its own check must refuse (no GPU is touched).

Writes OUT (JSON: versions, the architecture flags, per plugin built / seconds / compiler warnings /
error / the call's answer) after each step; the compiler output goes to stdout. Exit 0 when both
plugins built and imported, 1 otherwise (the JSON says why).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# A call with CPU tensors: the plugin's first check must answer, and nothing reaches a GPU.
CPU_CALLS = {
    'bias_act': lambda m, torch: m.bias_act_forward(torch.zeros(2, 3), torch.zeros(3), 1, 1, 0.2, 1.0, -1.0),
    'upfirdn2d': lambda m, torch: m.upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(1, 1), 1, 1, 1, 1, 0, 0, 0, 0),
}


def version_lines(args: list[str]) -> list[str] | None:
    """The output lines of ``args`` (a --version call), None when it cannot run."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (proc.stdout or proc.stderr).strip().splitlines() or None


def cuda_major(text: str | None) -> int | None:
    """13 for '13.0', or for nvcc's 'Cuda compilation tools, release 13.0, V13.0.88'."""
    match = re.search(r'(?:release )?(\d+)\.\d+', text or '')
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def stdout_to(path: str):
    """File descriptor 1 (where ninja and the compilers print, below Python) to ``path``."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, 'w', encoding='utf-8') as f:
        os.dup2(f.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def check(out: str) -> int:
    import dnnlib   # json_text: valid JSON whatever the result holds
    result: dict = dict(started=time.strftime('%Y-%m-%dT%H:%M:%S'), plugins={})

    def save() -> None:
        tmp = out + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(dnnlib.json_text(result, indent=2))
        os.replace(tmp, out)

    def stop(message: str) -> int:
        result['error'] = message
        save()
        print(f'error: {dnnlib.safe_line(message)}', file=sys.stderr, flush=True)
        return 1

    import torch
    from torch.utils import cpp_extension
    nvcc = os.path.join(cpp_extension.CUDA_HOME, 'bin', 'nvcc') if cpp_extension.CUDA_HOME else None
    nvcc_version = version_lines([nvcc, '--version']) if nvcc else None
    cxx = os.environ.get('CXX', 'c++')
    result['env'] = dict(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
                         cuda_home=cpp_extension.CUDA_HOME, nvcc=nvcc_version[-2:] if nvcc_version else None,
                         cxx=shutil.which(cxx), cxx_version=(version_lines([cxx, '--version']) or [None])[0],
                         ninja=cpp_extension.is_ninja_available(),
                         TORCH_CUDA_ARCH_LIST=os.environ.get('TORCH_CUDA_ARCH_LIST'),
                         MAX_JOBS=os.environ.get('MAX_JOBS'))
    save()
    if torch.version.cuda is None:
        return stop(f'torch {torch.__version__} is not a CUDA build (torch.version.cuda is None); '
                    f'run this with a CUDA build of torch (bench/cuda_build_check.sh makes one)')
    if nvcc_version is None:
        return stop('no nvcc: set CUDA_HOME to a CUDA toolkit of the same major version as torch\'s '
                    f'(CUDA {torch.version.cuda})')
    if cuda_major(nvcc_version[-2] if len(nvcc_version) > 1 else nvcc_version[-1]) != cuda_major(torch.version.cuda):
        return stop(f'nvcc of {cpp_extension.CUDA_HOME} is not CUDA {cuda_major(torch.version.cuda)}.x like torch '
                    f'(CUDA {torch.version.cuda}); torch refuses to build with another major version')
    if result['env']['cxx'] is None:
        return stop(f'no C++ compiler ({cxx}) on PATH')
    if not result['env']['ninja']:
        return stop('ninja is not installed (pip install ninja)')
    try:
        result['env']['arch_flags'] = cpp_extension._get_cuda_arch_flags()  # what nvcc will be given
    except Exception as err:  # a list torch cannot read, e.g. an architecture it does not know
        return stop(f'TORCH_CUDA_ARCH_LIST={os.environ.get("TORCH_CUDA_ARCH_LIST")!r}: {err}')
    save()

    torch.cuda.is_available = lambda: True  # the loader's only GPU gate (custom_ops._why_unavailable)
    from torch_utils import custom_ops
    from torch_utils.ops import bias_act, upfirdn2d
    custom_ops.verbosity = 'full'
    custom_ops.passes_self_test = lambda name, test: True  # the self-test launches a kernel on a GPU
    for name, op in (('bias_act', bias_act), ('upfirdn2d', upfirdn2d)):
        entry = dict(self_test='not run (it needs a GPU)')
        with tempfile.NamedTemporaryFile('r', suffix='.log', encoding='utf-8', errors='replace') as log, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            start = time.time()
            with stdout_to(log.name):
                module = op._plugin()
            entry['seconds'] = round(time.time() - start, 1)
            text = log.read()
        print(text, flush=True)
        entry.update(built=module is not None, python_warnings=[str(w.message) for w in caught],
                     error=custom_ops.build_errors.get(f'{name}_plugin'),
                     compiler_warnings=[line for line in text.splitlines()
                                        if re.search(r'\bwarning\b', line, re.I) and not line.startswith('[')])
        if module is not None:
            try:
                CPU_CALLS[name](module, torch)
                entry['cpu_tensor_call'] = 'returned (unexpected: the kernel should refuse CPU tensors)'
            except Exception as err:
                entry['cpu_tensor_call'] = f'{type(err).__name__}: {str(err).strip().splitlines()[0]}'
            entry['so'] = module.__file__
        result['plugins'][name] = entry
        save()
    result['finished'] = time.strftime('%Y-%m-%dT%H:%M:%S')
    save()
    for name, entry in result['plugins'].items():
        print(f'{name}: {"built" if entry["built"] else "FAILED"} in {entry["seconds"]} s, '
              f'{len(entry["compiler_warnings"])} compiler warning line(s); CPU-tensor call: '
              f'{entry.get("cpu_tensor_call", "-")}', flush=True)
    return 0 if all(entry['built'] for entry in result['plugins'].values()) else 1


@click.command()
@click.option('--out', required=True, metavar='FILE', help='The result JSON.')
def main(out: str) -> None:
    """Build the CUDA plugins through the project's loader without a GPU (see the module docstring)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    sys.exit(check(out))


if __name__ == '__main__':
    main()
