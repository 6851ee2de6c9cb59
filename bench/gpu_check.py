"""The prepared check for a lent GPU: one command, at most 8 minutes, every figure in one JSON.

    bash bench/gpu_check.sh                          # on the GPU machine; writes ${OUT:-./gpu_check}
    python bench/gpu_check.py --out=DIR --quick      # a CPU smoke run with tiny sizes (tests/test_gpu_check.py)

Each stage runs in a forked process of its own, killed with everything it started when its time is up, so a
hanging stage (a ninja build waiting on a lock, say) costs its own limit and no more. The
stage's figures are merged into ``gpu_check.json`` as soon as it ends (a cut-off run still
reports the stages it finished); ``gpu_check.log`` holds every stage's output. The stages run in
the order of what matters most if the time runs out, and their limits add up to the budget
(:data:`STAGES`, :data:`DEFAULT_STAGES`):

  env      GPU, driver, torch, CUDA, python; whether pyspng, ninja and nvcc are present; the
           versions of c++ and nvcc. Pins TORCH_CUDA_ARCH_LIST to the GPU's own capability
           (e.g. 9.0+PTX, what torch derives itself when the variable is unset) for every later
           stage and records the value it found: each extra architecture costs ~18 s per .cu
           file, and a list holding 7.0 stops nvcc 13 at once.
  build    The bias_act and upfirdn2d plugins: seconds, success, the whole compiler error.
  kernels  Every call of bias_act / upfirdn2d / conv2d_resample made by one G (training and
           generation mode), the composition, the augment pipe (p = 1) and D at 64 px, recorded,
           plus the case lists of tests/test_ops.py: the CUDA kernels against the reference ops,
           forward, backward and double backward, in each call's dtype (fp32 and fp16), max
           error against a stated tolerance, pass/fail per case; then ``pytest -m gpu`` on
           tests/test_ops.py.
  train    train_ILS_64.py on the synthetic data, ~1 kimg of ILS_predL (--aug=fixed --p=0.2):
           sec/kimg per tick from its log.txt (tick 0 is the warm-up).
  phases   Seconds per call of G-main, D-main, R1 (and the estimators' fit for ILS_learnL) for
           ILS_predL 64, ILS 128 and ILS_learnL 64 at batch 32 with the presets' mixed precision,
           CUDA kernels vs reference ops side by side, peak memory; A/B of NHWC vs NCHW and of a
           host sync per iteration (main's NaN check) vs none.
  chain    Generation img/s (10 000 samples), UNet it/s (batch 64, 64 px, width 64), MINE steps/s
           (hidden 3000, batch 64), each projected to the paper's sizes (50 000 samples, 6000
           UNet iterations, 100 000 MINE steps per mode).
  compile  --compile A/B: G-main and D-main eager vs torch.compile (with the CUDA kernels, then
           with the reference ops the compiler can fuse), and the compile time. Not in the
           default run (it does not fit the budget): ask for it on a warm machine, e.g.
           ``--stages=env,compile --budget=200``.

Stage status: ok, failed (``error``), timeout, skipped (``reason``). ``--quick`` runs the same
stages on tiny sizes (the CPU when there is no GPU: the kernel comparisons report "skipped: no
CUDA"; compile is skipped), with the Pillow PNG decoder the GPU image has to use.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (name, time limit in seconds on a GPU), in the order of what matters most when time runs short:
# what the machine is, whether the kernels build and are right, whether a real training tick
# runs, then the speed figures. The default stages' limits add up to the budget (a test checks);
# a stage gets min(its limit, what the budget leaves after reserving RESERVE_S per later stage).
# Build: ~57 s per plugin on a busy CPU core for one architecture (shared/audits/cuda-build-check.md).
STAGES: list[tuple[str, float]] = [('env', 15), ('build', 150), ('kernels', 75), ('train', 90),
                                   ('phases', 75), ('chain', 55), ('compile', 150)]
DEFAULT_STAGES = ('env', 'build', 'kernels', 'train', 'phases', 'chain')  # compile: on request
BUDGET_S = 470          # 8 minutes less the start and the copy back
RESERVE_S = 20          # kept per later stage (10 s of it usable), so a slow stage cannot starve the rest
QUICK_RESERVE_S = 4
MIN_STAGE_S = 5         # a stage is skipped when less than this is left for it
PAPER = dict(samples=50_000, unet_iters=6000, mine_steps=100_000)  # full sizes the chain projects to


# ----------------------------------------------------------------------------------------------
# The driver.

def now() -> str:
    return datetime.datetime.now().isoformat(timespec='seconds')


def write_json(path: str, data: dict) -> None:
    import dnnlib   # json_text: a NaN or inf timing or difference is written as null, valid JSON
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(dnnlib.json_text(data, indent=2))
    os.replace(tmp, path)


def parse_assignments(text: str | None, what: str) -> dict[str, str]:
    """'a=1,b=2' → {'a': '1', 'b': '2'}, names checked against the stages."""
    out = {}
    for item in filter(None, (t.strip() for t in (text or '').split(','))):
        name, sep, value = item.partition('=')
        if not sep or name not in dict(STAGES):
            raise click.BadParameter(f'expected STAGE=VALUE with STAGE in {", ".join(dict(STAGES))}, got {item!r}',
                                     param_hint=what)
        out[name] = value
    return out


def run_stage_process(name: str, context: dict, timeout: float, log) -> tuple[int | None, float]:
    """Run one stage in a forked child that leads a process group of its own (it inherits the
    modules the driver imported, so no stage imports torch again); at ``timeout`` kill the group:
    the stage and everything it started (ninja, nvcc, a training run).
    Returns (exit code, or None after a timeout; seconds)."""
    for stream in (sys.stdout, sys.stderr, log):
        stream.flush()
    start = time.time()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            sys.stdout.reconfigure(line_buffering=True)
            code = run_stage(name, context)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.time() - start
        if time.time() - start >= timeout:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, time.time() - start
        time.sleep(0.05)


def preload() -> None:
    """Import what every stage needs once, before the stages are forked (torch, its optimiser's
    compiler machinery, this project). A broken install is left for the stages to report."""
    with contextlib.suppress(Exception):
        import torch  # noqa: F401
        import torch._dynamo  # noqa: F401  (torch.optim imports it on first use: seconds)
        import bench.bench_training  # noqa: F401
        import training.training_loop  # noqa: F401


def drive(out: str, quick: bool, budget: float, stages: list[str], timeouts: dict[str, str],
          inject: dict[str, str]) -> dict:
    """Run ``stages`` in order under ``budget`` seconds; rewrite ``out``/gpu_check.json after each."""
    os.makedirs(out, exist_ok=True)
    json_path, log_path = os.path.join(out, 'gpu_check.json'), os.path.join(out, 'gpu_check.log')
    reserve = QUICK_RESERVE_S if quick else RESERVE_S
    report: dict[str, Any] = dict(tool='bench/gpu_check.py', quick=quick, budget_s=budget, started=now(),
                                  finished=None, elapsed_s=0.0,
                                  stages={name: dict(status='pending') for name in stages})
    write_json(json_path, report)
    start = time.time()
    scratch = tempfile.mkdtemp(prefix='gpu_check-')
    plugins_ok, cuda = True, None  # cuda: what the env stage saw (None: not known)
    try:
        with open(log_path, 'a', buffering=1) as log:
            for index, name in enumerate(stages):
                left = budget - (time.time() - start)
                limit = float(timeouts.get(name, dict(STAGES)[name]))
                timeout = min(limit, left - reserve * (len(stages) - index - 1))
                if timeout < (1 if quick else MIN_STAGE_S):
                    result = dict(status='skipped', reason=f'out of time ({left:.0f} s of the budget left)')
                else:
                    log.write(f'\n===== {name} ({now()}, limit {timeout:.0f} s) =====\n')
                    log.flush()
                    fragment = os.path.join(scratch, f'{name}.json')
                    context = dict(quick=quick, scratch=scratch, out=out, fragment=fragment, plugins=plugins_ok, cuda=cuda,
                                   inject=inject.get(name), deadline=time.time() + timeout)
                    code, seconds = run_stage_process(name, context, timeout, log)
                    result = read_fragment(fragment)
                    if code is None:
                        result.update(status='timeout', reason=f'killed at its limit of {timeout:.0f} s')
                    elif code != 0 and result.get('status') in (None, 'running', 'ok'):
                        result.update(status='failed', error=f'exit code {code} (see gpu_check.log)')
                    result.update(seconds=round(seconds, 1), timeout_s=round(timeout, 1))
                    if name == 'build' and result.get('status') != 'ok':
                        plugins_ok = False  # later stages use the reference ops and never retry the build
                    if name == 'env' and result.get('status') == 'ok':
                        cuda = result.get('cuda_available')
                        if result.get('torch_cuda_arch_list'):  # every later stage (and its subprocesses)
                            os.environ['TORCH_CUDA_ARCH_LIST'] = result['torch_cuda_arch_list']
                report['stages'][name] = result
                report['elapsed_s'] = round(time.time() - start, 1)
                write_json(json_path, report)
                line = f'[{name}] {result["status"]}'
                if 'seconds' in result:
                    line += f' {result["seconds"]:.1f} s'
                detail = result.get('summary') or result.get('reason') or result.get('error')
                print(line + (f': {str(detail).splitlines()[0][:200]}' if detail else ''), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report['finished'] = now()
    report['elapsed_s'] = round(time.time() - start, 1)
    write_json(json_path, report)
    return report


def read_fragment(path: str) -> dict:
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return dict(status='failed', error='the stage wrote no result (see gpu_check.log)')


# ----------------------------------------------------------------------------------------------
# Inside a stage process.

@dataclass
class Stage:
    """What a stage function gets: sizes, scratch space, its deadline, and :meth:`record`, which
    rewrites the stage's result file at once (a stage killed later keeps what it recorded)."""
    quick: bool
    scratch: str
    out: str
    fragment: str
    plugins: bool
    cuda: bool | None  # what the env stage saw: stages with nothing to do on a CPU skip without importing torch
    deadline: float
    fields: dict = field(default_factory=lambda: dict(status='running'))

    def record(self, **values: Any) -> None:
        self.fields.update(values)
        write_json(self.fragment, self.fields)

    def skip(self, reason: str) -> None:
        self.record(status='skipped', reason=reason)

    def time_left(self) -> float:
        return self.deadline - time.time()

    @property
    def device(self):
        import torch
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def run_stage(name: str, context: dict) -> int:
    context = dict(context)
    inject = context.pop('inject')
    stage = Stage(**context)
    stage.record()
    try:
        if inject == 'fail':
            raise RuntimeError(f'injected failure in stage {name}')
        if inject == 'hang':
            time.sleep(1e6)
        if stage.quick and name in ('train', 'chain'):
            from training import image_files
            image_files.pyspng = None  # the GPU image has no pyspng: run the Pillow path it will use
        # After a failed or hung build, the reference ops throughout: never try to build again here.
        with contextlib.nullcontext() if stage.plugins else _reference_ops():
            STAGE_FUNCTIONS[name](stage)
    except Exception as err:  # the stage failed; the driver goes on with the next one
        traceback.print_exc()
        stage.record(status='failed', error=f'{type(err).__name__}: {err}',
                     traceback=traceback.format_exc().splitlines()[-12:])
        return 1
    if stage.fields['status'] == 'running':
        stage.record(status='ok')
    return 0


@contextlib.contextmanager
def _reference_ops():
    from bench.bench_training import reference_ops
    with reference_ops():
        yield


def command_output(args: list[str]) -> str | None:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (result.stdout or result.stderr).strip() or None


# -- env ---------------------------------------------------------------------------------------

def arch_list_for(major: int, minor: int) -> str:
    """TORCH_CUDA_ARCH_LIST for one GPU of compute capability ``major.minor``: that architecture
    with its PTX, as torch.utils.cpp_extension derives it itself on that GPU when the variable is
    unset (so the check builds exactly what a user's first run there builds, and caches it)."""
    return f'{major}.{minor}+PTX'


def stage_env(stage: Stage) -> None:
    import torch
    from torch.utils import cpp_extension
    # cpp_extension runs CUDA_HOME's nvcc, which need not be the one on PATH.
    nvcc_path = os.path.join(cpp_extension.CUDA_HOME, 'bin', 'nvcc') if cpp_extension.CUDA_HOME else 'nvcc'
    nvcc = command_output([nvcc_path if os.path.exists(nvcc_path) else 'nvcc', '--version'])
    cxx = command_output([os.environ.get('CXX', 'c++'), '--version'])
    info = dict(python=platform.python_version(), torch=torch.__version__, cuda_runtime=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                cuda_available=torch.cuda.is_available(), cpu_count=os.cpu_count(),
                pyspng=importlib.util.find_spec('pyspng') is not None, ninja=cpp_extension.is_ninja_available(),
                cuda_home=cpp_extension.CUDA_HOME, nvcc=nvcc.splitlines()[-1] if nvcc else None,
                nvcc_version=nvcc.splitlines()[-2:] if nvcc else None,
                cxx=shutil.which(os.environ.get('CXX', 'c++')), cxx_version=cxx.splitlines()[0] if cxx else None,
                torch_extensions_dir=os.environ.get('TORCH_EXTENSIONS_DIR'),
                **{name: os.environ.get(name) for name in ('CC', 'CXX', 'MAX_JOBS')},
                torch_cuda_arch_list_found=os.environ.get('TORCH_CUDA_ARCH_LIST'), torch_cuda_arch_list=None)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(torch_cuda_arch_list=arch_list_for(props.major, props.minor))
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2 ** 30, 1),
                    multiprocessors=props.multi_processor_count, capability=f'{props.major}.{props.minor}',
                    driver=command_output(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader']),
                    gpu_state=command_output(['nvidia-smi', '--query-gpu=clocks.sm,clocks.mem,temperature.gpu,'
                                              'utilization.gpu,memory.used', '--format=csv']))
    stage.record(**info, summary=f'{info.get("gpu", "no GPU")}, torch {info["torch"]}, CUDA {info["cuda_runtime"]}, '
                                 f'python {info["python"]}, pyspng {"yes" if info["pyspng"] else "no"}, '
                                 f'nvcc {info["nvcc"] or "none"}, c++ {info["cxx_version"] or "none"}, '
                                 f'TORCH_CUDA_ARCH_LIST {info["torch_cuda_arch_list_found"]} -> '
                                 f'{info["torch_cuda_arch_list"] or "unchanged"}')


# -- build -------------------------------------------------------------------------------------

def stage_build(stage: Stage) -> None:
    if stage.cuda is False:
        stage.skip('no CUDA')
        return
    import torch
    if not torch.cuda.is_available():
        stage.skip('no CUDA')
        return
    from torch_utils import custom_ops
    from torch_utils.ops import bias_act, upfirdn2d
    custom_ops.verbosity = 'full'  # the compiler's output goes to the log
    stage.record(torch_cuda_arch_list=os.environ.get('TORCH_CUDA_ARCH_LIST'))
    plugins = {}
    for name, module in (('bias_act', bias_act), ('upfirdn2d', upfirdn2d)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            start = time.time()
            built = module._plugin() is not None
        plugins[name] = dict(built=built, seconds=round(time.time() - start, 1),
                             warnings=[str(w.message) for w in caught],
                             error=custom_ops.build_errors.get(f'{name}_plugin'))
        stage.record(plugins=plugins)
    failed = [n for n, p in plugins.items() if not p['built']]
    summary = ', '.join(f'{n} {"built" if p["built"] else "FAILED"} in {p["seconds"]} s' for n, p in plugins.items())
    if failed:
        stage.record(status='failed', error=f'{", ".join(failed)} did not build: ' + ' | '.join(
            (plugins[n]['error'] or ' '.join(plugins[n]['warnings']) or '?')[-2000:] for n in failed), summary=summary)
    else:
        stage.record(summary=summary)


# -- kernels -----------------------------------------------------------------------------------

def _test_ops():
    """tests/test_ops.py as a module: its case lists and GPU tolerances are the ones used here."""
    spec = importlib.util.spec_from_file_location('gpu_check_test_ops', os.path.join(ROOT, 'tests', 'test_ops.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def recording_op_calls(calls: list[dict]):
    """Append a description of every bias_act / upfirdn2d / conv2d_resample call to ``calls``."""
    from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d
    originals = bias_act.bias_act, upfirdn2d.upfirdn2d, conv2d_resample.conv2d_resample

    def taps(f):
        return None if f is None else [round(v, 8) for v in f.flatten().tolist()] if f.ndim == 1 else \
            [[round(v, 8) for v in row] for row in f.tolist()]

    def record_bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl='cuda'):
        calls.append(dict(op='bias_act', shape=list(x.shape), dtype=str(x.dtype).replace('torch.', ''),
                          bias=b is not None, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp))
        return originals[0](x, b, dim, act, alpha, gain, clamp, impl)

    def record_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl='cuda'):
        calls.append(dict(op='upfirdn2d', shape=list(x.shape), dtype=str(x.dtype).replace('torch.', ''),
                          filter=taps(f), up=up if isinstance(up, int) else list(up),
                          down=down if isinstance(down, int) else list(down),
                          padding=list(upfirdn2d._parse_padding(padding)), flip_filter=flip_filter, gain=gain))
        return originals[1](x, f, up, down, padding, flip_filter, gain, impl)

    def record_conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
        calls.append(dict(op='conv2d_resample', shape=list(x.shape), dtype=str(x.dtype).replace('torch.', ''),
                          weight=list(w.shape), filter=taps(f), up=up, down=down,
                          padding=list(upfirdn2d._parse_padding(padding)), groups=groups,
                          flip_weight=flip_weight, flip_filter=flip_filter))
        return originals[2](x, w, f, up, down, padding, groups, flip_weight, flip_filter)

    bias_act.bias_act, upfirdn2d.upfirdn2d = record_bias_act, record_upfirdn2d
    conv2d_resample.conv2d_resample = record_conv2d_resample
    try:
        yield calls
    finally:
        bias_act.bias_act, upfirdn2d.upfirdn2d, conv2d_resample.conv2d_resample = originals


def network_op_calls(cfg_name: str, batch: int, device) -> list[dict]:
    """The distinct op calls (batch dimension left out) of one training-mode G forward, the
    composition, the augment pipe at p = 1, D on the result, and a generation-mode G_ema forward."""
    import torch
    from training import train_cli
    from training.networks import sample_eps
    from training.training_loop import build_networks
    with tempfile.TemporaryDirectory() as outdir:
        cfg = train_cli.build_training_config(outdir=outdir, data='synthetic', resolution=64, cfg=cfg_name,
                                              batch=batch, metrics='none')
    nets = build_networks(cfg, device)
    nets.augment_pipe.p.fill_(1.0)
    calls: list[dict] = []
    with recording_op_calls(calls):
        z = torch.randn([batch, nets.G.z_dim], device=device)
        layers = nets.G(z)
        shifted = nets.composition(layers, sample_eps(batch, nets.composition.eps_dim, device))
        nets.D(nets.augment_pipe(shifted['img']))
        with torch.no_grad():
            nets.G_ema(z, noise_mode='const')
    unique: dict[str, dict] = {}
    for call in calls:
        key = dict(call, shape=call['shape'][1:])
        unique.setdefault(json.dumps(key, sort_keys=True), dict(call, source='network'))
    return list(unique.values())


def suite_op_cases(test_ops) -> list[dict]:
    """tests/test_ops.py's case lists as calls of the same form (its GPU tests' shapes)."""
    cases = []
    for dtype in ('float32', 'float16'):
        for act in sorted(test_ops.TORCH_ACTIVATIONS):
            for clamp in (None, 0.5):
                cases.append(dict(op='bias_act', shape=[4, 8, 9, 7], dtype=dtype, bias=True, dim=1, act=act,
                                  alpha=None, gain=None, clamp=clamp, source='tests/test_ops.py'))
        for flip in (False, True):
            for case in test_ops.UPFIRDN_CASES:
                up, down, padding, filter_taps = case[:4]
                cases.append(dict(op='upfirdn2d', shape=[3, 5, 17, 13], dtype=dtype, filter=filter_taps, up=up,
                                  down=down, padding=padding, flip_filter=flip, gain=case[5],
                                  source='tests/test_ops.py'))
            for up, down, padding, filter_taps in test_ops.GPU_UPFIRDN_CASES:
                cases.append(dict(op='upfirdn2d', shape=[3, 5, 17, 13], dtype=dtype, filter=filter_taps, up=up,
                                  down=down, padding=padding, flip_filter=flip, gain=2,
                                  source='tests/test_ops.py'))
    return cases


def compare(got, want, rtol: float, atol: float, where=None) -> dict:
    """max |got − want|, ‖got − want‖ / ‖want‖ and the count of elements outside atol + rtol·|want|."""
    import torch
    got, want = got.detach().double(), want.detach().double()
    if where is not None:
        got, want = got[where], want[where]
    diff = (got - want).abs()
    outside = ~torch.isfinite(got) | (diff > atol + rtol * want.abs())
    return dict(max_abs=float(diff.max()) if diff.numel() else 0.0,
                rel=float(diff.norm() / want.norm().clamp_min(1e-30)) if diff.numel() else 0.0,
                outside=int(outside.sum()), rtol=rtol, atol=atol)


def _gradients(fn, inputs: list, probe_of: int = 0):
    """y = fn(*inputs), the first gradients for a random dy (create_graph), and the gradients of
    <first gradient of input ``probe_of``, random probe> w.r.t. every input and dy (the double
    backward that R1 runs)."""
    import torch
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*inputs)
    dy = torch.randn_like(y).requires_grad_(True)
    firsts = torch.autograd.grad(y, inputs, dy, create_graph=True)
    probe = torch.randn_like(firsts[probe_of])
    seconds = (None,) * (len(inputs) + 1)
    if firsts[probe_of].requires_grad:
        seconds = torch.autograd.grad((firsts[probe_of] * probe).sum(), inputs + [dy], allow_unused=True)
    seconds = [torch.zeros_like(t) if g is None else g for g, t in zip(seconds, inputs + [dy])]
    return y, list(firsts), seconds, dy


def check_call(call: dict, device, tolerances: dict, batch: int = 4) -> dict:
    """The CUDA path against the reference on random data of the call's shape (batch ≤ ``batch``)."""
    import torch
    from bench.bench_training import reference_ops
    from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d
    dtype = getattr(torch, call['dtype'])
    shape = [min(call['shape'][0], batch)] + call['shape'][1:] if call['op'] != 'conv2d_resample' or \
        call['groups'] == 1 else call['shape']
    base = tolerances[dtype]
    gen = torch.Generator(device=device).manual_seed(len(json.dumps(call)))
    randn = lambda *s: torch.randn(*s, device=device, generator=gen).to(dtype)  # noqa: E731
    where = None
    if call['op'] == 'bias_act':
        gain = call['gain'] if call['gain'] is not None else bias_act.activation_funcs[call['act']].def_gain
        scale = call['clamp'] / gain * 0.75 if call['clamp'] else 1.0  # some values beyond the clamp
        x = randn(*shape) * scale
        b = randn(shape[call['dim']]) * scale if call['bias'] else None
        def fn(x, *b):  # noqa: E306
            return bias_act.bias_act(x, b[0] if b else None, dim=call['dim'], act=call['act'], alpha=call['alpha'],
                                     gain=call['gain'], clamp=call['clamp'])
        inputs = [x] + ([b] if b is not None else [])
        # Where x + b sits on a kink, or y on the clamp edge, rounding picks the branch: leave those out.
        xb = x.double() + (b.double().reshape([-1 if i == call['dim'] else 1 for i in range(x.ndim)]) if b is not None
                           else 0)
        where = xb.abs() > 1e-2 * scale
        if call['clamp']:
            y_ref = bias_act.bias_act(x.double(), None if b is None else b.double(), dim=call['dim'],
                                      act=call['act'], alpha=call['alpha'], gain=call['gain'], impl='ref')
            where &= (y_ref.abs() - call['clamp']).abs() > 1e-2 * call['clamp']
        scale_atol = scale
    elif call['op'] == 'upfirdn2d':
        f = torch.tensor(call['filter'], dtype=torch.float32, device=device)  # 1-D taps: the separable f ⊗ f
        inputs = [randn(*shape)]
        def fn(x):  # noqa: E306
            return upfirdn2d.upfirdn2d(x, f, up=call['up'], down=call['down'], padding=call['padding'],
                                       flip_filter=call['flip_filter'], gain=call['gain'])
        scale_atol = 1.0
    else:
        f = None if call['filter'] is None else torch.tensor(call['filter'], device=device)
        fan_in = call['weight'][1] * call['weight'][2] * call['weight'][3]
        inputs = [randn(*shape), randn(*call['weight']) / fan_in ** 0.5]
        def fn(x, w):  # noqa: E306
            return conv2d_resample.conv2d_resample(x, w, f=f, up=call['up'], down=call['down'],
                                                   padding=call['padding'], groups=call['groups'],
                                                   flip_weight=call['flip_weight'], flip_filter=call['flip_filter'])
        scale_atol = 1.0
    torch.manual_seed(0)
    cuda = _gradients(fn, inputs)
    torch.manual_seed(0)
    with reference_ops():
        ref = _gradients(fn, inputs)
    outputs = {'forward': (cuda[0], ref[0], 1)}
    for i, (g, r) in enumerate(zip(cuda[1], ref[1])):
        outputs[f'grad{i}'] = (g, r, 1 if i == 0 else 10)  # grads of biases/weights sum many terms
    for i, (g, r) in enumerate(zip(cuda[2], ref[2])):
        outputs[f'double{i}'] = (g, r, 10)
    result = dict(call=call, outputs={})
    ok = True
    for name, (got, want, loosen) in outputs.items():
        if where is not None and got.shape != where.shape and not bool(where.all()):
            result['outputs'][name] = 'not compared: it sums over elements at a kink or the clamp edge'
            continue
        mask = where if where is not None and got.shape == where.shape else None
        c = compare(got, want, base['rtol'] * loosen, base['atol'] * loosen * scale_atol, mask)
        result['outputs'][name] = c
        ok &= c['outside'] == 0
    result['passed'] = bool(ok)
    return result


def run_pytest_gpu(timeout: float) -> dict:
    """``pytest -m gpu tests/test_ops.py``: counts and the names of failures."""
    try:
        proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-m', 'gpu', '-p', 'no:cacheprovider', '-rfE',
                               'tests/test_ops.py'], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(status='timeout', timeout_s=round(timeout))
    print(proc.stdout[-20000:], proc.stderr[-5000:], flush=True)
    counts = {k: int(v) for v, k in re.findall(r'(\d+) (passed|failed|skipped|error|errors)', proc.stdout)}
    return dict(returncode=proc.returncode, **counts,
                failures=re.findall(r'^(?:FAILED|ERROR) (\S+)', proc.stdout, flags=re.M)[:50])


def stage_kernels(stage: Stage) -> None:
    import torch
    device = stage.device
    calls = network_op_calls('cpu64' if stage.quick else 'ILS_predL', 4, device)
    stage.record(network_calls=len(calls), calls_by_op={op: sum(c['op'] == op for c in calls)
                                                        for op in ('bias_act', 'upfirdn2d', 'conv2d_resample')})
    try:
        test_ops = _test_ops()
        suite = suite_op_cases(test_ops)
        tolerances = test_ops.GPU_TOL
    except Exception as err:  # the network's own calls are still worth checking
        stage.record(suite_cases_error=f'{type(err).__name__}: {err}')
        suite, tolerances = [], {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2)}
    stage.record(suite_cases=len(suite), tolerance={str(k).replace('torch.', ''): v for k, v in tolerances.items()},
                 tolerance_note='forward and input gradients at these; bias/weight gradients and double backward '
                                'at 10x; bias_act atol scaled by the input scale (clamp/gain*0.75 when clamped); '
                                'kinks and clamp edges left out')
    if device.type != 'cuda':
        stage.skip('no CUDA')
        return
    if not stage.plugins:
        stage.skip('the CUDA plugins did not build (see the build stage): nothing to compare')
        return
    results, cut = [], False
    for call in calls + suite:
        if stage.time_left() < 45:
            cut = True
            break
        try:
            results.append(check_call(call, device, tolerances))
        except Exception as err:
            results.append(dict(call=call, passed=False, error=f'{type(err).__name__}: {err}'))
        if len(results) % 10 == 0:
            stage.record(cases=results)
    failed = [r for r in results if not r['passed']]
    stage.record(cases=results, checked=len(results), passed=len(results) - len(failed), failed=len(failed),
                 truncated=cut)
    pytest = run_pytest_gpu(max(stage.time_left() - 5, 10))
    stage.record(pytest=pytest)
    summary = (f'{len(results) - len(failed)}/{len(results)} cases within tolerance'
               f'{" (cut short)" if cut else ""}; pytest -m gpu: ' +
               ('cut short' if pytest.get('status') == 'timeout' else
                f'{pytest.get("passed", 0)} passed, {pytest.get("failed", 0)} failed'))
    stage.record(summary=summary)
    if failed or pytest.get('failed') or pytest.get('error') or pytest.get('errors'):
        stage.record(status='failed', error=summary)


# -- phases ------------------------------------------------------------------------------------

def stage_phases(stage: Stage) -> None:
    import torch
    from bench import bench_training as bt
    from torch_utils import misc
    device = stage.device
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # as the training loop
    quick = stage.quick
    cases = [('cpu', 64, 4)] if quick else [('ILS_predL', 64, 32), ('ILS', 128, 32), ('ILS_learnL', 64, 32)]
    rounds, warmup = (1, 0) if quick else (10, 2)
    adjust = shrink_for_smoke_run if quick else None
    presets = []
    for cfg_name, script_res, batch in cases:
        if stage.time_left() < 20 and presets:
            stage.record(truncated=True)
            break
        benches = {impl: bt.PhaseBench(cfg_name, script_res, batch, device, impl=impl, adjust=adjust)
                   for impl in ('ref', 'cuda')}
        peak = {}
        for impl, bench in benches.items():
            if device.type == 'cuda':
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            for phase in bench.phases.values():
                phase()
            peak[impl] = round(misc.peak_memory_gb(device), 3)
        result = bt.ab_phases(benches['ref'], benches['cuda'], rounds, warmup)
        ms = lambda sec: round(sec * 1000, 2)  # noqa: E731
        row = dict(cfg=cfg_name, resolution=benches['cuda'].cfg.resolution, batch=batch,
                   fp16_layers=benches['cuda'].cfg.num_fp16_res, layout=benches['cuda'].layout,
                   ms_cuda={k: ms(v['sec_B']) for k, v in result['phases'].items()},
                   ms_ref={k: ms(v['sec_A']) for k, v in result['phases'].items()},
                   ms_per_iter_cuda=ms(result['sec_per_iter_B']), ms_per_iter_ref=ms(result['sec_per_iter_A']),
                   speedup_cuda_over_ref=round(1 / result['ratio_B_over_A'], 3),
                   images_per_sec_cuda=round(batch / result['sec_per_iter_B'], 1),
                   peak_mem_gb=peak, rounds=rounds)
        presets.append(row)
        stage.record(presets=presets)
        del benches
        if device.type == 'cuda':
            torch.cuda.empty_cache()

    # A/B on the first preset: memory layout, and main's per-iteration host sync.
    cfg_name, script_res, batch = cases[0]
    if stage.time_left() > 25 or quick:
        layout = bt.ab_phases(bt.PhaseBench(cfg_name, script_res, batch, device, layout='nchw', adjust=adjust),
                              bt.PhaseBench(cfg_name, script_res, batch, device, layout='nhwc', adjust=adjust),
                              rounds, warmup)
        stage.record(ab_layout=dict(cfg=cfg_name, batch=batch, nhwc_over_nchw=layout['ratio_B_over_A'],
                                    per_phase={k: v['ratio_B_over_A'] for k, v in layout['phases'].items()}))
    if stage.time_left() > 15 or quick:
        bench = bt.PhaseBench(cfg_name, script_res, batch, device, adjust=adjust)
        count = 2 if quick else 8
        times = bt.interleaved({'no_sync': lambda: bench.iterations(count, host_sync=False),
                                'sync': lambda: bench.iterations(count, host_sync=True)}, rounds, device, warmup)
        stage.record(ab_host_sync=dict(cfg=cfg_name, batch=batch, iterations_per_round=count,
                                       ms_per_iter_no_sync=round(bt.median(times['no_sync']) / count * 1000, 2),
                                       ms_per_iter_sync=round(bt.median(times['sync']) / count * 1000, 2),
                                       sync_over_no_sync=round(bt.paired_ratio(times['no_sync'], times['sync']), 3)))
    stage.record(summary='; '.join(f'{p["cfg"]} {p["resolution"]}: {p["ms_per_iter_cuda"]} ms/iter '
                                   f'({p["images_per_sec_cuda"]} img/s), ref ops {p["ms_per_iter_ref"]} ms'
                                   for p in presets))


# -- train -------------------------------------------------------------------------------------

def write_image_folder(path: str, count: int, resolution: int) -> str:
    """``count`` random RGB PNGs: a tiny --data folder for the quick run."""
    import numpy as np
    import PIL.Image
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        PIL.Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(
            os.path.join(path, f'{i:03d}.png'))
    return path


def shrink_for_smoke_run(c) -> None:
    """Narrow networks and small grids (as tests/test_training.py's tiny_config): the quick run
    checks the loop and its log, not the speed of a preset."""
    for kwargs in (c.G_kwargs, c.D_kwargs):
        kwargs.update(channel_base=128, channel_max=16)
    c.G_kwargs.update(z_dim=16, w_dim=16, mapping_layers=1)
    c.update(grid_rows=2, grid_cols=4, layer_rows=4, layer_groups=1, cpu_threads=None)


def stage_train(stage: Stage) -> None:
    outdir = os.path.join(stage.scratch, 'train')
    options = dict(outdir=outdir, metrics='none', aug='fixed', p=0.2, snap=1000)
    if stage.quick:
        options.update(data=write_image_folder(os.path.join(stage.scratch, 'images'), 16, 32), cfg='cpu', batch=8,
                       kimg=0.016, tick=0.008, workers=0)
    else:
        options.update(data='synthetic', cfg='ILS_predL', batch=32, kimg=1, tick=0.25)
    args = [f'--{key}={value}' for key, value in options.items()] + ['--no-auto-test']
    stage.record(command=' '.join(['python', 'train_ILS_64.py', *args]))
    start, returncode = time.time(), None
    if stage.quick:  # in this process, on shrunk networks: the same options, a fraction of the time
        from training import train_cli
        c = train_cli.build_training_config(resolution=64, auto_test=False, **options)
        shrink_for_smoke_run(c)
        train_cli.launch(c)
        returncode = 0
    else:
        try:  # its output goes to this stage's log; at the time limit it is killed and its log read as it is
            returncode = subprocess.run([sys.executable, 'train_ILS_64.py', *args], cwd=ROOT,
                                        timeout=max(stage.time_left() - 5, 5)).returncode
        except subprocess.TimeoutExpired:
            pass
    runs = sorted(os.listdir(outdir)) if os.path.isdir(outdir) else []
    log_path = os.path.join(outdir, runs[-1], 'log.txt') if runs else ''
    text = open(log_path, encoding='utf-8').read() if os.path.isfile(log_path) else ''
    if text:
        shutil.copyfile(log_path, os.path.join(stage.out, 'train-log.txt'))
    from bench.bench_training import parse_training_log
    figures = parse_training_log(text)
    stage.record(returncode=returncode, wall_s=round(time.time() - start, 1), **figures)
    if returncode is None:
        stage.record(status='timeout', reason=f'train_ILS_64.py was stopped after {time.time() - start:.0f} s, '
                                              f'at tick {len(figures["ticks"]) - 1}')
    elif returncode != 0 or not figures['ticks']:
        stage.record(status='failed', error=f'train_ILS_64.py exited with {returncode} (see gpu_check.log)')
    else:
        stage.record(summary=f'{figures["sec_per_kimg"]} sec/kimg after warm-up over {len(figures["ticks"]) - 1} '
                             f'ticks, peak {figures["peak_mem_gb"]} GB')


# -- chain -------------------------------------------------------------------------------------

def stage_chain(stage: Stage) -> None:
    from bench.bench_chain import run_chain
    from metrics.auto_test import AutoTestSizes
    done: list[dict] = []

    def record_row(row: dict) -> None:  # each sub-stage as soon as it is measured: a timeout keeps them
        done.append(row)
        stage.record(rows=done)

    if stage.quick:
        sizes = AutoTestSizes(n=16, seg_iters=2, seg_batch=4, seg_base_width=4, seg_val_interval=1, mine_steps=2,
                              mine_hidden=8, mine_eval_every=1, mine_batch=4)
        rows = run_chain(sizes, stage.device, cfg='cpu', real_data=None, workers=0, on_row=record_row)
    else:
        sizes = AutoTestSizes(n=10_000, seg_iters=400, seg_batch=64, seg_base_width=64, seg_val_interval=200,
                              mine_steps=2000, mine_hidden=3000, mine_eval_every=400, mine_batch=64)
        rows = run_chain(sizes, stage.device, cfg='ILS_predL', real_data='synthetic', workers=3, on_row=record_row)
    by_stage = {row['stage']: row for row in rows}
    gen, seg, mi = by_stage['gen'], by_stage['seg'], by_stage['mine']
    mine_rates = list(mi['steps_per_sec'].values())
    projected = dict(generation_50k_s=round(PAPER['samples'] / gen['images_per_sec'], 1),
                     unet_6000_s=round(PAPER['unet_iters'] / seg['iters_per_sec'], 1),
                     mine_100k_both_modes_s=round(sum(PAPER['mine_steps'] / r for r in mine_rates), 1))
    stage.record(rows=rows, projected_paper_sizes=projected,
                 summary=f'{gen["images_per_sec"]} img/s, UNet {seg["iters_per_sec"]} it/s, MINE '
                         f'{"/".join(str(r) for r in mine_rates)} steps/s; paper sizes ≈ '
                         f'{projected["generation_50k_s"]} + {projected["unet_6000_s"]} + '
                         f'{projected["mine_100k_both_modes_s"]} s')


# -- compile -----------------------------------------------------------------------------------

def stage_compile(stage: Stage) -> None:
    if stage.quick:
        stage.skip('quick mode (torch.compile takes minutes on a CPU)')
        return
    import torch
    from bench import bench_training as bt
    device = stage.device
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    eager = bt.PhaseBench('ILS_predL', 64, 32, device)
    # What --compile does (the CUDA kernels stay opaque calls between compiled graphs), then the
    # compiled reference ops, which the compiler can fuse, if time is left.
    variants = {'compiled': dict(compile=True), 'compiled_ref_ops': dict(compile=True, impl='ref')}
    results, summary = {}, []
    for label, kwargs in variants.items():
        if results and stage.time_left() < 60:
            break
        compiled = bt.PhaseBench('ILS_predL', 64, 32, device, **kwargs)
        first = {}
        for name in ('G_main', 'D_main'):  # the first calls compile (with and without grad)
            first[name] = round(bt.timed(compiled.phases[name], device), 1)
            results[label] = dict(compile_s=first)
            stage.record(variants=results)
        ab = bt.ab_phases(eager, compiled, 10, 2)
        results[label] = dict(compile_s=first, over_eager=ab['ratio_B_over_A'], ab=ab)
        summary.append(f'{label}/eager {ab["ratio_B_over_A"]} (compile {first} s)')
        stage.record(variants=results, summary='; '.join(summary))
        del compiled


STAGE_FUNCTIONS: dict[str, Callable[[Stage], None]] = dict(
    env=stage_env, build=stage_build, kernels=stage_kernels, train=stage_train, phases=stage_phases,
    chain=stage_chain, compile=stage_compile)


# ----------------------------------------------------------------------------------------------

@click.command()
@click.option('--out', default=None, help='Output folder [default: $OUT, else ./gpu_check].')
@click.option('--quick', is_flag=True, help='Tiny sizes (a CPU smoke run; what the test runs).')
@click.option('--budget', type=click.FloatRange(min=1), default=BUDGET_S, show_default=True,
              help='Seconds for all stages together.')
@click.option('--stages', default=','.join(DEFAULT_STAGES), show_default=True,
              help=f'Stages to run, in this order (of {", ".join(name for name, _ in STAGES)}).')
@click.option('--timeout', 'timeouts', metavar='STAGE=S,...', default=None,
              help='Per-stage time limits in seconds instead of the defaults.')
@click.option('--inject', metavar='STAGE=fail|hang,...', default=None,
              help='For tests: make a stage raise, or hang until it is killed.')
def main(out, quick, budget, stages, timeouts, inject):
    """Check and time this project on a GPU (or, with --quick, smoke-test the check on a CPU)."""
    names = [s.strip() for s in stages.split(',') if s.strip()]
    unknown = [s for s in names if s not in dict(STAGES)]
    if unknown:
        raise click.BadParameter(f'unknown stage(s) {", ".join(unknown)}; valid: {", ".join(dict(STAGES))}',
                                 param_hint='--stages')
    injections = parse_assignments(inject, '--inject')
    if any(v not in ('fail', 'hang') for v in injections.values()):
        raise click.BadParameter('use STAGE=fail or STAGE=hang', param_hint='--inject')
    out = out or os.environ.get('OUT') or os.path.join(ROOT, 'gpu_check')
    preload()
    report = drive(out, quick, budget, names, parse_assignments(timeouts, '--timeout'), injections)
    print(f'gpu_check: {report["elapsed_s"]} s; ' + ', '.join(f'{k} {v["status"]}' for k, v in report['stages'].items())
          + f'; JSON: {os.path.join(out, "gpu_check.json")}', flush=True)


if __name__ == '__main__':
    main()
