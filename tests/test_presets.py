"""Presets (METHOD.md §5) as data, and the options → config function with its user errors."""

import os

import pytest

import dnnlib
from metrics.training_hooks import HOOKS
from training import presets
from training.networks import LayeredGenerator
from training.train_cli import build_training_config

# METHOD.md §5's table: --cfg → (R, estimator, distribution, σ₀, σ).
PAPER_TABLE = {
    'ILS_predL': (64, 'club', 'predetermined_laplace', 0.2, 1.0),
    'ILS_predN': (64, 'club', 'predetermined_gaussian', 0.2, 1.0),
    'ILS_learnL': (64, 'club', 'neural_laplace', 0.001, 0.001),
    'ILS_learnN': (64, 'club', 'neural_gaussian', 0.001, 0.001),
    'ILS_L1': (64, 'l1_distance', None, 0.2, 1.0),
    'ILS': (128, 'club', 'predetermined_laplace', 0.2, 1.0),
}


def config(tmp_path, **options):
    return build_training_config(**dict(dict(outdir=str(tmp_path), data='synthetic', hooks=HOOKS), **options))


@pytest.mark.parametrize('name', list(PAPER_TABLE))
def test_paper_presets_match_method_table(name):
    resolution, estimator, distribution, sigma0, sigma = PAPER_TABLE[name]
    spec = presets.resolve_preset(name, resolution)
    assert (spec.resolution, spec.estimator, spec.distribution) == (resolution, estimator, distribution)
    assert (spec.initial_sigma, spec.sigma, spec.anti_kimg) == (sigma0, sigma, 400)
    # Shared by every paper preset.
    assert (spec.kimg, spec.batch, spec.mbstd, spec.lrate, spec.ema_ramp, spec.mapping_layers) == (8000, 32, 4, 0.0025, 0.05, 8)
    assert (spec.z_dim, spec.w_dim, spec.channel_base, spec.channel_max) == (512, 512, 16384, 256)
    assert (spec.xint_max, spec.min_msize, spec.msize_weight, spec.bin_weight) == (0.125, 0.25, 2.0, 2.0)
    assert spec.border_weight == 0.0                                  # the border term is not the paper's
    assert spec.placement_max == 0.0                                  # nor is G's placement head
    assert spec.msize_on_batch is False                               # nor a size floor on the batch mean
    assert (spec.aug, spec.augpipe, spec.target, spec.kimg_per_tick, spec.snap) == ('ada', 'bgc', 0.6, 4, 50)
    assert spec.metrics == ['fid10k_full', 'kid10k_full']
    assert spec.gamma == pytest.approx(0.0002 * resolution ** 2 / 32)  # 0.0256 at 64, 0.1024 at 128
    assert spec.ema_kimg == pytest.approx(10)


def test_gamma_and_ema_follow_the_batch():
    spec = presets.resolve_preset('ILS_predL', 64, batch=64)
    assert spec.gamma == pytest.approx(0.0128) and spec.ema_kimg == pytest.approx(20)
    assert presets.resolve_preset('ILS', 128).gamma == pytest.approx(0.1024)
    assert presets.resolve_preset('ILS_predL', 64, batch=64, gamma=0.5).gamma == 0.5


def test_presets_are_overrides_of_one_base():
    for table in presets.PRESET_TABLES.values():
        for name, overrides in table.items():
            assert set(overrides) <= set(presets.BASE), name
            redundant = [k for k, v in overrides.items() if presets.BASE[k] == v]
            assert not redundant, f'{name} repeats base values {redundant}'
    assert presets.DEFAULT_CFG == {64: 'ILS_predL', 128: 'ILS'}


def test_cpu_preset_is_small_and_uses_short_sigma_warmup():
    spec = presets.resolve_preset('cpu', 64)
    # 32 px and two-sided mask-size bounds: what made the synthetic objects separate in minutes.
    assert spec.resolution == 32 and (spec.min_msize, spec.max_msize) == (0.25, 0.6)
    assert spec.auto_test_sizes['n'] < 10000 and spec.channel_max <= 128 and spec.z_dim <= 128 and spec.mapping_layers <= 2
    assert spec.anti_kimg < 400 and spec.metrics == [] and spec.metric_num_gen is not None


def test_config_builds_module_kwargs(tmp_path):
    c = config(tmp_path, cfg='ILS_learnL', batch=16, gpus=2, kimg=10, mirror=True, fp32=True)
    assert c.batch_gpu == 8 and c.kimg == 10 and c.run_desc == 'synthetic-ILS_learnL-batch16'
    assert c.G_kwargs['num_fp16_res'] == 0 and c.G_kwargs['conv_clamp'] is None
    assert c.D_kwargs['mbstd_group_size'] == 4
    assert c.estimator_kwargs['distribution'] == 'neural_laplace'
    assert c.loss_kwargs['r1_gamma'] == pytest.approx(0.0002 * 64 ** 2 / 16)
    assert c.dataset_kwargs == dict(data='synthetic', split='train', resolution=64, data_root=None, xflip=True)
    assert config(tmp_path, cfg='ILS_predN').estimator_kwargs is None  # predetermined: no networks
    assert config(tmp_path, cfg='ILS_L1').loss_kwargs['estimator'] == 'l1_distance'
    assert config(tmp_path, aug='noaug').augment_kwargs is None
    assert config(tmp_path, aug='fixed', p=0.3).p == 0.3
    assert config(tmp_path, metrics='none').metrics == []
    # G's placement head reaches G only when on, so every preset's G records keep their arguments.
    assert 'placement_max' not in c.G_kwargs
    assert config(tmp_path, cfg='cpu').loss_kwargs['msize_on_batch'] is False
    assert config(tmp_path, metrics='fid10k_full').metrics == ['fid10k_full']
    assert config(tmp_path, data=str(tmp_path / 'my images')).run_desc == 'my_images-ILS_predL-batch32'


@pytest.mark.parametrize('options,message', [
    (dict(cfg='nope'), 'unknown --cfg=nope; valid: ILS_predL, ILS_predN, ILS_learnL, ILS_learnN, ILS_L1, cpu'),
    (dict(cfg='ILS', resolution=64), '--cfg=ILS is a 128 px preset; use train_ILS_128.py'),
    (dict(cfg='ILS_predL', resolution=128), '--cfg=ILS_predL is a 64 px preset; use train_ILS_64.py (valid here: ILS)'),
    (dict(batch=30, gpus=4), '--batch=30 is not divisible by --gpus=4'),
    (dict(batch=6), 'not a multiple of the minibatch-stddev group 4'),
    (dict(metrics='fid10k_full,fid1k'), 'unknown metric "fid1k" in --metrics; valid: fid10k_full'),
    (dict(aug='fixed'), '--aug=fixed needs --p'),
    (dict(p=0.5), '--p only applies to --aug=fixed'),
    (dict(augpipe='bgcfnc'), 'unknown --augpipe=bgcfnc'),
    (dict(resume='/nonexistent/run'), '--resume: /nonexistent/run does not exist'),
])
def test_config_errors_are_user_errors(tmp_path, options, message):
    with pytest.raises(dnnlib.UserError) as info:
        config(tmp_path, **options)
    assert message in str(info.value)
    assert '\n' not in str(info.value)


def test_unwritable_outdir_is_a_user_error(tmp_path):
    blocker = tmp_path / 'a-file'
    blocker.write_text('not a folder')
    with pytest.raises(dnnlib.UserError, match='is not writable'):
        build_training_config(outdir=str(blocker / 'out'), data='synthetic')
    assert not os.path.exists(blocker / 'out')


def test_ablation_presets_differ_from_the_demo_only_in_the_ils_term():
    demo = presets.resolve_preset('cpu', 64)
    for name, expected in {'cpu_noILS': dict(initial_sigma=0.0, sigma=0.0),
                           'cpu_L1': dict(estimator='l1_distance', distribution=None)}.items():
        variant = presets.resolve_preset(name, 64)
        changed = {k: v for k, v in variant.items() if k != 'cfg' and demo[k] != v}
        assert changed == expected, name
    from training.loss import ils_sigma
    spec = presets.resolve_preset('cpu_noILS', 64)
    assert {ils_sigma(k, spec.initial_sigma, spec.sigma, spec.anti_kimg) for k in (0, 15, 16, 30)} == {0.0}


def test_placement_field_reaches_the_generator(tmp_path, monkeypatch):
    monkeypatch.setitem(presets.PRESETS_64, 'cpu_placed', dict(presets.PRESETS_64['cpu'], placement_max=0.3))
    c = config(tmp_path, cfg='cpu_placed')
    assert c.G_kwargs['placement_max'] == 0.3
    G = LayeredGenerator(**{k: v for k, v in c.G_kwargs.items() if k != 'class_name'})
    assert G.placement is not None and G.init_kwargs['placement_max'] == 0.3
