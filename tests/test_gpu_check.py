"""bench/gpu_check.sh on the CPU: ``--quick`` runs every stage and reports each one in the JSON;
a stage that fails or hangs is recorded, and the stages after it still run. The kernel checks
themselves run here on CPU tensors (where the "CUDA" path is the reference), so their shapes,
masks and double backward are exercised before a GPU ever sees them."""

import json
import os
import subprocess
import sys

import pytest
import torch

from bench import bench_training, gpu_check
from training.training_loop import status_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = [name for name, _ in gpu_check.STAGES]


def test_default_stage_limits_fit_the_budget_in_the_order_of_what_matters_most():
    limits = dict(gpu_check.STAGES)
    assert list(gpu_check.DEFAULT_STAGES) == [name for name in STAGES if name != 'compile']
    assert STAGES[:4] == ['env', 'build', 'kernels', 'train']  # what the machine is, builds, is right, trains
    assert sum(limits[name] for name in gpu_check.DEFAULT_STAGES) <= gpu_check.BUDGET_S
    assert gpu_check.arch_list_for(9, 0) == '9.0+PTX' and gpu_check.arch_list_for(8, 6) == '8.6+PTX'


def run_check(out, *args):
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    proc = subprocess.run(['bash', os.path.join(ROOT, 'bench', 'gpu_check.sh'), '--quick', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    with open(os.path.join(out, 'gpu_check.json'), encoding='utf-8') as f:
        return proc, json.load(f)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU behaviour of --quick')
def test_quick_run_reports_every_stage_with_sane_figures(tmp_path):
    proc, report = run_check(tmp_path, '--stages=' + ','.join(STAGES))
    assert proc.returncode == 0, proc.stderr
    stages = report['stages']
    assert list(stages) == STAGES and report['quick'] is True and report['finished'] is not None
    for name, stage in stages.items():
        assert 0 < stage['seconds'] <= stage['timeout_s'] + 1, name
        assert f'[{name}] {stage["status"]}' in proc.stdout  # one console line per stage
    env = stages['env']
    assert env['status'] == 'ok' and env['torch'] == torch.__version__ and env['cuda_available'] is False
    assert isinstance(env['pyspng'], bool) and env['python'].count('.') == 2
    # The build's environment is recorded; without a GPU nothing is pinned.
    assert env['torch_cuda_arch_list_found'] == os.environ.get('TORCH_CUDA_ARCH_LIST')
    assert env['torch_cuda_arch_list'] is None and {'cxx_version', 'nvcc_version', 'MAX_JOBS', 'CC', 'CXX'} <= set(env)
    assert env['cxx_version'] is None or isinstance(env['cxx_version'], str)
    assert stages['build'] == dict(stages['build'], status='skipped', reason='no CUDA')
    kernels = stages['kernels']
    assert kernels['status'] == 'skipped' and kernels['reason'] == 'no CUDA'
    assert kernels['network_calls'] == sum(kernels['calls_by_op'].values()) and min(kernels['calls_by_op'].values()) > 0
    test_ops = gpu_check._test_ops()
    assert kernels['suite_cases'] == 2 * (2 * len(test_ops.TORCH_ACTIVATIONS)
                                          + 2 * (len(test_ops.UPFIRDN_CASES) + len(test_ops.GPU_UPFIRDN_CASES)))
    phases = stages['phases']
    assert phases['status'] == 'ok'
    (preset,) = phases['presets']
    assert set(preset['ms_cuda']) == set(preset['ms_ref']) == {'G_main', 'D_main', 'D_reg'}
    assert min(preset['ms_cuda'].values()) > 0 and preset['peak_mem_gb']['cuda'] > 0
    assert phases['ab_layout']['nhwc_over_nchw'] > 0 and phases['ab_host_sync']['sync_over_no_sync'] > 0
    train = stages['train']
    assert train['status'] == 'ok' and train['returncode'] == 0
    assert [t['tick'] for t in train['ticks']] == [0, 1] and train['sec_per_kimg'] == train['ticks'][1]['sec_per_kimg']
    chain = stages['chain']
    assert chain['status'] == 'ok' and [r['stage'] for r in chain['rows']] == ['gen', 'seg', 'mine']
    assert min(chain['projected_paper_sizes'].values()) > 0
    assert stages['compile']['status'] == 'skipped'
    assert sorted(os.listdir(tmp_path)) == ['gpu_check.json', 'gpu_check.log', 'train-log.txt']


def test_failed_and_hung_stages_are_recorded_and_later_stages_still_run(tmp_path):
    proc, report = run_check(tmp_path, '--stages=env,build,phases', '--inject=env=fail,build=hang', '--timeout=build=3')
    assert proc.returncode == 0, proc.stderr
    env, build = report['stages']['env'], report['stages']['build']
    assert env['status'] == 'failed' and env['error'] == 'RuntimeError: injected failure in stage env'
    assert build['status'] == 'timeout' and build['timeout_s'] == 3 and build['seconds'] < 10
    assert report['stages']['phases']['status'] == 'ok'  # after a failed build: the reference ops, no new build
    assert 'injected failure in stage env' in open(tmp_path / 'gpu_check.log').read()


def test_the_arch_list_the_env_stage_pins_reaches_every_later_stage(tmp_path, monkeypatch):
    """The driver sets TORCH_CUDA_ARCH_LIST from the env stage's result before forking the later
    stages, so the build (and its pytest and training subprocesses) use the GPU's own list."""
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '7.0;7.5;8.0;8.6;9.0')  # an image-wide list, 7.0 included

    def fake_env(stage):
        stage.record(cuda_available=True, torch_cuda_arch_list_found=os.environ['TORCH_CUDA_ARCH_LIST'],
                     torch_cuda_arch_list=gpu_check.arch_list_for(9, 0))

    def fake_build(stage):
        stage.record(seen=os.environ.get('TORCH_CUDA_ARCH_LIST'))

    monkeypatch.setitem(gpu_check.STAGE_FUNCTIONS, 'env', fake_env)
    monkeypatch.setitem(gpu_check.STAGE_FUNCTIONS, 'build', fake_build)
    report = gpu_check.drive(str(tmp_path), True, 60, ['env', 'build'], {}, {})
    env, build = report['stages']['env'], report['stages']['build']
    assert env['status'] == build['status'] == 'ok'
    assert env['torch_cuda_arch_list_found'] == '7.0;7.5;8.0;8.6;9.0' and build['seen'] == '9.0+PTX'


def test_unknown_stage_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'gpu_check.py'), '--stages=env,warp'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and 'unknown stage(s) warp' in proc.stderr


def test_training_log_parser_reads_the_loops_status_lines():
    def line(tick, kimg, sec_per_kimg, mem):
        stats = {'Progress/tick': tick, 'Progress/kimg': kimg, 'Timing/total_sec': 100.0 * (tick + 1),
                 'Timing/sec_per_kimg': sec_per_kimg, 'Resources/peak_mem_gb': mem, 'Loss/G/total': 1.5}
        return status_line({k: {'mean': v} for k, v in stats.items()})

    text = '\n'.join(['Training for 1 kimg...', line(0, 0.032, 900.5, 1.25), line(1, 0.288, 12.25, 2.5),
                      line(2, 0.544, 11.5, 2.75), line(3, 0.8, 13.0, 2.5), 'Done: 1.000 kimg in 30s.'])
    figures = bench_training.parse_training_log(text)
    assert [t['tick'] for t in figures['ticks']] == [0, 1, 2, 3]
    assert figures['ticks'][1] == dict(tick=1, kimg=0.288, sec_per_kimg=12.25, mem_gb=2.5)
    assert figures['sec_per_kimg'] == 12.25 and figures['peak_mem_gb'] == 2.75  # median after the warm-up tick


def test_compare_counts_elements_outside_the_tolerance():
    want = torch.tensor([1.0, -2.0, 100.0, 0.0])
    got = torch.tensor([1.0005, -2.0, 100.5, float('nan')])
    result = gpu_check.compare(got, want, rtol=1e-3, atol=1e-4)
    # |d| = 5e-4 (allowed 1.1e-3), 0, 0.5 (allowed 0.1001), NaN (never allowed).
    assert result['outside'] == 2 and result['rtol'] == 1e-3
    masked = gpu_check.compare(got, want, rtol=1e-3, atol=1e-4, where=torch.tensor([True, True, False, False]))
    assert masked['outside'] == 0 and masked['max_abs'] == pytest.approx(5e-4, rel=1e-3)
    assert masked['rel'] == pytest.approx(5e-4 / 5 ** 0.5, rel=1e-3)


def test_kernel_checks_run_every_recorded_and_suite_case_on_the_cpu():
    """On CPU tensors both paths are the reference: every case must run (forward, first and second
    gradients, masks) and agree exactly; on a GPU the same code compares the kernels."""
    device = torch.device('cpu')
    calls = gpu_check.network_op_calls('cpu64', 4, device)
    ops = {c['op'] for c in calls}
    assert ops == {'bias_act', 'upfirdn2d', 'conv2d_resample'}
    assert any(c['op'] == 'conv2d_resample' and c['groups'] > 1 for c in calls)  # generation's grouped convs
    assert any(c['op'] == 'upfirdn2d' and len(c['filter']) == 12 for c in calls)  # ADA's sym6 warp
    test_ops = gpu_check._test_ops()
    picked = [next(c for c in calls if c['op'] == op) for op in sorted(ops)]
    picked += [c for c in gpu_check.suite_op_cases(test_ops) if c['op'] == 'bias_act' and c['act'] == 'lrelu']
    picked += gpu_check.suite_op_cases(test_ops)[-3:]
    for call in picked:
        result = gpu_check.check_call(call, device, test_ops.GPU_TOL)
        assert result['passed'], call
        compared = [o for o in result['outputs'].values() if isinstance(o, dict)]
        assert {'forward', 'grad0', 'double0'} <= set(result['outputs']) and all(o['max_abs'] == 0 for o in compared)


def test_flop_count_matches_the_hand_count_through_backward_and_double_backward():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    forward = 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)  # 2 FLOPs per multiply-add, 27 taps per output element
    assert bench_training.count_flops(lambda: torch.nn.functional.conv2d(x, weight, padding=1)) == forward
    # backward: the input's and the weight's gradient, each as many multiply-adds as the forward
    assert bench_training.count_flops(
        lambda: torch.nn.functional.conv2d(x, weight, padding=1).sum().backward()) == 3 * forward
    a, b = torch.randn(4, 5, requires_grad=True), torch.randn(5, 6)

    def r1_like():  # autograd.grad with create_graph, as R1 runs it (torch's FlopCounterMode refuses it)
        (grad,) = torch.autograd.grad((a @ b).sum(), a, create_graph=True)
        return grad

    assert bench_training.count_flops(r1_like) == 2 * (2 * 4 * 5 * 6)


def test_flop_rates_add_up_per_iteration():
    bench = bench_training.PhaseBench('cpu', 64, 4, torch.device('cpu'))
    row = bench_training.flop_rates(bench, iters=1)
    phases = row['phases']
    assert set(phases) == {'G_main', 'D_main', 'D_reg'} and min(p['gflop'] for p in phases.values()) > 0
    per_iter = phases['G_main']['gflop'] + phases['D_main']['gflop'] + phases['D_reg']['gflop'] / 16
    assert row['gflop_per_iter'] == pytest.approx(per_iter, abs=0.02)
    assert row['headroom'] == pytest.approx(row['conv_gflops'] / row['achieved_gflops'], rel=0.02)
    assert row['conv'].startswith('3x3 32->32 at 32^2, batch 4')


def test_ab_flop_rates_count_the_same_work_for_main_and_now():
    """main's set-up (NCHW, reference ops) and this branch's change no arithmetic: the same FLOPs.
    ADA off (p = 0): at p > 0 the pipe's random choices change the work a little from call to call."""
    device = torch.device('cpu')
    a, b = (bench_training.PhaseBench('cpu', 64, 4, device, p=0.0, **v) for v in bench_training.AB_VARIANTS['main'])
    result = bench_training.ab_phases(a, b, rounds=1, warmup=0)
    # One round: the iteration is that round's phases, D-reg once per D_reg_interval (16 here).
    for key in ('A', 'B'):
        sec = {name: phase[f'sec_{key}'] for name, phase in result['phases'].items()}
        assert result[f'sec_per_iter_{key}'] == pytest.approx(sec['G_main'] + sec['D_main'] + sec['D_reg'] / 16,
                                                              abs=2e-4)
    flops = bench_training.ab_flop_rates(a, b, result)
    assert flops['gflop_per_iter_A'] == flops['gflop_per_iter_B'] > 0
    assert flops['gflops_A'] == pytest.approx(flops['gflop_per_iter_A'] / result['sec_per_iter_A'], rel=0.02)
    assert flops['gflops_for_2x_A'] == pytest.approx(2 * flops['gflops_A'], abs=0.11)
    assert flops['gemm_gflops'] > 0 and flops['conv_gflops'] > 0
