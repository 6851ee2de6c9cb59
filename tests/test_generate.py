"""Snapshot choice (--topk / --pkl_idx / --sigma / --latest) and the synthetic-set writer."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import dnnlib
from metrics import generate
from torch_utils import checkpoint
from training import sample_set, snapshots


def _make_run(tmp_path, kimgs, metric_lines=None, name='run'):
    """Stand-in snapshot files at ``kimgs`` (kimg, may be fractional) and metric lines (kimg, fid, sigma)."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    for kimg in kimgs:
        (run_dir / checkpoint.snapshot_name(round(kimg * 1000))).write_bytes(b'stand-in')
    if metric_lines is not None:
        with open(run_dir / 'metric-fid10k_full.jsonl', 'w') as f:
            for kimg, fid, sigma in metric_lines:
                f.write(json.dumps({'results': {'fid10k_full': fid}, 'metric': 'fid10k_full',
                                    'snapshot_pkl': checkpoint.snapshot_name(round(kimg * 1000)),
                                    'sigma': sigma}) + '\n')
    return str(run_dir)


# A hand-written metric file: the lowest FID overall is at 600 kimg (sigma 1.0); below 400 kimg
# (sigma 0.2 warm-up) the best is 200.
LINES = [(0, 300.0, 0.2), (200, 80.0, 0.2), (400, 90.0, 0.2), (600, 40.0, 1.0), (800, 55.0, 1.0)]


def test_choose_snapshot_lowest_fid_overall(tmp_path):
    run = _make_run(tmp_path, [0, 200, 400, 600, 800], LINES)
    choice = snapshots.choose_snapshot(run)
    assert choice.kimg == 600 and choice.metric_value == 40.0 and choice.sigma == 1.0
    assert choice.path.endswith('network-snapshot-000600.pt')


def test_choose_snapshot_topk_is_a_kimg_bound(tmp_path):
    run = _make_run(tmp_path, [0, 200, 400, 600, 800], LINES)
    assert snapshots.choose_snapshot(run, topk=500).kimg == 200
    assert snapshots.choose_snapshot(run, topk=600).kimg == 600
    assert snapshots.choose_snapshot(run, topk=8000).kimg == 600


def test_choose_snapshot_sigma_filter(tmp_path):
    run = _make_run(tmp_path, [0, 200, 400, 600, 800], LINES)
    assert snapshots.choose_snapshot(run, sigma=0.2).kimg == 200
    assert snapshots.choose_snapshot(run, sigma=1.0, topk=700).kimg == 600
    with pytest.raises(dnnlib.UserError, match='relax'):
        snapshots.choose_snapshot(run, sigma=0.5)


def test_choose_snapshot_pkl_idx(tmp_path):
    run = _make_run(tmp_path, [0, 200, 400, 600, 800], LINES)
    choice = snapshots.choose_snapshot(run, pkl_idx=400)
    assert choice.kimg == 400 and choice.metric_value == 90.0
    with pytest.raises(dnnlib.UserError, match='available: 0, 200, 400, 600, 800'):
        snapshots.choose_snapshot(run, pkl_idx=300)


def test_pkl_idx_and_topk_exclude_each_other_as_in_the_original(tmp_path):
    run = _make_run(tmp_path, [0, 200, 400, 600, 800], LINES)
    with pytest.raises(dnnlib.UserError, match='--pkl_idx 400 names one snapshot and --topk 8000 .* give one of them'):
        snapshots.choose_snapshot(run, pkl_idx=400, topk=8000)


def test_choose_snapshot_by_fractional_kimg(tmp_path):
    # Ticks of 0.256 kimg: snapshots at 16, 272, 528 and 608 images, best FID at 528.
    run = _make_run(tmp_path, [0.016, 0.272, 0.528, 0.608],
                    [(0.016, 9.0, 0.2), (0.272, 0.45, 0.2), (0.528, 0.38, 0.2), (0.608, 0.47, 0.2)])
    choice = snapshots.choose_snapshot(run)
    assert choice.path.endswith('network-snapshot-000000_528.pt') and choice.metric_value == 0.38
    assert choice.kimg == 0.528
    choice = snapshots.choose_snapshot(run, topk=0.5)   # 0.528 and 0.608 lie above the bound
    assert choice.path.endswith('network-snapshot-000000_272.pt') and choice.metric_value == 0.45
    choice = snapshots.choose_snapshot(run, pkl_idx=0.608)
    assert choice.path.endswith('network-snapshot-000000_608.pt') and choice.metric_value == 0.47
    with pytest.raises(dnnlib.UserError, match=r'no network-snapshot-000000_300.pt .* available: 0.016, 0.272, '
                                               r'0.528, 0.608$'):
        snapshots.choose_snapshot(run, pkl_idx=0.3)


def test_choose_snapshot_in_an_old_run_whose_snapshots_overwrote_each_other(tmp_path):
    # Before names carried the images seen, four sub-kimg snapshots all went to ...000000.pt and
    # the metric file has four lines naming it; the file holds the weights of the last line.
    run = _make_run(tmp_path, [0], [(0, 9.0, 0.2), (0, 0.45, 0.2), (0, 0.38, 0.2), (0, 0.47, 0.2)])
    for choice in (snapshots.choose_snapshot(run), snapshots.choose_snapshot(run, pkl_idx=0)):
        assert choice.path.endswith('network-snapshot-000000.pt') and choice.metric_value == 0.47


def test_choose_snapshot_without_metric_file_needs_latest(tmp_path):
    run = _make_run(tmp_path, [0, 200, 400])
    with pytest.raises(dnnlib.UserError, match='--latest'):
        snapshots.choose_snapshot(run)
    assert snapshots.choose_snapshot(run, latest=True).kimg == 400


def test_choose_snapshot_errors_name_the_problem(tmp_path):
    with pytest.raises(dnnlib.UserError, match='neither a snapshot file nor a run directory'):
        snapshots.choose_snapshot(str(tmp_path / 'nowhere'))
    run = _make_run(tmp_path, [0, 200], [(0, 10.0, 0.2), (200, 5.0, 0.2), (400, 1.0, 0.2)])
    with pytest.raises(dnnlib.UserError, match='network-snapshot-000400.pt, which is missing'):
        snapshots.choose_snapshot(run)
    with open(os.path.join(run, 'metric-fid10k_full.jsonl'), 'a') as f:
        f.write('{not json\n')
    with pytest.raises(dnnlib.UserError, match='line 4'):
        snapshots.choose_snapshot(run)


class _StandInGenerator(torch.nn.Module):
    """Layers with known values: bg = -1 (black), fg = +1 (white), mask = left half of the image."""
    z_dim = 8
    img_resolution = 8

    def forward(self, z, truncation_psi=1.0, noise_mode='const'):
        n = z.shape[0]
        r = self.img_resolution
        mask = torch.zeros(n, 1, r, r)
        mask[:, :, :, : r // 2] = 1
        mask[:, :, 0, 0] = z[:, 0:1].sigmoid()  # one pixel that depends on z, to check the latents
        fg = torch.ones(n, 3, r, r)
        bg = -torch.ones(n, 3, r, r)
        return dict(bg=bg, fg=fg, mask=mask, img=mask * fg + (1 - mask) * bg)


def test_generate_dataset_writes_layout_and_refuses_to_overwrite(tmp_path):
    outdir = str(tmp_path / 'synthetic_data-000000')
    options = generate.GenerationOptions(snapshot='x.pt', kimg=0, n=5, seed=3)
    generate.generate_dataset(_StandInGenerator(), outdir, options, batch_size=2, progress=False)
    for layer in sample_set.LAYER_FOLDERS:
        assert sorted(os.listdir(os.path.join(outdir, layer))) == [f'{i:06d}.png' for i in range(1, 6)]
    mask = np.asarray(Image.open(os.path.join(outdir, 'mask', '000002.png')))
    assert mask.shape == (8, 8, 3) and (mask[:, 4:] == 0).all() and (mask[1:, :4] == 255).all()
    img = np.asarray(Image.open(os.path.join(outdir, 'img', '000002.png')))
    assert (img[1:, :4] == 255).all() and (img[:, 4:] == 0).all()  # ±1·127.5 + 128 clipped, truncated
    fg_masked = np.asarray(Image.open(os.path.join(outdir, 'fg_masked', '000002.png')))
    assert (fg_masked == 255).all()  # white fg over a white background
    meta = json.load(open(os.path.join(outdir, 'meta.json')))
    assert meta['n'] == 5 and meta['seed'] == 3 and meta['noise_mode'] == 'const'
    latents = np.load(os.path.join(outdir, 'latents.npy'))
    assert latents.shape == (5, 8)
    # The z-dependent pixel matches the stored latents: round(255·sigmoid(z0)).
    expected = np.round(255 / (1 + np.exp(-latents[1, 0])))
    assert abs(int(mask[0, 0, 0]) - expected) <= 1
    with pytest.raises(dnnlib.UserError, match='already exists'):
        generate.generate_dataset(_StandInGenerator(), outdir, options, progress=False)


def test_encoder_truncates_127_5x_plus_128_as_the_original():
    from torch_utils import misc
    x = torch.tensor([0.0, -1.0, 1.0, 0.003, -0.004, 0.004, -2.0, 3.0, (200 - 127.5) / 127.5])
    # 127.5·x + 128 = 128, 0.5, 255.5, 128.38, 127.49, 128.51 (rounding would give 129), −127, 510.5, 200.5
    assert misc.encode_uint8(x).tolist() == [128, 0, 255, 128, 127, 128, 0, 255, 200]
    # A [0, 1] mask as the original writes it, the image 2m − 1: trunc(127.5·(2m − 1) + 128) = round(255·m).
    m = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0, 2.4 / 255, 2.6 / 255])
    assert misc.encode_uint8(m, low=0.0, high=1.0).tolist() == [0, 51, 128, 230, 255, 2, 3]


def test_written_layers_are_the_originals_uint8():
    value = 0.004                                  # 127.5·v + 128 = 128.51: the original writes 128
    n, r = 2, 4
    layers = dict(img=torch.full((n, 3, r, r), value), fg=torch.full((n, 3, r, r), -value),
                  bg=torch.full((n, 3, r, r), 1.0), mask=torch.full((n, 1, r, r), 0.5))
    arrays = generate.encode_layers(layers)
    assert arrays['img'].shape == (n, r, r, 3) and (arrays['img'] == 128).all()
    assert (arrays['fg'] == 127).all() and (arrays['bg'] == 255).all()   # 127.49 → 127; 255.5 → 255
    assert (arrays['mask'] == 128).all()
    # fg over white: 0.5·(−0.004) + 0.5·1 = 0.498 → 127.5·0.498 + 128 = 191.4975 → 191.
    assert (arrays['fg_masked'] == 191).all()


def test_generate_dataset_resume_fills_missing_and_samples_do_not_depend_on_batch(tmp_path):
    outdir = str(tmp_path / 'set')
    options = generate.GenerationOptions(snapshot='x.pt', kimg=0, n=6, seed=1)
    generate.generate_dataset(_StandInGenerator(), outdir, options, batch_size=4, progress=False)
    reference = open(os.path.join(outdir, 'mask', '000005.png'), 'rb').read()
    os.remove(os.path.join(outdir, 'mask', '000005.png'))
    os.remove(os.path.join(outdir, 'bg', '000002.png'))
    assert sample_set.missing_indices(outdir, 6) == [1, 4]
    meta = generate.generate_dataset(_StandInGenerator(), outdir, options, batch_size=1, resume=True, progress=False)
    assert meta['generated_now'] == 2 and sample_set.missing_indices(outdir, 6) == []
    assert open(os.path.join(outdir, 'mask', '000005.png'), 'rb').read() == reference
    other = generate.GenerationOptions(snapshot='x.pt', kimg=0, n=6, seed=2)
    with pytest.raises(dnnlib.UserError, match='seed'):
        generate.generate_dataset(_StandInGenerator(), outdir, other, resume=True, progress=False)


def test_sample_latents_depend_only_on_seed_and_index():
    a = sample_set.sample_latents(7, [0, 1, 2, 3], 16)
    b = sample_set.sample_latents(7, [2, 3], 16)
    np.testing.assert_array_equal(a[2:], b)
    assert not np.allclose(sample_set.sample_latents(8, [0], 16), a[:1])


# ----------------------------------------------------------------------------------------------
# --resume of a set: only the set that the same snapshot and options would write.

def _tiny_snapshot(folder, seed: int, kimg: int = 0) -> str:
    """A snapshot of a tiny 16 px generator whose weights follow ``seed``."""
    from training.networks import LayeredGenerator
    torch.manual_seed(seed)
    G = LayeredGenerator(img_resolution=16, z_dim=8, w_dim=8, channel_base=64, channel_max=8, mapping_layers=1)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, checkpoint.snapshot_name(kimg * 1000))
    checkpoint.save_snapshot(path, dict(G_ema=G))
    return path


def test_resume_refuses_a_set_made_by_another_snapshot_of_the_same_kimg(tmp_path):
    snapshot_a = _tiny_snapshot(tmp_path / 'run-a', seed=1)
    snapshot_b = _tiny_snapshot(tmp_path / 'run-b', seed=2)   # same name, same kimg, other weights
    outdir = str(tmp_path / 'set')
    _, meta = generate.generate_from_network(snapshot_a, n=4, outdir=outdir, progress=False)
    assert meta['snapshot_sha256'] == generate.file_sha256(snapshot_a) != generate.file_sha256(snapshot_b)
    assert meta['generator']['kwargs']['z_dim'] == 8
    before = {layer: sorted(os.listdir(os.path.join(outdir, layer))) for layer in sample_set.LAYER_FOLDERS}
    os.remove(os.path.join(outdir, 'img', '000004.png'))
    with pytest.raises(dnnlib.UserError, match=r'cannot resume .*set: it was made from another snapshot \('
                                               r'.*run-a.*network-snapshot-000000.pt, snapshot_sha256 '):
        generate.generate_from_network(snapshot_b, n=4, outdir=outdir, resume=True, progress=False)
    # Every other field that changes the samples is named too.
    for options, field in ((dict(truncation_psi=0.5), 'truncation_psi'), (dict(noise_mode='random'), 'noise_mode'),
                           (dict(seed=1), 'seed'), (dict(n=5), 'n')):
        with pytest.raises(dnnlib.UserError, match=f'made with {field}='):
            generate.generate_from_network(snapshot_a, **{'n': 4, **options}, outdir=outdir, resume=True,
                                           progress=False)
    assert sorted(os.listdir(os.path.join(outdir, 'bg'))) == before['bg']   # nothing written by the refusals
    # The same snapshot, copied elsewhere, is the same set: resuming with it completes the set.
    moved = str(tmp_path / 'copy' / 'network-snapshot-000000.pt')
    os.makedirs(os.path.dirname(moved))
    with open(snapshot_a, 'rb') as src, open(moved, 'wb') as dst:
        dst.write(src.read())
    _, meta = generate.generate_from_network(moved, n=4, outdir=outdir, resume=True, progress=False)
    assert meta['generated_now'] == 1 and sorted(os.listdir(os.path.join(outdir, 'img'))) == before['img']


def test_resume_refuses_a_set_whose_generator_settings_or_hash_are_not_recorded(tmp_path):
    snapshot = _tiny_snapshot(tmp_path / 'run', seed=1)
    outdir = str(tmp_path / 'set')
    generate.generate_from_network(snapshot, n=2, outdir=outdir, progress=False)
    meta_path = os.path.join(outdir, 'meta.json')
    meta = json.load(open(meta_path))
    meta['generator']['kwargs']['channel_max'] = 16
    json.dump(meta, open(meta_path, 'w'))
    with pytest.raises(dnnlib.UserError, match='made with generator='):
        generate.generate_from_network(snapshot, n=2, outdir=outdir, resume=True, progress=False)
    del meta['snapshot_sha256']   # a set written before the hash was recorded
    json.dump(meta, open(meta_path, 'w'))
    with pytest.raises(dnnlib.UserError, match='records no snapshot_sha256'):
        generate.generate_from_network(snapshot, n=2, outdir=outdir, resume=True, progress=False)


def test_resume_removes_temporary_files_left_by_a_killed_generation(tmp_path):
    outdir = str(tmp_path / 'set')
    options = generate.GenerationOptions(snapshot='x.pt', kimg=0, n=3)
    generate.generate_dataset(_StandInGenerator(), outdir, options, progress=False)
    os.remove(os.path.join(outdir, 'fg', '000003.png'))
    for leftover in ('fg/.tmp-000003.png', 'img/.tmp-abc000003.png', '.tmp-xyzlatents.npy', 'latents.npy.tmp'):
        open(os.path.join(outdir, leftover), 'wb').close()
    meta = generate.generate_dataset(_StandInGenerator(), outdir, options, resume=True, progress=False)
    assert meta['generated_now'] == 1
    assert sorted(os.listdir(outdir)) == ['bg', 'fg', 'fg_masked', 'img', 'latents.npy', 'mask', 'meta.json']
    for layer in sample_set.LAYER_FOLDERS:
        assert sorted(os.listdir(os.path.join(outdir, layer))) == ['000001.png', '000002.png', '000003.png']


# ----------------------------------------------------------------------------------------------
# Reading a set back: whole, or refused.

def test_complete_samples_counts_against_meta_and_ignores_temporary_files(tmp_path, capsys):
    outdir = str(tmp_path / 'set')
    options = generate.GenerationOptions(snapshot='/runs/a/network-snapshot-000200.pt', kimg=200, n=5, seed=3)
    generate.generate_dataset(_StandInGenerator(), outdir, options, progress=False)
    names = [f'{i:06d}.png' for i in range(1, 6)]
    assert sample_set.complete_samples(outdir, ('img', 'mask')) == names
    os.remove(os.path.join(outdir, 'mask', '000002.png'))
    os.remove(os.path.join(outdir, 'fg', '000005.png'))
    os.rename(os.path.join(outdir, 'img', '000004.png'), os.path.join(outdir, 'img', '.tmp-000004.png'))
    expected = (f'{outdir} holds 3 of the 5 samples of its meta.json (in img/, mask/): an interrupted set; '
                f'python generate_segmentation_samples.py --network=/runs/a/network-snapshot-000200.pt --n=5 '
                f'--outdir={outdir} --seed=3 --resume completes it, or pass --allow-partial to use the 3')
    with pytest.raises(dnnlib.UserError) as info:
        sample_set.complete_samples(outdir, ('img', 'mask'))
    assert str(info.value) == expected
    assert sample_set.complete_samples(outdir, ('img', 'mask'), allow_partial=True, warn=True) == [
        '000001.png', '000003.png', '000005.png']
    assert capsys.readouterr().err == (f'warning: {outdir} holds 3 of the 5 samples of its meta.json; using '
                                       f'those 3 (--allow-partial)\n')
    assert sample_set.complete_samples(outdir, ('fg', 'bg', 'mask'), allow_partial=True) == [
        '000001.png', '000003.png', '000004.png']
    # Without meta.json (a user's own pairs) the folder is read as it is.
    os.remove(os.path.join(outdir, 'meta.json'))
    assert sample_set.complete_samples(outdir, ('img', 'mask')) is None


# ----------------------------------------------------------------------------------------------
# --perturb: samples composed with the run's training perturbation.

def _snapshot_with_perturbation(folder, composition_kwargs) -> str:
    """A tiny snapshot whose data records ``composition_kwargs`` as a training run does."""
    from training.networks import LayeredGenerator
    torch.manual_seed(5)
    G = LayeredGenerator(img_resolution=16, z_dim=8, w_dim=8, channel_base=64, channel_max=8, mapping_layers=1)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, checkpoint.snapshot_name(0))
    checkpoint.save_snapshot(path, dict(G_ema=G), data=dict(training_options=dict(composition_kwargs=composition_kwargs)))
    return path


def _png(folder, layer, index=1):
    return np.asarray(Image.open(os.path.join(folder, layer, f'{index:06d}.png'))).astype(np.int64)


def test_perturbed_set_moves_fg_and_mask_over_the_same_bg(tmp_path):
    snapshot = _snapshot_with_perturbation(
        tmp_path / 'run', dict(class_name='training.networks.PerturbedComposition', xint_max=0.25))
    plain, _ = generate.generate_from_network(snapshot, n=6, outdir=str(tmp_path / 'plain'), progress=False)
    moved, meta = generate.generate_from_network(snapshot, n=6, outdir=str(tmp_path / 'moved'), perturb=True,
                                                 batch_size=4, progress=False)
    assert meta['perturb'] == {'xint_max': 0.25}
    eps = generate.sample_perturbations(0, list(range(6)), 2)
    shifts = np.round(eps * 0.25 * 16).astype(int)                # ±4 px at 16 px, as in training
    assert (np.abs(shifts) > 0).any()
    for i in range(6):
        np.testing.assert_array_equal(_png(moved, 'bg', i + 1), _png(plain, 'bg', i + 1))   # bg stays
        tx, ty = shifts[i]
        expected = np.zeros_like(_png(plain, 'mask', i + 1))    # the mask moved by (tx, ty), zero filled
        src = _png(plain, 'mask', i + 1)
        h = w = 16
        expected[max(ty, 0):h + min(ty, 0), max(tx, 0):w + min(tx, 0)] = src[max(-ty, 0):h + min(-ty, 0),
                                                                              max(-tx, 0):w + min(-tx, 0)]
        np.testing.assert_array_equal(_png(moved, 'mask', i + 1), expected)
    # Where the moved mask is 0 the composite is the background.
    img, mask, bg = _png(moved, 'img', 2), _png(moved, 'mask', 2), _png(moved, 'bg', 2)
    assert (np.abs(img - bg)[mask[..., 0] == 0] <= 1).all()
    # Sample i depends on (seed, i) alone: another batch size writes the same files.
    again, _ = generate.generate_from_network(snapshot, n=6, outdir=str(tmp_path / 'again'), perturb=True,
                                              batch_size=1, progress=False)
    for layer in sample_set.LAYER_FOLDERS:
        np.testing.assert_array_equal(_png(again, layer, 5), _png(moved, layer, 5))
    # A perturbed set is not completed by an unperturbed generation, nor the reverse.
    os.remove(os.path.join(moved, 'img', '000003.png'))
    with pytest.raises(dnnlib.UserError, match='made with perturb='):
        generate.generate_from_network(snapshot, n=6, outdir=moved, resume=True, progress=False)
    # The default folder of a perturbed set is not the plain one's.
    assert generate.default_outdir(snapshot, perturb=True).endswith('synthetic_data-000000-perturbed')


@pytest.mark.parametrize('kwargs, message', [
    (None, 'records no training perturbation'),
    (dict(class_name='os.system', xint_max=0.1), "'os.system', not PerturbedComposition"),
    (dict(xint_max=-0.1), 'xint_max=-0.1 is not one of'),
    (dict(xint_max='0.1'), "xint_max='0.1' is not one of"),
    (dict(xint_max=float('nan')), 'xint_max=nan'),
    (dict(xint_max=0.1, evil=1.0), 'evil=1.0'),
    (dict(xint_max=0.1, rotate_max=10.0), 'mutually exclusive'),
])
def test_perturb_refuses_a_snapshot_without_a_valid_perturbation(tmp_path, kwargs, message):
    snapshot = _snapshot_with_perturbation(tmp_path / 'run', kwargs)
    outdir = str(tmp_path / 'set')
    with pytest.raises(dnnlib.UserError, match=message):
        generate.generate_from_network(snapshot, n=2, outdir=outdir, perturb=True, progress=False)
    assert not os.path.exists(outdir)


def test_generator_masks_are_the_masks_of_an_unperturbed_set(tmp_path):
    """G's own masks, recomputed from a snapshot, are the set's mask PNGs (round(255·m)) for the same seed."""
    from training import networks
    torch.manual_seed(1)
    G = networks.LayeredGenerator(img_resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64,
                                  channel_max=4)
    path = str(tmp_path / 'network-snapshot-000001.pt')
    checkpoint.save_snapshot(path, {'G_ema': G}, data={'kimg': 1.0})
    outdir, _ = generate.generate_from_network(path, n=5, outdir=str(tmp_path / 'set'), seed=3, batch_size=2,
                                               progress=False)
    masks = generate.generator_masks(path, 5, seed=3, batch_size=3)
    written = np.stack([np.asarray(Image.open(os.path.join(outdir, 'mask', f'{i:06d}.png')))[..., 0]
                        for i in range(1, 6)])
    assert masks.shape == (5, 16, 16) and masks.dtype == np.float32
    assert np.abs(masks * 255 - written).max() <= 0.5 + 1e-3
    assert masks.std() > 0                                      # not a constant: the check can fail
