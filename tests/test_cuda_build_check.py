"""bench/cuda_build_check.sh (``make cuda-build-check``) without its downloads: the script parses,
its dry run says what it would use and writes nothing, and the build driver stops with one line
before compiling anything when torch, nvcc or the architecture list cannot build the kernels."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from torch.utils import cpp_extension

from bench import cuda_build_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'bench', 'cuda_build_check.sh')


def run_script(*args, **env):
    return subprocess.run(['bash', SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **env))


def test_script_parses_and_answers_help_and_bad_usage():
    assert subprocess.run(['bash', '-n', SCRIPT]).returncode == 0
    proc = run_script('--help')
    assert proc.returncode == 0 and 'TORCH_CUDA_ARCH_LIST' in proc.stdout and 'Exit: 0 both plugins built' in proc.stdout
    proc = run_script('--fast')
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        'error: unknown argument --fast; see bash bench/cuda_build_check.sh --help']
    # Run under `make test` too: the outer make's variables would make this one print its directory.
    env = {key: value for key, value in os.environ.items() if key not in ('MAKEFLAGS', 'MAKELEVEL', 'MFLAGS')}
    assert subprocess.run(['make', '--no-print-directory', '-n', 'cuda-build-check'], cwd=ROOT, capture_output=True,
                          text=True, env=env).stdout.strip() == 'bash bench/cuda_build_check.sh'


def fake_toolkit(path, release):
    """A CUDA home whose bin/nvcc prints nvcc's version lines for ``release`` (e.g. '13.0')."""
    (path / 'bin').mkdir(parents=True)
    (path / 'include').mkdir()
    (path / 'include' / 'cuda_runtime.h').write_text('')
    nvcc = path / 'bin' / 'nvcc'
    nvcc.write_text('#!/bin/sh\necho "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                    f'echo "Cuda compilation tools, release {release}, V{release}.88"\n'
                    f'echo "Build cuda_{release}.r{release}/compiler.0"\n')
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return path


def test_dry_run_names_python_toolkit_and_command_and_creates_nothing(tmp_path):
    toolkit = fake_toolkit(tmp_path / 'cuda', '13.0')
    work = tmp_path / 'work'
    proc = run_script('--dry-run', WORK=str(work), CUDA_HOME=str(toolkit), TORCH_CUDA_ARCH_LIST='9.0')
    assert proc.returncode == 0, proc.stderr
    assert f'would make {work}/venv' in proc.stdout and 'torch==2.13.0' in proc.stdout
    assert f'toolkit: {toolkit} (release 13.0)' in proc.stdout and 'TORCH_CUDA_ARCH_LIST=9.0' in proc.stdout
    assert f'would run: CUDA_HOME={toolkit}' in proc.stdout and not work.exists()
    if torch.version.cuda is None:  # this venv's CPU-only torch, passed as PYTHON: refused in one line
        proc = run_script('--dry-run', WORK=str(work), PYTHON=sys.executable)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
        assert 'is not a CUDA build' in proc.stderr and not work.exists()


@pytest.mark.parametrize('torch_cuda, release, arch_list, error', [
    (None, '13.0', '9.0+PTX', 'is not a CUDA build'),
    ('12.4', '13.0', '9.0+PTX', 'is not CUDA 12.x like torch (CUDA 12.4)'),
    ('13.0', '13.0', '9.0;sm_99x', "TORCH_CUDA_ARCH_LIST='9.0;sm_99x'"),
])
def test_driver_stops_before_building_when_the_stack_cannot_build(tmp_path, monkeypatch, capsys, torch_cuda, release,
                                                                  arch_list, error):
    monkeypatch.setattr(torch.version, 'cuda', torch_cuda)
    monkeypatch.setattr(cpp_extension, 'CUDA_HOME', str(fake_toolkit(tmp_path / 'cuda', release)))
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', arch_list)
    out = tmp_path / 'result.json'
    gate = torch.cuda.is_available
    assert cuda_build_check.check(str(out)) == 1
    assert torch.cuda.is_available is gate  # replaced only once a build starts
    result = json.loads(out.read_text())
    assert error in result['error'] and result['plugins'] == {}
    assert result['env']['nvcc'] == [f'Cuda compilation tools, release {release}, V{release}.88',
                                     f'Build cuda_{release}.r{release}/compiler.0']
    assert result['env']['TORCH_CUDA_ARCH_LIST'] == arch_list
    assert capsys.readouterr().err == f'error: {result["error"]}\n'


def test_cuda_major_reads_torch_and_nvcc_versions():
    assert cuda_build_check.cuda_major('13.0') == 13 and cuda_build_check.cuda_major('12.4') == 12
    assert cuda_build_check.cuda_major('Cuda compilation tools, release 13.2, V13.2.86') == 13
    assert cuda_build_check.cuda_major(None) is None
