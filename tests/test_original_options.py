"""The original's command-line options that users rely on (ORIGINAL.md §2.4, §3, §4.7, §6.3, §9):
each changes what it should, and only that."""

import json
import os

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dnnlib
from metrics.training_hooks import HOOKS
from training import loss as L
from training import train_cli
from training.networks import Discriminator, LayeredGenerator, PerturbedComposition

import _fixtures as fx


def config(tmp_path, **options):
    return train_cli.build_training_config(**dict(dict(outdir=str(tmp_path), data='synthetic', hooks=HOOKS), **options))


def tiny_G(**kwargs):
    torch.manual_seed(0)
    return LayeredGenerator(**dict(dict(img_resolution=16, z_dim=8, w_dim=8, channel_base=64, channel_max=8,
                                        mapping_layers=1, num_fp16_res=0), **kwargs))


def tiny_D(**kwargs):
    torch.manual_seed(1)
    return Discriminator(**dict(dict(img_resolution=16, channel_base=64, channel_max=8, num_fp16_res=0,
                                     mbstd_group_size=2), **kwargs))


def tiny_loss(G=None, **loss_kwargs):
    G = G if G is not None else tiny_G()
    return L.ILSLoss(G, tiny_D(), PerturbedComposition(xint_max=0.125), None, None, r1_gamma=1.0, **loss_kwargs)


# ----------------------------------------------------------------------------------------------
# --subset

def test_subset_keeps_n_images_drawn_with_the_seed_as_stylegan2_ada(tmp_path):
    for i in range(12):
        fx.write_image(str(tmp_path / 'imgs' / f'{i:02d}.png'), fx.solid(8, 8, (i * 20, 0, 0)))
    from training.dataset import open_dataset
    picks = []
    for seed in (0, 0, 5):
        c = config(tmp_path / 'out', data=str(tmp_path / 'imgs'), subset=5, seed=seed)
        dataset = open_dataset(**dict(c.dataset_kwargs, resolution=8))
        assert len(dataset) == 5
        # StyleGAN2-ADA: the first N of numpy's legacy permutation with the seed, in file order.
        expected = sorted(np.random.RandomState(seed).permutation(12)[:5])
        assert list(dataset.raw_indices) == expected
        assert [int(dataset[i][0][0, 0, 0]) for i in range(5)] == [20 * k for k in expected]
        picks.append(expected)
    assert picks[0] == picks[1] != picks[2]
    assert c.run_desc == 'imgs-ILS_predL-batch32-subset5'
    assert 'max_size' not in config(tmp_path / 'out', data=str(tmp_path / 'imgs')).dataset_kwargs


def test_subset_larger_than_the_dataset_is_a_user_error_before_any_folder(tmp_path):
    for i in range(3):
        fx.write_image(str(tmp_path / 'imgs' / f'{i}.png'), fx.solid(8, 8, (0, 0, 0)))
    c = config(tmp_path / 'out', data=str(tmp_path / 'imgs'), subset=4)
    with pytest.raises(dnnlib.UserError, match=r'--subset=4 is larger than the dataset \(3 images\)'):
        train_cli.launch(c)
    assert not os.path.exists(tmp_path / 'out') or os.listdir(tmp_path / 'out') == []


# ----------------------------------------------------------------------------------------------
# --map

@pytest.mark.parametrize('depth', [1, 3])
def test_map_sets_the_depth_of_both_mapping_networks(tmp_path, depth):
    c = config(tmp_path, cfg='cpu', map_layers=depth)
    assert c.G_kwargs['mapping_layers'] == depth and c.run_desc.endswith(f'-map{depth}')
    G = LayeredGenerator(**{k: v for k, v in c.G_kwargs.items() if k != 'class_name'})
    z_dim, w_dim = c.G_kwargs['z_dim'], c.G_kwargs['w_dim']
    # Per network: one z→w layer and depth−1 w→w layers, each with weight and bias.
    expected = (z_dim * w_dim + w_dim) + (depth - 1) * (w_dim * w_dim + w_dim)
    for mapping in (G.mapping_bg, G.mapping_fg):
        assert len(mapping.layers) == depth
        assert sum(p.numel() for p in mapping.parameters()) == expected
    assert config(tmp_path, cfg='cpu').G_kwargs['mapping_layers'] == 2       # the preset's value otherwise


# ----------------------------------------------------------------------------------------------
# --mixing, --mixing-prob

def equal_prefix(a, b):
    """How many leading ws of a [N, K, W] equal those of b, checking that the rest all differ."""
    same = [bool(torch.equal(a[:, k], b[:, k])) for k in range(a.shape[1])]
    count = same.index(False) if False in same else len(same)
    assert not any(same[count:]), same
    return count


@pytest.mark.parametrize('mode', ['orig', 'style', 'layer'])
def test_mixing_with_probability_one_replaces_the_ws_after_the_cutoff(mode):
    loss = tiny_loss(style_mixing_prob=1.0, mixing=mode)
    G, num_ws = loss.G.train(), loss.G.num_ws
    fed = []
    G.synthesis = lambda ws_bg, ws_fg, **kw: (fed.append((ws_bg, ws_fg))
                                              or LayeredGenerator.synthesis(G, ws_bg, ws_fg, **kw))
    z, eps = torch.randn(4, 8), torch.rand(4, 2) * 2 - 1
    for seed in range(6):
        w_avg = [m.w_avg.clone() for m in (G.mapping_bg, G.mapping_fg)]
        base_bg, base_fg = G.mapping(z, update_w_avg=False)
        torch.manual_seed(seed)
        loss.run_G(z, eps)
        ws_bg, ws_fg = fed[-1]
        cut_bg, cut_fg = equal_prefix(ws_bg, base_bg), equal_prefix(ws_fg, base_fg)
        if mode == 'orig':        # an independent cutoff in each stack, never 0 nor num_ws
            assert 1 <= cut_bg < num_ws and 1 <= cut_fg < num_ws
        elif mode == 'style':     # one cutoff in the list bg ws + fg ws
            assert 1 <= cut_bg + cut_fg < 2 * num_ws and (cut_fg == 0 or cut_bg == num_ws)
        else:                     # the whole bg stack, none of the fg
            assert (cut_bg, cut_fg) == (0, num_ws)
        # Only the main mapping pass moves w_avg (β = 0.995 towards the batch mean of w(z)).
        for mapping, before, base in zip((G.mapping_bg, G.mapping_fg), w_avg, (base_bg, base_fg)):
            torch.testing.assert_close(mapping.w_avg, base[:, 0].mean(0).lerp(before, 0.995))
    if mode == 'orig':
        cuts = {(equal_prefix(bg, G.mapping(z, update_w_avg=False)[0]),) for bg, _ in fed}
        assert len(cuts) > 1      # the cutoff is random


def test_orig_mixing_decides_for_each_stack_on_its_own():
    """--mixing=orig at 0 < p < 1: the bg and fg stacks mix independently, as the original's two
    StyleGAN2 blocks (each its own draw); all four outcomes occur."""
    loss = tiny_loss(style_mixing_prob=0.5, mixing='orig')
    G, num_ws = loss.G.train(), loss.G.num_ws
    fed = []
    G.synthesis = lambda ws_bg, ws_fg, **kw: (fed.append((ws_bg, ws_fg))
                                              or LayeredGenerator.synthesis(G, ws_bg, ws_fg, **kw))
    z, eps = torch.randn(4, 8), torch.rand(4, 2) * 2 - 1
    outcomes = set()
    for seed in range(40):
        base_bg, base_fg = G.mapping(z, update_w_avg=False)
        torch.manual_seed(seed)
        loss.run_G(z, eps)
        ws_bg, ws_fg = fed[-1]
        outcomes.add((equal_prefix(ws_bg, base_bg) < num_ws, equal_prefix(ws_fg, base_fg) < num_ws))
    assert outcomes == {(False, False), (True, False), (False, True), (True, True)}


def test_mixing_probability_zero_or_mode_none_changes_nothing_not_even_the_random_stream():
    z, eps = torch.randn(4, 8), torch.rand(4, 2) * 2 - 1
    G = tiny_G()
    torch.manual_seed(3)
    before_change = PerturbedComposition(xint_max=0.125)(G(z), eps)['img']      # what run_G did before
    after_before = torch.rand(3)
    for options in (dict(), dict(style_mixing_prob=0.0, mixing='layer'), dict(style_mixing_prob=1.0, mixing='none')):
        G = tiny_G()
        loss = tiny_loss(G, **options)
        torch.manual_seed(3)
        _, shifted = loss.run_G(z, eps)
        assert torch.equal(shifted['img'], before_change)
        assert torch.equal(torch.rand(3), after_before)


def test_mixing_options_reach_the_loss_and_bad_values_are_user_errors(tmp_path):
    c = config(tmp_path, mixing='layer', mixing_prob=0.25)
    assert (c.loss_kwargs['mixing'], c.loss_kwargs['style_mixing_prob']) == ('layer', 0.25)
    assert c.run_desc.endswith('-layer_mixing')
    default = config(tmp_path)
    assert (default.loss_kwargs['mixing'], default.loss_kwargs['style_mixing_prob']) == ('orig', 0.0)
    with pytest.raises(dnnlib.UserError, match='--mixing-prob'):
        config(tmp_path, mixing_prob=1.5)
    result = CliRunner().invoke(train_cli.make_main(64, HOOKS), ['--outdir', str(tmp_path), '--data=synthetic',
                                                          '--mixing=random', '-n'])
    assert result.exit_code == 2 and "'random' is not one of 'orig', 'style', 'layer', 'none'" in result.output


# ----------------------------------------------------------------------------------------------
# --freezed (Freeze-D)

def test_freezed_counts_d_layers_from_the_input_side():
    names = lambda D: sorted(n for n, _ in D.named_parameters())  # noqa: E731
    frozen = {n for n in names(tiny_D()) if n not in names(tiny_D(freeze_layers=5))}
    # Layer order: block 16 fromrgb, conv0, conv1, skip (4), then block 8 conv0 (5th).
    assert frozen == {'blocks.0.fromrgb.weight', 'blocks.0.fromrgb.bias', 'blocks.0.conv0.weight',
                      'blocks.0.conv0.bias', 'blocks.0.conv1.weight', 'blocks.0.conv1.bias', 'blocks.0.skip.weight',
                      'blocks.1.conv0.weight', 'blocks.1.conv0.bias'}
    everything = tiny_D(freeze_layers=100)
    assert names(everything) == sorted(n for n in names(tiny_D()) if n.startswith('epilogue.'))
    # The frozen weights stay in the state dict under the same keys: snapshots load either way.
    assert tiny_D(freeze_layers=5).state_dict().keys() == tiny_D().state_dict().keys()
    tiny_D(freeze_layers=5).load_state_dict(tiny_D().state_dict())


def test_freezed_layers_are_unchanged_by_an_optimiser_step_and_the_others_move(tmp_path):
    from training.training_loop import lazy_adam
    c = config(tmp_path, freezed=4)
    assert c.D_kwargs['freeze_layers'] == 4 and c.run_desc.endswith('-freezed4')
    loss = tiny_loss()
    loss.D = D = tiny_D(freeze_layers=4).requires_grad_(False)
    before = {k: v.clone() for k, v in D.state_dict().items()}
    opt = lazy_adam(list(D.parameters()), dnnlib.EasyDict(lrate=0.01, betas=[0.0, 0.99], adam_eps=1e-8), 16)
    D.requires_grad_(True)
    loss.discriminator_main(torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 8), torch.rand(4, 2) * 2 - 1)
    loss.discriminator_reg(torch.rand(4, 3, 16, 16) * 2 - 1, gain=16)
    opt.step()
    for key, value in D.state_dict().items():
        if 'resample_filter' in key:
            continue
        moved = not torch.equal(value, before[key])
        assert moved == (not key.startswith('blocks.0.')), key


def test_resume_with_another_freezed_is_a_user_error(tmp_path):
    from torch_utils import checkpoint
    from training.resume import resume_from
    D = tiny_D()
    checkpoint.save_snapshot(str(tmp_path / 'snap.pt'), {'D': D},
                             data={'optimizers': {'D': torch.optim.Adam(D.parameters()).state_dict()}})
    frozen = tiny_D(freeze_layers=3)
    with pytest.raises(dnnlib.UserError, match='the D optimiser state of .* does not fit this run'):
        resume_from(str(tmp_path / 'snap.pt'), dnnlib.EasyDict(D=frozen),
                    {'D': torch.optim.Adam(frozen.parameters())}, None, 0, 1)


# ----------------------------------------------------------------------------------------------
# --pl-weight

def test_path_lengths_are_the_norm_of_the_transposed_jacobian_times_y():
    G = tiny_G(img_resolution=8).eval()
    ws_bg, ws_fg = G.mapping(torch.randn(2, 8))
    ws_bg, ws_fg = ws_bg.detach().requires_grad_(True), ws_fg.detach().requires_grad_(True)
    img = G.synthesis(ws_bg, ws_fg, noise_mode='const')['img']
    noise = torch.randn_like(img)
    lengths = L.path_lengths(img, [ws_bg, ws_fg], noise)
    # Independent: the full Jacobian of sample n's image w.r.t. its 2·num_ws style inputs.
    for n in range(2):
        def image_of(bg, fg, n=n):
            ws = (ws_bg.detach().clone(), ws_fg.detach().clone())
            ws[0][n], ws[1][n] = bg, fg
            return G.synthesis(*ws, noise_mode='const')['img'][n]
        jac_bg, jac_fg = torch.autograd.functional.jacobian(image_of, (ws_bg[n].detach(), ws_fg[n].detach()),
                                                              vectorize=True)
        y = noise[n].reshape(-1)
        jty = torch.cat([torch.einsum('i,ikw->kw', y, j.reshape(-1, *j.shape[3:])) for j in (jac_bg, jac_fg)])
        expected = jty.square().sum(1).mean().sqrt()
        assert lengths[n].item() == pytest.approx(expected.item(), rel=1e-4)


def test_path_length_penalty_is_finite_positive_and_trains_the_synthesis_networks():
    loss = tiny_loss(pl_weight=2.0)
    G = loss.G.train().requires_grad_(True)
    torch.manual_seed(0)
    out = loss.generator_reg(torch.randn(4, 8), gain=4)
    value = out['Loss/G/reg'].item()
    assert np.isfinite(value) and value > 0
    assert loss.pl_mean.item() > 0                   # a ← a + 0.01·(mean length − a), from 0
    for net in (G.synthesis_bg, G.synthesis_fg, G.mapping_bg, G.mapping_fg):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    # The EMA target: a second call starts from the first call's a.
    first = loss.pl_mean.item()
    torch.manual_seed(1)
    loss.generator_reg(torch.randn(4, 8))
    assert loss.pl_mean.item() != first


@pytest.fixture(scope='module')
def module_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('ILSGAN_CACHE', str(tmp_path_factory.getbasetemp() / 'ilsgan-cache'))
        yield


def tiny_run_config(outdir, **options):
    """test_training's tiny run: cpu preset, 4-16 channels, batch 8, 6 iterations, no snapshots but the last."""
    c = train_cli.build_training_config(**dict(dict(
        outdir=str(outdir), data='synthetic', cfg='cpu', batch=8, kimg=0.048, tick=0.048, snap=100,
        metrics='none', workers=0), **options), resolution=64)
    for kwargs in (c.G_kwargs, c.D_kwargs):
        kwargs.update(channel_base=128, channel_max=16)
    c.G_kwargs.update(z_dim=16, w_dim=16, mapping_layers=1)
    c.dataset_kwargs['num_images'] = 96
    c.update(grid_rows=2, grid_cols=4, layer_rows=4, layer_groups=1, cpu_threads=None)
    return c


@pytest.mark.parametrize('pl_weight,calls', [(0, 0), (2.0, 2)])
def test_g_reg_phase_runs_only_with_a_path_length_weight(tmp_path, module_cache, monkeypatch, pl_weight, calls):
    seen = []
    original = L.ILSLoss.generator_reg
    monkeypatch.setattr(L.ILSLoss, 'generator_reg', lambda self, z, gain=1.0: seen.append((len(z), gain)) or
                        original(self, z, gain))
    run_dir = train_cli.launch(tiny_run_config(tmp_path, pl_weight=pl_weight))
    # 6 iterations, G-reg every 4th (batch_idx 0 and 4), on half the batch, gain = the interval.
    assert seen == [(4, 4)] * calls
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        stats = [json.loads(line) for line in f]
    assert ('Loss/G/reg' in stats[-1]) == (calls > 0)


# ----------------------------------------------------------------------------------------------
# --upd-e, --cond, --nhwc

def test_upd_e_is_accepted_and_changes_nothing_but_the_run_name(tmp_path):
    def effect(c):   # the config without the options as typed (which record --upd-e) and the run name
        return {key: value for key, value in c.items() if key not in ('options', 'run_desc')}

    assert effect(config(tmp_path, upd_e='D')) == effect(config(tmp_path)) == effect(config(tmp_path, upd_e='G'))
    assert config(tmp_path, upd_e='D').run_desc == config(tmp_path).run_desc + '-updateEinD'  # as the original
    assert config(tmp_path, upd_e='G').run_desc == config(tmp_path).run_desc
    main = train_cli.make_main(64, HOOKS)
    result = CliRunner().invoke(main, ['--outdir', str(tmp_path), '--data=synthetic', '--upd-e=D', '-n'])
    assert result.exit_code == 0, result.output
    assert effect(json.loads(result.output)) == effect(json.loads(CliRunner().invoke(
        main, ['--outdir', str(tmp_path), '--data=synthetic', '-n']).output))


def test_resume_noresume_is_the_originals_default_spelled_out(tmp_path):
    main = train_cli.make_main(64, HOOKS)
    result = CliRunner().invoke(main, ['--outdir', str(tmp_path), '--data=synthetic', '--resume=noresume', '-n'])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)['resume'] is None
    result = CliRunner().invoke(main, ['--outdir', str(tmp_path), '--data=synthetic', '--resume=ffhq256', '-n'])
    assert result.exit_code == 2 and result.output.startswith('error: --resume: ffhq256 ')  # no pretrained networks


def test_cond_is_a_one_line_user_error(tmp_path):
    main = train_cli.make_main(128, HOOKS)
    result = CliRunner().invoke(main, ['--outdir', str(tmp_path / 'out'), '--data=synthetic', '--cond=1'])
    assert result.exit_code == 2
    assert result.output.strip() == ('error: --cond: the datasets have no class labels, so conditional training is '
                                     'not available; leave --cond off')
    assert CliRunner().invoke(main, ['--outdir', str(tmp_path), '--data=synthetic', '--cond=0', '-n']).exit_code == 0


def test_nhwc_sets_the_channels_last_layout_of_g_and_d(tmp_path):
    from training.training_loop import build_networks
    assert config(tmp_path).channels_last is None and config(tmp_path, nhwc=True).channels_last is True  # None: auto
    assert config(tmp_path, cfg='cpu').channels_last is True
    assert config(tmp_path, cfg='cpu', nhwc=False).channels_last is False
    c = tiny_run_config(tmp_path, cfg='cpu', nhwc=True)
    nets = build_networks(c, torch.device('cpu'))
    weight = nets.D.blocks[0].conv0.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    nets = build_networks(tiny_run_config(tmp_path, cfg='cpu', nhwc=False), torch.device('cpu'))
    assert nets.D.blocks[0].conv0.weight.is_contiguous()


# ----------------------------------------------------------------------------------------------
# The original's BOOL spellings (--mirror=1, --fp32=True, ...) beside the flags (dnnlib.cli.FlagCommand)

@pytest.mark.parametrize('bare, valued, off', [
    (['--mirror'], ['--mirror=1'], ['--mirror=0']),
    (['--mirror'], ['--mirror', 'True'], ['--mirror', 'no']),   # the original's click read a space too
    (['--fp32'], ['--fp32=True'], ['--fp32=false']),
    (['--nhwc'], ['--nhwc=1'], ['--nhwc=0']),
    (['--nobench'], ['--nobench=1'], ['--nobench=0']),
    (['--allow-tf32'], ['--allow-tf32=yes'], ['--allow-tf32=off']),
])
def test_training_flags_take_the_originals_bool_values(tmp_path, bare, valued, off):
    main = train_cli.make_main(64, HOOKS)

    def dry_run(*args):
        result = CliRunner().invoke(main, ['--outdir', str(tmp_path), '--data=synthetic', *args, '-n'])
        assert result.exit_code == 0, result.output
        return {key: value for key, value in json.loads(result.output).items() if key != 'options'}

    on = dry_run(*bare)
    assert dry_run(*valued) == on != dry_run()
    default_off = dry_run('--nchw') if bare == ['--nhwc'] else dry_run()  # --nhwc=0 is --nchw, not the default
    assert dry_run(*off) == default_off and dry_run(*bare, *off) == default_off  # the last spelling wins


@pytest.mark.parametrize('script', ['eval_segmentation.py', 'eval_segmentation_eval128.py'])
def test_segmentation_flags_take_the_originals_bool_values(pair_sets, script):
    from test_cli_docs import load_command
    main = load_command(script)
    unet = pair_sets / 'seg-run'
    unet.mkdir()
    for name in ('unet-best.pt', 'unet-last.pt'):
        (unet / name).write_bytes(b'stand-in: a dry run only names it')
    base = ['--syn-data', str(pair_sets / 'syn'), '--real-data', str(pair_sets / 'real'), '--resume-from', str(unet),
            '-n']

    def dry_run(*args):
        result = CliRunner().invoke(main, [*base, *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert dry_run('--test-only=True') == dry_run('--test-only') != dry_run()
    assert dry_run('--test-only=0') == dry_run()
    assert dry_run('--test-all=1') == dry_run('--test-all') != dry_run()
    result = CliRunner().invoke(main, [*base, '--test-only=maybe'])
    assert result.exit_code == 2 and result.output == ('error: --test-only=maybe: not a boolean; write --test-only '
                                                       'alone, or --test-only=1|0 (true|false, yes|no)\n')


def test_a_wrong_bool_value_is_one_line_and_a_false_value_counts_as_given(tmp_path):
    main = train_cli.make_main(64, HOOKS)
    result = CliRunner().invoke(main, ['--outdir', str(tmp_path), '--data=synthetic', '--mirror=maybe', '-n'])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        'error: --mirror=maybe: not a boolean; write --mirror alone, or --mirror=1|0 (true|false, yes|no)']
    assert not os.listdir(tmp_path)

    seen = {}

    @click.command(cls=dnnlib.cli.FlagCommand)
    @click.option('--mirror', is_flag=True)
    @click.option('--fp32', is_flag=True)
    @click.argument('path', required=False)
    def command(mirror, fp32, path):
        ctx = click.get_current_context()
        seen.update(mirror=mirror, fp32=fp32, path=path, given={name for name in ('mirror', 'fp32') if
                    ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE})

    # --resume keeps a stored option unless it was given: --mirror=0 is given, off.
    assert CliRunner().invoke(command, ['--mirror=0']).exit_code == 0
    assert seen == dict(mirror=False, fp32=False, path=None, given={'mirror'})
    # With a positional argument a value after a space is that argument, never the flag's.
    assert CliRunner().invoke(command, ['--fp32', '1', '--mirror=yes']).exit_code == 0
    assert seen == dict(mirror=True, fp32=True, path='1', given={'mirror', 'fp32'})
    assert CliRunner().invoke(command, ['--', '--mirror=1']).exit_code == 0  # after --, a positional
    assert seen['path'] == '--mirror=1' and not seen['mirror']


# ----------------------------------------------------------------------------------------------
# Segmentation: --crop-ratio, --test-all, --resume-from, --test-only (ORIGINAL §9.3)

def seg_config(tmp_path, **options):
    from metrics import segmentation as seg
    return seg.SegmentationConfig(**dict(dict(
        syn_data=str(tmp_path / 'syn'), real_data=str(tmp_path / 'real'), aug='gc', scale=32, iters=4, batch=4,
        val_interval=2, base_width=2, num_workers=0, progress=False, device='cpu'), **options))


@pytest.fixture
def pair_sets(tmp_path):
    from test_segmentation import write_pair_set
    write_pair_set(tmp_path / 'syn', n=10, resolution=32)
    write_pair_set(tmp_path / 'real', n=6, resolution=32, split='test')
    return tmp_path


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_crop_ratio_keeps_the_centre_of_the_synthetic_pairs_only(tmp_path):
    from metrics import segmentation as seg
    from training.dataset import open_dataset
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, :, 2] = 255                          # blue border ...
    image[4:12, 4:12] = (255, 0, 0)               # ... around a red centre half
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    for folder in ('syn', 'real'):
        fx.write_image(str(tmp_path / folder / 'img' / '000001.png'), image)
        fx.write_image(str(tmp_path / folder / 'img' / '000002.png'), image)
        fx.write_image(str(tmp_path / folder / 'mask' / '000001.png'), np.repeat(mask[..., None], 3, axis=2))
        fx.write_image(str(tmp_path / folder / 'mask' / '000002.png'), np.repeat(mask[..., None], 3, axis=2))
    cropped = open_dataset(str(tmp_path / 'syn'), split='test', resolution=16, crop_ratio=0.5)[0]
    assert (cropped[0].transpose(1, 2, 0) == (255, 0, 0)).all() and (cropped[1] == 1).all()
    cfg = seg_config(tmp_path, crop_ratio=0.5, scale=16)
    sets = seg.load_sets(cfg)
    assert (sets['train'][1] == 1).all() and (sets['val'][1] == 1).all()   # synthetic: cropped to the object
    assert sets['test'][1].float().mean() == 0.25                          # real test set: untouched
    assert cfg.run_desc() == 'real-real-gc_aug-16-CropRatio0.5'
    with pytest.raises(dnnlib.UserError, match='--crop-ratio applies to a folder of img/ \\+ mask/ pairs'):
        open_dataset(str(tmp_path / 'syn' / 'img'), crop_ratio=0.5)
    with pytest.raises(dnnlib.UserError, match=r'--crop-ratio must lie in \(0, 1\]'):
        seg.check_config(seg_config(tmp_path, crop_ratio=1.5))


def test_crop_ratio_offsets_round_half_to_even_as_torchvision_center_crop():
    """The original crops with torchvision's CenterCrop: offset round((H − S) / 2), Python's round."""
    from training.image_files import centre_square_crop
    image = np.arange(64 * 64).reshape(64, 64, 1)
    crop = centre_square_crop(image, 0.9)         # S = int(57.6) = 57; (64 − 57) / 2 = 3.5 → 4
    assert crop.shape == (57, 57, 1) and crop[0, 0, 0] == image[4, 4, 0]
    image = np.arange(10 * 10).reshape(10, 10, 1)
    assert centre_square_crop(image, 0.5)[0, 0, 0] == image[2, 2, 0]   # (10 − 5) / 2 = 2.5 → 2
    image = np.arange(5 * 8).reshape(5, 8, 1)     # ratio 1 (a non-square image's centre square): floor
    assert centre_square_crop(image)[0, 0, 0] == image[0, 1, 0]        # (8 − 5) // 2 = 1


def test_test_all_scores_every_validated_unet_on_the_test_set(pair_sets):
    from metrics import segmentation as seg
    results = seg.run_segmentation_eval(seg_config(pair_sets, test_all=True), run_dir=str(pair_sets / 'run'))
    lines = read_lines(pair_sets / 'run' / 'metric-test_all.jsonl')
    assert [line['iteration'] for line in lines] == [2, 4]
    # The selected UNet's line is the final test result: the same weights on the same images.
    assert next(l['results'] for l in lines if l['iteration'] == results['best_iteration']) == results['results']
    seg.run_segmentation_eval(seg_config(pair_sets), run_dir=str(pair_sets / 'plain'))
    assert not (pair_sets / 'plain' / 'metric-test_all.jsonl').exists()


def test_resume_from_continues_at_the_saved_iteration_with_adams_state(pair_sets):
    from metrics import segmentation as seg
    first = seg.run_segmentation_eval(seg_config(pair_sets), run_dir=str(pair_sets / 'a'))
    last = torch.load(pair_sets / 'a' / 'unet-last.pt', weights_only=True)    # a safe file, no pickle
    assert last['data']['iteration'] == 4 and last['data']['best_iteration'] == first['best_iteration']
    resumed = seg.run_segmentation_eval(seg_config(pair_sets, iters=6, resume_from=str(pair_sets / 'a')),
                                        run_dir=str(pair_sets / 'b'))
    assert [line['iteration'] for line in read_lines(pair_sets / 'b' / 'metric-val.jsonl')] == [6]
    state = torch.load(pair_sets / 'b' / 'unet-last.pt', weights_only=True)['data']['optimizer']['state']
    assert {float(s['step']) for s in state.values()} == {6.0}              # Adam went on from its 4 steps
    # Selection runs over the earlier run's best and the new validation.
    candidates = {first['best_iteration']: first['val']['IoU_dataset'],
                  6: read_lines(pair_sets / 'b' / 'metric-val.jsonl')[0]['results']['IoU_dataset']}
    assert resumed['best_iteration'] == max(candidates, key=lambda k: (candidates[k], k == first['best_iteration']))
    best_file = torch.load(pair_sets / 'b' / 'unet-best.pt', weights_only=True)
    assert best_file['data']['iteration'] == resumed['best_iteration']
    # A unet-best.pt holds no optimiser state: Adam restarts, counting only the new steps.
    seg.run_segmentation_eval(seg_config(pair_sets, iters=7, resume_from=str(pair_sets / 'a' / 'unet-best.pt')),
                              run_dir=str(pair_sets / 'c'))
    state = torch.load(pair_sets / 'c' / 'unet-last.pt', weights_only=True)['data']['optimizer']['state']
    assert {float(s['step']) for s in state.values()} == {7.0 - first['best_iteration']}
    with pytest.raises(dnnlib.UserError, match='at iteration 4 already; raise --iters'):
        seg.run_segmentation_eval(seg_config(pair_sets, resume_from=str(pair_sets / 'a')))
    with pytest.raises(dnnlib.UserError, match='trained on 32-pixel inputs, this run uses 16'):
        seg.run_segmentation_eval(seg_config(pair_sets, scale=16, iters=8, resume_from=str(pair_sets / 'a')))


def test_test_only_tests_the_saved_unet_without_training(pair_sets):
    from metrics import segmentation as seg
    import eval_segmentation
    first = seg.run_segmentation_eval(seg_config(pair_sets), run_dir=str(pair_sets / 'a'))
    common = [f'--syn-data={pair_sets / "syn"}', f'--real-data={pair_sets / "real"}', '--scale=32', '--workers=0',
              '--quiet', f'--outdir={pair_sets / "out"}']
    result = CliRunner().invoke(eval_segmentation.main, common + ['--test-only', f'--resume-from={pair_sets / "a"}'])
    assert result.exit_code == 0, result.output
    (run_dir,) = [pair_sets / 'out' / name for name in os.listdir(pair_sets / 'out')]
    results = json.loads((run_dir / 'results.json').read_text())
    assert results['results'] == first['results'] and results['best_iteration'] == first['best_iteration']
    assert results['snapshot'] == str(pair_sets / 'a' / 'unet-best.pt')
    assert sorted(os.listdir(run_dir)) == ['metric-test.jsonl', 'options.json', 'results.json',
                                           'seg-test.png']   # nothing trained
    for options, message in [(['--test-only'], '--test-only needs --resume-from'),
                             (['--test-only', '--test-all', f'--resume-from={pair_sets / "a"}'],
                              'does not combine with --test-only'),
                             ([f'--resume-from={pair_sets / "nothing"}'], 'nothing does not exist'),
                             ([f'--resume-from={pair_sets / "syn"}'], 'has no unet-last.pt')]:
        result = CliRunner().invoke(eval_segmentation.main, common + options)
        assert result.exit_code == 2 and message in result.output, (options, result.output)
    # Any other snapshot of this project is refused by name.
    from torch_utils import checkpoint
    checkpoint.save_snapshot(str(pair_sets / 'G.pt'), {'G': tiny_G()})
    result = CliRunner().invoke(eval_segmentation.main,
                                common + ['--test-only', f'--resume-from={pair_sets / "G.pt"}'])
    assert result.exit_code == 2 and 'holds no UNet' in result.output
