"""The evaluation chain from a snapshot: generate_segmentation_samples.py and the auto test."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import dnnlib

from metrics import auto_test, layout, segmentation
from torch_utils import checkpoint, misc
from training import networks, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_G = dict(img_resolution=64, z_dim=16, w_dim=16, mapping_layers=1, channel_base=256, channel_max=8)
TINY_SIZES = dict(n=40, seg_iters=6, seg_batch=8, seg_base_width=4, seg_val_interval=3,
                  mine_steps=6, mine_hidden=8, mine_eval_every=3, mine_batch=8)


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with one snapshot of a tiny generator and its training options."""
    torch.manual_seed(0)
    G = networks.LayeredGenerator(**TINY_G)
    D = networks.Discriminator(img_resolution=64, channel_base=256, channel_max=8)
    run = tmp_path / '00000-synthetic-cpu-batch16'
    run.mkdir()
    checkpoint.save_snapshot(str(run / 'network-snapshot-000004.pt'), {'G': G, 'G_ema': G, 'D': D},
                             data={'kimg': 4.0, 'sigma': 0.2})
    (run / 'training_options.json').write_text(json.dumps({'data': 'synthetic', 'resolution': 64, 'auto_test_sizes': TINY_SIZES}))
    return run


def _script(name, *args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *args], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ, PYTHONPATH=ROOT))


def test_generate_script_writes_layout_from_a_snapshot_and_refuses_to_overwrite(run_dir):
    result = _script('generate_segmentation_samples.py', f'--network={run_dir}', '--n=5', '--batch=2')
    assert result.returncode == 2 and '--latest' in result.stderr  # no metric file: it says so
    result = _script('generate_segmentation_samples.py', f'--network={run_dir}', '--n=5', '--batch=2', '--latest')
    assert result.returncode == 0, result.stderr
    outdir = run_dir / 'synthetic_data-000004'
    for layer in ('img', 'mask', 'fg', 'bg', 'fg_masked'):
        assert sorted(os.listdir(outdir / layer)) == [f'{i:06d}.png' for i in range(1, 6)]
    meta = json.loads((outdir / 'meta.json').read_text())
    assert meta['kimg'] == 4 and meta['n'] == 5 and meta['resolution'] == 64
    again = _script('generate_segmentation_samples.py', f'--network={run_dir}', '--n=5', '--latest')
    assert again.returncode == 2 and 'already exists' in again.stderr and 'Traceback' not in again.stderr


def test_generated_images_match_the_snapshot_generator(run_dir, tmp_path):
    from PIL import Image
    import numpy as np
    from metrics import generate
    outdir, meta = generate.generate_from_network(str(run_dir / 'network-snapshot-000004.pt'), n=3,
                                                  outdir=str(tmp_path / 'set'), seed=5, progress=False)
    G = checkpoint.load_snapshot(str(run_dir / 'network-snapshot-000004.pt'))['G_ema']
    z = torch.from_numpy(np.load(os.path.join(outdir, 'latents.npy')))
    with torch.no_grad():
        layers = G(z, noise_mode='const')
    expected = misc.to_uint8(layers['img'])
    written = np.stack([np.asarray(Image.open(os.path.join(outdir, 'img', f'{i:06d}.png'))) for i in (1, 2, 3)])
    np.testing.assert_array_equal(written, expected)


def test_auto_test_chain_writes_results_and_prints_table(run_dir, capsys):
    summary = auto_test.run_auto_test(str(run_dir), progress=False)
    results = json.loads((run_dir / 'auto_test' / 'results.json').read_text())
    for key in ('snapshot', 'fid', 'IoU', 'DICE', 'MI_1', 'MI_2', 'MI', 'synthetic_data'):
        assert key in results
    assert results['kimg'] == 4 and results['chosen_by'] == 'latest snapshot (--latest)'
    assert 0.0 <= results['IoU'] <= 1.0 and 0.0 <= results['DICE'] <= 1.0
    assert summary['IoU'] == results['IoU']
    assert len(os.listdir(os.path.join(results['synthetic_data'], 'img'))) == TINY_SIZES['n']
    # The layout measure: every generated mask counted, against the synthetic test split's masks.
    assert results['layout']['generated']['count'] == TINY_SIZES['n']
    data_layout = results['layout']['data']
    assert data_layout['count'] == synthetic.DEFAULT_NUM_IMAGES['test'] and data_layout['position_spread'] > 0.05
    assert set(results['layout']['ratios']) == {'position', 'x', 'y', 'area'}
    table = capsys.readouterr().out
    assert 'IoU' in table and 'MI (b; f)' in table and 'network-snapshot-000004.pt' in table
    assert 'layout spread gen/data' in table and 'masks empty/full/grey' in table
    # IoU by object size: three equal thirds of the test split, smallest objects first.
    thirds = results['IoU_by_size']
    assert [g['n'] for g in thirds] == [len(t) for t in np.array_split(np.arange(synthetic.DEFAULT_NUM_IMAGES['test']), 3)]
    assert thirds[0]['area_max'] <= thirds[1]['area_min'] and thirds[1]['area_max'] <= thirds[2]['area_min']
    size_row = next(line for line in table.splitlines() if line.startswith('IoU by object size'))
    assert f'{thirds[0]["IoU"]:.3f} / ' in size_row and 'predicted/true' in size_row
    # The fixed mask of the same test split (64 px masks), the gain over it, per third too.
    fixed = segmentation.fixed_mask_score(layout.load_data_masks('synthetic', 64))
    assert (results['fixed_mask_IoU'], results['fixed_mask_DICE'], results['fixed_mask_threshold']) == \
        (fixed['IoU'], fixed['DICE'], fixed['threshold'])
    assert results['IoU_gain'] == pytest.approx(results['IoU'] - fixed['IoU'])
    gain_row = next(line for line in table.splitlines() if line.startswith('IoU gain over fixed mask'))
    assert f'{results["IoU_gain"]:+.4f} (fixed mask: IoU {fixed["IoU"]:.4f}' in gain_row
    assert all('fixed_mask_IoU' in g for g in thirds) and '; fixed mask ' in size_row
    # Each failure the layout numbers show is a warning under the table and in results.json, after
    # the fixed mask's (a tiny UNet does no better than one mask).
    fixed_warning = segmentation.fixed_mask_warning(results['IoU'], fixed['IoU'])
    assert results['warnings'] == ([fixed_warning] if fixed_warning else []) + layout.layout_warnings(results['layout'])
    assert results['layout_generator'] is None and "G's own layout" not in table   # unperturbed: the set is G's
    assert [line[len('WARNING: '):] for line in table.splitlines() if line.startswith('WARNING: ')] == results['warnings']
    assert results['MI_converged'] is False and results['MI_why'].startswith("6 steps, fewer than the paper's")
    mi_row = next(line for line in table.splitlines() if line.startswith('MI (b; f)'))
    assert mi_row.endswith('(not converged)')
    mine_row = next(line for line in table.splitlines() if line.startswith('MINE '))
    assert mine_row.split('|', 1)[1].strip().startswith("NOT CONVERGED: 6 steps, fewer than the paper's 100000")


def test_auto_test_on_a_folder_that_is_not_a_run(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'metrics.auto_test', str(tmp_path)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 2 and 'training_options.json not found' in result.stderr


def test_auto_test_of_a_cpu_preset_composes_samples_with_the_training_perturbation(run_dir, capsys):
    from training import presets
    assert presets.resolve_preset('cpu').auto_test_perturb is True
    assert presets.resolve_preset('ILS_predL').auto_test_perturb is False   # the original's samples
    snapshot = run_dir / 'network-snapshot-000004.pt'
    G = checkpoint.load_snapshot(str(snapshot))['G_ema']
    options = {'data': 'synthetic', 'resolution': 64, 'auto_test_sizes': TINY_SIZES, 'auto_test_perturb': True,
               'composition_kwargs': {'class_name': 'training.networks.PerturbedComposition', 'xint_max': 0.125}}
    snapshot.unlink()
    checkpoint.save_snapshot(str(snapshot), {'G_ema': G}, data={'kimg': 4.0, 'sigma': 0.2,
                                                                'training_options': options})
    (run_dir / 'training_options.json').write_text(json.dumps(dict(options, auto_test_perturb='no')))
    with pytest.raises(dnnlib.UserError, match="auto_test_perturb='no' in the training options"):
        auto_test.run_auto_test(str(run_dir), progress=False)
    assert not (run_dir / 'auto_test').exists()                             # refused before anything is made
    (run_dir / 'training_options.json').write_text(json.dumps(options))
    results = auto_test.run_auto_test(str(run_dir), progress=False)
    assert results['synthetic_data'].endswith('synthetic_data-000004-perturbed')
    assert results['perturb'] == {'xint_max': 0.125}
    meta = json.loads((run_dir / 'auto_test' / 'synthetic_data-000004-perturbed' / 'meta.json').read_text())
    assert meta['perturb'] == {'xint_max': 0.125}
    table = capsys.readouterr().out
    assert 'with the training perturbation (xint_max 0.125)' in table
    # The layout of G's own masks (the set's latents before the shift) beside the set's.
    own = results['layout_generator']
    assert own['generated']['count'] == TINY_SIZES['n'] and own['data'] == results['layout']['data']
    fixed_warning = segmentation.fixed_mask_warning(results['IoU'], results['fixed_mask_IoU'])
    assert results['warnings'] == ([fixed_warning] if fixed_warning else []) + layout.layout_warnings(results['layout'], own)
    row = next(line for line in table.splitlines() if line.startswith("G's own layout spread gen/data"))
    assert row.split('|', 1)[1].strip() == layout.format_layout_rows(results['layout'], own)[1][1]
