"""End-to-end training on the synthetic dataset with tiny networks: outputs, resume, NaN stop,
two processes, CLI paths. In-process runs use the ``cpu`` preset narrowed further."""

import errno
import glob
import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
from metrics.training_hooks import HOOKS
from torch_utils import checkpoint, training_stats
from training import loss as loss_module
from training import presets, train_cli
from training.resume import find_resume_snapshot
from training.training_loop import FiniteCheck, build_networks, lazy_adam, phase_losses, update_ema, uses_channels_last

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC_IMAGES = 96  # a small synthetic set keeps generation and FID statistics quick


def tiny_config(outdir, **options):
    """The cpu preset with 4-16 channels, batch 8 and ticks of 2 iterations."""
    options = dict(dict(outdir=str(outdir), data='synthetic', cfg='cpu', batch=8, kimg=0.048, tick=0.016,
                        snap=1, metrics='none', workers=0), **options)
    c = train_cli.build_training_config(resolution=64, hooks=HOOKS, **options)
    for kwargs in (c.G_kwargs, c.D_kwargs):
        kwargs.update(channel_base=128, channel_max=16)
    c.G_kwargs.update(z_dim=16, w_dim=16, mapping_layers=1)
    if c.estimator_kwargs is not None:
        c.estimator_kwargs['widths'] = [4, 4, 4, 4, 4]
    c.dataset_kwargs['num_images'] = SYNTHETIC_IMAGES
    c.update(grid_rows=2, grid_cols=4, layer_rows=4, layer_groups=1)
    c.cpu_threads = None   # keep the suite's single thread: tiny tensors only lose with more
    return c


@pytest.fixture(scope='module')
def module_cache(tmp_path_factory):
    """conftest isolates the cache per test; module-scoped fixtures run before that, so isolate here too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('ILSGAN_CACHE', str(tmp_path_factory.getbasetemp() / 'ilsgan-cache'))
        yield


def snapshots(run_dir):
    return sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pt')))


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------------
# Pieces of the loop.

def test_training_stats_mean_std_and_reset():
    training_stats.reset()
    values = np.array([1.0, 2.0, 4.0, 7.0])
    training_stats.report('x', torch.tensor(values[:2]))
    training_stats.report('x', values[2:].tolist())
    training_stats.report('y', 3)
    stats = training_stats.collect()
    assert stats['x']['num'] == 4
    assert stats['x']['mean'] == pytest.approx(values.mean())
    assert stats['x']['std'] == pytest.approx(values.std())  # population std, as StyleGAN2
    assert stats['y'] == {'num': 1, 'mean': 3.0, 'std': 0.0}
    assert training_stats.collect() == {}


def test_lazy_adam_rescales_lr_and_betas():
    c = dict(lrate=0.0025, betas=[0.0, 0.99], adam_eps=1e-8)
    opt = lazy_adam([torch.nn.Parameter(torch.zeros(1))], type('C', (), c), 4)
    group = opt.param_groups[0]
    assert group['lr'] == pytest.approx(0.002)
    assert group['betas'][0] == 0.0 and group['betas'][1] == pytest.approx(0.99 ** 0.8)
    opt = lazy_adam([torch.nn.Parameter(torch.zeros(1))], type('C', (), c), 16)
    assert opt.param_groups[0]['lr'] == pytest.approx(0.0025 * 16 / 17)
    assert opt.param_groups[0]['betas'][1] == pytest.approx(0.99 ** (16 / 17))


def test_ema_formula_with_ramp_up():
    G, G_ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(G.weight)
    torch.nn.init.zeros_(G_ema.weight)
    # ema_nimg = min(10 000, 0.05 · 1000) = 50 → β = 0.5^(32/50); θ_ema = θ + β(θ_ema − θ) = 1 − β
    update_ema(G_ema, G, cur_nimg=1000, batch=32, ema_kimg=10, ramp=0.05)
    assert G_ema.weight.item() == pytest.approx(1 - 0.5 ** (32 / 50))
    torch.nn.init.zeros_(G_ema.weight)
    update_ema(G_ema, G, cur_nimg=10 ** 7, batch=32, ema_kimg=10, ramp=0.05)  # ramp no longer binds
    assert G_ema.weight.item() == pytest.approx(1 - 0.5 ** (32 / 10_000), rel=1e-5)  # float32


# ----------------------------------------------------------------------------------------------
# Whole runs.

@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, module_cache):
    """Three ticks (tick 0 = one iteration, then 2 iterations each) with a snapshot every tick."""
    c = tiny_config(tmp_path_factory.mktemp('run'))
    run_dir = train_cli.launch(c)
    return run_dir, c


def test_run_writes_options_snapshots_stats_and_grids(finished_run):
    run_dir, c = finished_run
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        assert json.load(f)['cfg'] == 'cpu'
    assert os.path.basename(run_dir) == '00000-synthetic-cpu-batch8'
    stats = read_jsonl(os.path.join(run_dir, 'stats.jsonl'))
    # 6 iterations of 8 images: tick 0 after 1, then ticks of 16 images → kimg 0.008, 0.024, 0.040, 0.048
    assert [round(s['Progress/kimg']['mean'], 3) for s in stats] == [0.008, 0.024, 0.04, 0.048]
    assert [s['Progress/tick']['mean'] for s in stats] == [0, 1, 2, 3]
    for name in ('Loss/G/adv', 'Loss/G/bin', 'Loss/G/msize', 'Loss/G/ils', 'Loss/D/real', 'Loss/D/fake',
                 'Loss/signs/real', 'Progress/augment', 'Progress/sigma', 'Timing/sec_per_kimg',
                 'Resources/peak_mem_gb'):
        assert name in stats[1], name
    assert stats[0]['Loss/G/adv']['num'] == 8 and stats[1]['Loss/G/adv']['num'] == 16
    assert 'Loss/r1' in stats[0]  # D-reg runs at iteration 0 (then every 16)
    assert stats[0]['Progress/sigma']['mean'] == presets.resolve_preset('cpu').initial_sigma == 5.0
    # Ticks of a fraction of a kimg: one file per snapshot event (snap=1: every tick), named by the
    # images seen, each holding the weights of its own moment.
    assert [os.path.basename(p) for p in snapshots(run_dir)] == [
        'network-snapshot-000000_008.pt', 'network-snapshot-000000_024.pt', 'network-snapshot-000000_040.pt',
        'network-snapshot-000000_048.pt']
    assert [checkpoint.read_snapshot(p)['data']['cur_nimg'] for p in snapshots(run_dir)] == [8, 24, 40, 48]
    for name in ('reals.png', 'fakes-init.png', 'layers-init.png', 'fakes-000000_008.png', 'layers-000000_048.png',
                 'log.txt'):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    layers = np.asarray(PIL.Image.open(os.path.join(run_dir, 'layers-000000_048.png')))
    assert layers.shape == (4 * 32, 5 * 32, 3)  # rows of bg | fg | mask | m·f | composite; cpu preset: 32 px
    mask_tile = layers[:32, 64:96].astype(int)
    assert (mask_tile[..., 0] == mask_tile[..., 1]).all()  # the mask is drawn in gray
    assert np.asarray(PIL.Image.open(os.path.join(run_dir, 'fakes-000000_048.png'))).shape == (2 * 32, 4 * 32, 3)
    with open(os.path.join(run_dir, 'log.txt')) as f:
        assert 'sec/kimg' in f.read()


def test_snapshot_is_safe_and_holds_training_state(finished_run):
    run_dir, c = finished_run
    loaded = checkpoint.load_snapshot(snapshots(run_dir)[-1])
    data = loaded['data']
    assert data['cur_nimg'] == 48 and data['kimg'] == pytest.approx(0.048)
    assert data['sigma'] == presets.resolve_preset('cpu').initial_sigma and data['resolution'] == 32
    assert set(data['optimizers']) == {'G', 'D'} and data['ada'] is not None
    # ADA adjusts after iterations 4, 8, …: after 6 the signs of D-main at iterations 5 and 6 are pending.
    assert data['ada']['sign_count'] == 2 * 8
    assert {'G', 'G_ema', 'D', 'augment_pipe'} <= set(loaded)
    out = loaded['G_ema'](torch.randn(2, 16), noise_mode='const')
    assert out['img'].shape == (2, 3, 32, 32)
    torch.load(snapshots(run_dir)[-1], weights_only=True)  # no pickled code


def test_resume_reproduces_an_uninterrupted_run(finished_run, tmp_path):
    """Resuming the 0.024-kimg snapshot of a run and training to 0.048 gives bit-identical weights."""
    _, c_full = finished_run
    c = tiny_config(tmp_path / 'first', kimg=0.024)
    first = train_cli.launch(c)
    state = checkpoint.read_snapshot(snapshots(first)[-1])
    assert state['data']['cur_nimg'] == 24
    c = tiny_config(tmp_path / 'second', resume=first)
    second = train_cli.launch(c)
    stats = read_jsonl(os.path.join(second, 'stats.jsonl'))
    assert [round(s['Progress/kimg']['mean'], 3) for s in stats] == [0.04, 0.048]  # kimg counter continued
    resumed = checkpoint.read_snapshot(snapshots(second)[-1])
    full = checkpoint.read_snapshot(snapshots(finished_run[0])[-1])
    for name in ('G', 'G_ema', 'D', 'augment_pipe'):
        for key, value in full['modules'][name]['state'].items():
            assert torch.equal(value, resumed['modules'][name]['state'][key]), (name, key)
    for net in ('G', 'D'):
        a, b = full['data']['optimizers'][net]['state'], resumed['data']['optimizers'][net]['state']
        assert a.keys() == b.keys()
        for index in a:
            for key in a[index]:
                assert torch.equal(a[index][key], b[index][key]), (net, index, key)


def test_learned_estimators_train_with_D_and_are_saved(tmp_path):
    c = tiny_config(tmp_path, cfg='ILS_learnN', kimg=0.016)
    run_dir = train_cli.launch(c)
    stats = read_jsonl(os.path.join(run_dir, 'stats.jsonl'))
    assert all(np.isfinite(s['Loss/estimator/nll']['mean']) for s in stats)
    assert stats[0]['Progress/sigma']['mean'] == pytest.approx(0.001)
    loaded = checkpoint.load_snapshot(snapshots(run_dir)[-1])
    mu, log_scale = loaded['estimators'](torch.zeros(2, 3, 64, 64), 1)
    assert mu.shape == (2, 3, 64, 64) and log_scale.abs().max() < 1  # tanh head
    assert len(loaded['data']['optimizers']['D']['param_groups'][0]['params']) == (
        len(list(loaded['D'].parameters())) + len(list(loaded['estimators'].parameters())))


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_snapshot(tmp_path, monkeypatch):
    calls = {'n': 0}
    original = loss_module.mask_binarization_loss

    def poisoned(mask):
        calls['n'] += 1
        value = original(mask)
        return value * float('nan') if calls['n'] >= 3 else value  # iteration 3 = first of tick 2

    monkeypatch.setattr(loss_module, 'mask_binarization_loss', poisoned)
    c = tiny_config(tmp_path, kimg=0.1)
    with pytest.raises(loss_module.NonFiniteLossError, match=r'Loss/G/total .* at kimg 0\.016'):
        train_cli.launch(c)
    run_dir = glob.glob(os.path.join(tmp_path, '0*'))[0]
    kept = snapshots(run_dir)
    assert len(kept) == 1
    data = checkpoint.read_snapshot(kept[0])['data']
    assert data['cur_nimg'] == 8  # written at the end of tick 0 ... and the poisoned tick 1 wrote nothing
    for value in checkpoint.read_snapshot(kept[0])['modules']['G']['state'].values():
        assert torch.isfinite(value.float()).all()


def test_channels_last_is_the_presets_choice_or_auto_on_a_cpu_only(tmp_path):
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    assert uses_channels_last(dict(channels_last=None), cpu) and not uses_channels_last(dict(channels_last=None), cuda)
    assert not uses_channels_last(dict(channels_last=False), cpu) and uses_channels_last(dict(channels_last=True), cuda)
    c = train_cli.build_training_config(outdir=str(tmp_path), data='synthetic', cfg='ILS_predL', metrics='none')
    assert c.channels_last is None  # the paper presets: NHWC on a CPU, NCHW on a GPU
    tiny = tiny_config(tmp_path)
    tiny.channels_last = None
    nets = build_networks(tiny, cpu)
    conv = nets.D.blocks[0].conv0.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_finite_check_names_the_first_bad_loss_and_its_kimg_only_when_checked():
    check = FiniteCheck()
    check.observe({'Loss/G/total': torch.tensor(1.0), 'Loss/D/total': torch.tensor(2.0)}, cur_nimg=0)
    check.observe({'Loss/G/total': torch.tensor(3.0), 'Loss/D/total': torch.tensor(float('inf')),
                   'Loss/r1': torch.tensor(float('nan'))}, cur_nimg=32)   # D first: the order of the dict
    check.observe({'Loss/G/total': torch.tensor(float('nan')), 'Loss/D/total': torch.tensor(0.5)}, cur_nimg=64)
    with pytest.raises(loss_module.NonFiniteLossError,
                       match=r'^Loss/D/total became inf at kimg 0\.032; training stopped, the last good snapshot '
                             r'is run/network-snapshot-000000\.pt$'):
        check.check('run/network-snapshot-000000.pt')
    check.check(None)  # the failed check consumed what it saw; nothing new, nothing raised
    check.observe({'Loss/G/total': torch.tensor(4.0)}, cur_nimg=96)
    check.check(None)


def test_a_transient_nan_inside_a_tick_still_stops_the_run_before_its_snapshot(tmp_path, monkeypatch):
    """The NaN check runs once per tick (no host sync per iteration): a NaN in the first iteration
    of tick 1 that is gone in the second still stops the run at the tick end, naming its kimg,
    and tick 1 writes no snapshot."""
    calls = {'n': 0}
    original = loss_module.mask_binarization_loss

    def poisoned(mask):
        calls['n'] += 1
        return original(mask) * float('nan') if calls['n'] == 2 else original(mask)

    monkeypatch.setattr(loss_module, 'mask_binarization_loss', poisoned)
    c = tiny_config(tmp_path, kimg=0.1)
    with pytest.raises(loss_module.NonFiniteLossError, match=r'Loss/G/total became nan at kimg 0\.008; .*'
                                                             r'network-snapshot-000000_008\.pt$'):
        train_cli.launch(c)
    assert calls['n'] == 3  # tick 1 ran both its iterations before the check
    kept = snapshots(glob.glob(os.path.join(tmp_path, '0*'))[0])
    assert len(kept) == 1 and checkpoint.read_snapshot(kept[0])['data']['cur_nimg'] == 8  # tick 0's only


def test_compile_option_compiles_g_and_d_for_the_main_phases_and_keeps_r1_eager(tmp_path):
    c = tiny_config(tmp_path, compile=True)
    assert c.compile is True and tiny_config(tmp_path).compile is False
    nets = build_networks(c, torch.device('cpu'))
    compiled = []

    def fake_compiler(module):
        compiled.append(module)
        return module.__class__.__name__  # a stand-in object: only its identity matters here

    main_loss, reg_loss = phase_losses(nets, c, compiler=fake_compiler)
    assert compiled == [nets.G, nets.D]
    assert (main_loss.G, main_loss.D) == ('LayeredGenerator', 'Discriminator')
    assert reg_loss.G is nets.G and reg_loss.D is nets.D           # R1's double backward stays eager
    c.compile = False
    plain_main, plain_reg = phase_losses(nets, c, compiler=fake_compiler)
    assert plain_main is plain_reg and plain_main.D is nets.D and len(compiled) == 2


def test_metric_lines_name_distinct_snapshots_and_generation_uses_the_one_whose_fid_it_reports(tmp_path):
    class TinyDetector(torch.nn.Module):
        def forward(self, images: torch.Tensor, return_features: bool = True) -> torch.Tensor:
            x = images.to(torch.float32) / 255
            pooled = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)  # [N, 12]
            return torch.cat([pooled, pooled.square()], dim=1)

    from click.testing import CliRunner
    import generate_segmentation_samples
    from metrics import generate
    detector = str(tmp_path / 'detector.pt')
    torch.jit.save(torch.jit.script(TinyDetector()), detector)
    c = tiny_config(tmp_path / 'out', kimg=0.04, metrics='fid10k_full', detector=detector, detector_runs_code=True)
    c.metric_num_gen = 64
    run_dir = train_cli.launch(c, HOOKS)

    # One line per snapshot (ticks end at 8, 24, 40 images), each naming its own, existing file.
    lines = read_jsonl(os.path.join(run_dir, 'metric-fid10k_full.jsonl'))
    names = [line['snapshot_pkl'] for line in lines]
    assert names == ['network-snapshot-000000_008.pt', 'network-snapshot-000000_024.pt',
                     'network-snapshot-000000_040.pt']
    assert names == [os.path.basename(p) for p in snapshots(run_dir)]
    for line, nimg in zip(lines, (8, 24, 40)):
        assert checkpoint.read_snapshot(os.path.join(run_dir, line['snapshot_pkl']))['data']['cur_nimg'] == nimg
        assert line['sigma'] == presets.resolve_preset('cpu').initial_sigma and np.isfinite(line['results']['fid10k_full']) and line['num_gen'] == 64
    fid = {line['snapshot_pkl']: line['results']['fid10k_full'] for line in lines}

    # --pkl_idx names a snapshot by its (fractional) kimg; --topk bounds the kimg of the FID choice.
    out = tmp_path / 'by-pkl-idx'
    result = CliRunner().invoke(generate_segmentation_samples.main, [
        f'--network={run_dir}', '--pkl_idx=0.024', '--n=2', f'--outdir={out}', '--device=cpu'])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / 'meta.json').read_text())
    chosen = os.path.join(run_dir, 'network-snapshot-000000_024.pt')
    assert meta['snapshot'] == chosen and meta['kimg'] == 0.024 and meta['fid'] == fid[os.path.basename(chosen)]
    assert meta['snapshot_sha256'] == generate.file_sha256(chosen)
    best_early = min(names[:2], key=fid.get)   # the snapshots at or below 0.03 kimg
    _, meta = generate.generate_from_network(run_dir, n=2, topk=0.03, outdir=str(tmp_path / 'by-topk'),
                                             progress=False)
    assert os.path.basename(meta['snapshot']) == best_early and meta['fid'] == fid[best_early]
    assert meta['snapshot_sha256'] == generate.file_sha256(os.path.join(run_dir, best_early))
    # The default folder is named by the snapshot's tag, so two snapshots of kimg 0 never share one.
    assert generate.default_outdir(chosen) == os.path.join(run_dir, 'synthetic_data-000000_024')


def test_snapshot_names_carry_the_images_seen_and_old_names_still_parse(tmp_path):
    assert checkpoint.snapshot_name(200_000) == 'network-snapshot-000200.pt'   # an exact kimg reads as before
    assert checkpoint.snapshot_name(272) == 'network-snapshot-000000_272.pt'
    assert checkpoint.snapshot_name(1_234_005) == 'network-snapshot-001234_005.pt'
    for nimg in (0, 8, 272, 1000, 1008, 200_000, 1_234_005):
        assert checkpoint.snapshot_nimg(checkpoint.snapshot_name(nimg)) == nimg
    assert checkpoint.snapshot_nimg('/runs/00003/network-snapshot-000200.pt') == 200_000   # older runs' names
    assert checkpoint.snapshot_nimg('network-snapshot-004000.pkl') == 4_000_000
    assert checkpoint.snapshot_kimg('network-snapshot-000000_272.pt') == 0.272
    assert [checkpoint.format_kimg(n) for n in (200_000, 272, 1_234_005)] == ['200', '0.272', '1234.005']
    with pytest.raises(dnnlib.UserError, match='is not named network-snapshot-KKKKKK.pt'):
        checkpoint.snapshot_nimg('my-generator.pt')
    # Sorting: by images seen, which is also the order of the names themselves (what ls shows).
    for nimg in (1016, 1000, 999, 528, 2000, 16):
        (tmp_path / checkpoint.snapshot_name(nimg)).write_bytes(b'x')
    (tmp_path / 'network-snapshot-best.pt').write_bytes(b'x')   # copied by hand: not one of the run's
    (tmp_path / '.tmp-abcnetwork-snapshot-003000.pt').write_bytes(b'')
    listed = checkpoint.list_snapshots(str(tmp_path))
    assert [checkpoint.snapshot_nimg(p) for p in listed] == [16, 528, 999, 1000, 1016, 2000]
    assert [os.path.basename(p) for p in listed] == sorted(os.path.basename(p) for p in listed)
    assert find_resume_snapshot(str(tmp_path)) == str(tmp_path / 'network-snapshot-000002.pt')


def test_a_second_save_to_an_existing_snapshot_name_is_refused_and_the_old_file_is_intact(tmp_path, monkeypatch):
    from training.networks import MappingNetwork
    G = MappingNetwork(z_dim=4, w_dim=4, num_ws=1, num_layers=1)
    path = str(tmp_path / checkpoint.snapshot_name(272))
    checkpoint.save_snapshot(path, {'G': G}, data={'cur_nimg': 272}, overwrite=False)
    before = open(path, 'rb').read()
    for link in (os.link, None):   # with hard links, and on a file system without them
        if link is None:
            def no_links(*args):
                raise OSError(errno.EPERM, os.strerror(errno.EPERM))
            monkeypatch.setattr(os, 'link', no_links)
        with pytest.raises(FileExistsError) as info:
            checkpoint.save_snapshot(path, {'G': G}, data={'cur_nimg': 999}, overwrite=False)
        assert info.value.filename == path
        assert open(path, 'rb').read() == before and os.listdir(tmp_path) == [os.path.basename(path)]
    fresh = str(tmp_path / checkpoint.snapshot_name(528))   # a new name is still written (by rename)
    checkpoint.save_snapshot(fresh, {'G': G}, data={'cur_nimg': 528}, overwrite=False)
    assert checkpoint.read_snapshot(fresh)['data'] == {'cur_nimg': 528}
    assert dnnlib.os_error_message(info.value) == (f'File exists: {path}; it is never overwritten; move it away, '
                                                   f'or choose another output folder')


# ----------------------------------------------------------------------------------------------
# The command line.

def run_cli(*args, script='train_ILS_64.py', env_cache=None):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory, module_cache):
    """A folder of 32 synthetic PNGs: a --data path for the subprocess runs."""
    from training.dataset import open_dataset
    folder = tmp_path_factory.mktemp('images')
    dataset = open_dataset('synthetic', resolution=64, num_images=SYNTHETIC_IMAGES)
    for i in range(32):
        PIL.Image.fromarray(dataset[i][0].transpose(1, 2, 0)).save(folder / f'{i:03d}.png')
    return str(folder)


def test_cli_dry_run_prints_config_and_makes_nothing(tmp_path):
    result = run_cli(f'--outdir={tmp_path / "out"}', '--data=synthetic', '--cfg=ILS_learnN', '--batch=64', '-n')
    assert result.returncode == 0, result.stderr
    c = json.loads(result.stdout)
    assert c['cfg'] == 'ILS_learnN' and c['gamma'] == pytest.approx(0.0002 * 64 ** 2 / 64)
    assert c['estimator_kwargs']['distribution'] == 'neural_gaussian'
    assert not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('args,message', [
    (['--cfg=nope'], 'unknown --cfg=nope; valid: ILS_predL, ILS_predN, ILS_learnL, ILS_learnN, ILS_L1, cpu, cpu64, cpu_noILS, cpu_L1'),
    (['--batch=30', '--gpus=4'], '--batch=30 is not divisible by --gpus=4'),
    (['--aug=noaug', '--target=0.7'], '--target only applies to --aug=ada (here --aug=noaug); drop --target'),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    result = run_cli(f'--outdir={tmp_path}', '--data=synthetic', *args, '-n')
    assert result.returncode == 2
    assert result.stderr.strip() == f'error: {message}'


def test_cli_128_rejects_a_64_preset(tmp_path):
    result = run_cli(f'--outdir={tmp_path}', '--data=synthetic', '--cfg=ILS_predL', '-n', script='train_ILS_128.py')
    assert result.returncode == 2 and 'is a 64 px preset; use train_ILS_64.py (valid here: ILS)' in result.stderr


def test_two_process_gloo_run_writes_once(tmp_path, image_folder):
    result = run_cli(f'--outdir={tmp_path}', f'--data={image_folder}', '--cfg=cpu', '--gpus=2', '--batch=8',
                     '--kimg=0.024', '--tick=0.016', '--snap=1', '--metrics=none', '--no-auto-test')
    assert result.returncode == 0, result.stderr[-3000:]
    runs = os.listdir(tmp_path)
    assert len(runs) == 1 and runs[0].startswith('00000-images') and runs[0].endswith('-cpu-batch8')
    run_dir = os.path.join(tmp_path, runs[0])
    stats = read_jsonl(os.path.join(run_dir, 'stats.jsonl'))
    assert [round(s['Progress/kimg']['mean'], 3) for s in stats] == [0.008, 0.024]  # no duplicate lines
    assert stats[0]['Loss/G/adv']['num'] == 8  # 4 per process, reduced over both
    assert result.stdout.count('tick 0 ') == 1
    assert [os.path.basename(p) for p in snapshots(run_dir)] == ['network-snapshot-000000_008.pt',
                                                                  'network-snapshot-000000_024.pt']
    data = checkpoint.read_snapshot(snapshots(run_dir)[-1])['data']
    assert data['num_gpus'] == 2 and len(data['rng']) == 2 and data['cur_nimg'] == 24
