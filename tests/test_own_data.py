"""The own-data recipe end to end: a folder of photos (no masks) plus a folder of labelled pairs.

    python train_ILS_64.py --outdir=runs --data=PHOTOS --test-data=PAIRS --cfg=cpu
    python -m metrics.auto_test runs/00000-photos-cpu-batch16 --test-data=PAIRS
    python eval_segmentation.py --syn-data=RUN/auto_test/synthetic_data-TAG --real-data=PAIRS --scale=32 --aug=color

run here on tiny folders with the cpu preset shortened (one tick, the auto test's stages a few
iterations each), so the chain's wiring is what is tested, not its scores.
"""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from tests._fixtures import write_image
from tests.test_cli_docs import load_command
from metrics.training_hooks import HOOKS
from training import presets, train_cli

# The auto test's stages at the sizes of tests/test_auto_test.py: seconds on one core.
TINY_SIZES = dict(n=24, seg_iters=4, seg_batch=8, seg_base_width=4, seg_val_interval=2,
                  mine_steps=4, mine_hidden=8, mine_eval_every=2, mine_batch=8, mine_resolution=32)
# The cpu preset narrowed as tests/test_training.py's tiny_config narrows it (4-16 channels, small grids).
TINY_PRESET = dict(channel_base=128, channel_max=16, z_dim=16, w_dim=16, mapping_layers=1,
                   estimator_channels=[4] * 5, grid_rows=2, grid_cols=4, layer_rows=4, cpu_threads=None,
                   auto_test_sizes=TINY_SIZES)
SHORT_RUN = ['--cfg=cpu', '--batch=4', '--kimg=0.004', '--tick=0.004', '--snap=1', '--metrics=none',
             '--workers=0']


def scene(rng, w=40, h=36):
    """[h, w, 3] photo of one rectangle on a plain background, and its [h, w] mask (0 / 255)."""
    img = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (h, w, 3)).copy()
    mask = np.zeros((h, w), np.uint8)
    top, left = rng.integers(2, h // 2), rng.integers(2, w // 2)
    mask[top:top + h // 3, left:left + w // 3] = 255
    img[mask > 0] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img, mask


@pytest.fixture
def own_data(tmp_path):
    """``photos/`` (6 JPEGs, no masks) and ``pairs/`` (4 img/*.jpg + mask/*.png) of other sizes."""
    rng = np.random.default_rng(0)
    for i in range(6):
        write_image(str(tmp_path / 'photos' / f'photo{i}.jpg'), scene(rng)[0], quality=95)
    for i in range(4):
        img, mask = scene(rng, 30, 30)
        write_image(str(tmp_path / 'pairs' / 'img' / f'bird{i}.jpg'), img, quality=95)
        write_image(str(tmp_path / 'pairs' / 'mask' / f'bird{i}.png'), mask)
    return tmp_path / 'photos', tmp_path / 'pairs'


def train(*args):
    """train_ILS_64.py in this process (so that the preset's auto test sizes can be shortened)."""
    return CliRunner().invoke(train_cli.make_main(64, HOOKS), [str(a) for a in args], prog_name='train_ILS_64.py')


def command(name, *args):
    """The command ``name`` (as docs/cli names it) in this process: a subprocess would import torch again."""
    return CliRunner().invoke(load_command(name), [str(a) for a in args], prog_name=name)


def scored_images(results):
    """How many real test images the auto test's UNet was scored on."""
    with open(os.path.join(results['segmentation_run'], 'results.json')) as f:
        return json.load(f)['num_test_images']


def test_recipe_trains_on_photos_and_scores_on_the_pairs(own_data, tmp_path, monkeypatch):
    photos, pairs = own_data
    for name, value in TINY_PRESET.items():
        monkeypatch.setitem(presets.PRESETS_64['cpu'], name, value)
    # 1. Train on the photos; the auto test after training scores on the pairs.
    result = train(f'--outdir={tmp_path / "runs"}', f'--data={photos}', f'--test-data={pairs}', *SHORT_RUN)
    assert result.exit_code == 0, result.output[-3000:]
    run_dir = tmp_path / 'runs' / '00000-photos-cpu-batch4'
    assert json.loads((run_dir / 'training_options.json').read_text())['test_data'] == str(pairs)
    results = json.loads((run_dir / 'auto_test' / 'results.json').read_text())
    assert 0 <= results['IoU'] <= 1 and 0 <= results['DICE'] <= 1
    assert results['real_data'] == results['test_data'] == str(pairs)
    assert scored_images(results) == 4 and results['layout']['data']['count'] == 4
    assert 'Auto test results written to' in result.output

    # 2. The auto test again, on other pairs (three of the four): --test-data wins over the stored one.
    fewer = tmp_path / 'fewer'
    for sub in ('img', 'mask'):
        (fewer / sub).mkdir(parents=True)
        for name in sorted(os.listdir(pairs / sub))[:3]:
            (fewer / sub / name).write_bytes((pairs / sub / name).read_bytes())
    again = command('python -m metrics.auto_test', run_dir, f'--test-data={fewer}', '--quiet')
    assert again.exit_code == 0, again.output[-3000:]
    rescored = json.loads((run_dir / 'auto_test' / 'results.json').read_text())
    assert rescored['test_data'] == str(fewer) and scored_images(rescored) == 3

    # 3. The paper's segmentation protocol on the generated set, scored on the pairs.
    evaluated = command('eval_segmentation.py', f'--syn-data={results["synthetic_data"]}', f'--real-data={pairs}',
                        '--scale=32', '--aug=color', '--iters=4', '--batch=8', '--base-width=4', '--val-interval=2',
                        '--workers=0', '--quiet')
    assert evaluated.exit_code == 0, evaluated.output[-3000:]
    seg_run = max(name for name in os.listdir(results['synthetic_data']) if name.endswith('-real-pairs-color_aug-32'))
    seg = json.loads((tmp_path / results['synthetic_data'] / seg_run / 'results.json').read_text())
    assert seg_run not in (os.path.basename(results['segmentation_run']), os.path.basename(rescored['segmentation_run']))
    assert seg['num_test_images'] == 4 and 0 <= seg['results']['IoU'] <= 1

    # A resumed run keeps its --test-data.
    resumed = train(f'--outdir={tmp_path / "runs"}', f'--resume={run_dir}', '--kimg=0.008', '-n')
    assert resumed.exit_code == 0, resumed.output[-3000:]
    assert f'--test-data={pairs}' in resumed.output.splitlines()[0]
    assert json.loads(resumed.output[resumed.output.index('{'):])['test_data'] == str(pairs)


def bad_pairs(base, kind):
    """A --test-data folder with one thing wrong."""
    folder = base / kind
    if kind == 'missing':
        return folder
    (folder / 'img').mkdir(parents=True)
    if kind == 'no_subfolders':
        (folder / 'img').rmdir()
        write_image(str(folder / 'a.png'), np.zeros((8, 8, 3)))
        return folder
    (folder / 'mask').mkdir()
    if kind == 'mismatched':
        write_image(str(folder / 'img' / 'a.jpg'), np.zeros((8, 8, 3)))
        write_image(str(folder / 'mask' / 'a_mask.png'), np.zeros((8, 8)))
    if kind == 'damaged':
        write_image(str(folder / 'img' / 'a.png'), np.zeros((8, 8, 3)))
        (folder / 'mask' / 'a.png').write_bytes(b'not a png')
    return folder


@pytest.mark.parametrize('kind,message', [
    ('missing', 'missing: no such folder; give a folder of img/NAME.EXT + mask/NAME.png'),
    ('no_subfolders', 'no_subfolders has no img/ and mask/ subfolders'),
    ('empty', 'no images in'),
    ('mismatched', 'mask/a.png is listed in'),
    ('damaged', 'cannot read image'),
])
def test_bad_test_data_is_one_line_before_any_run_folder(own_data, tmp_path, kind, message):
    photos, _ = own_data
    folder = bad_pairs(tmp_path, kind)
    result = train(f'--outdir={tmp_path / "runs"}', f'--data={photos}', f'--test-data={folder}', *SHORT_RUN)
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith(f'error: --test-data={folder}') and message in line
    assert not (tmp_path / 'runs').exists()


def test_photos_without_test_data_name_the_option(own_data, tmp_path):
    photos, _ = own_data
    result = train(f'--outdir={tmp_path / "runs"}', f'--data={photos}', *SHORT_RUN)
    assert result.exit_code == 2 and not (tmp_path / 'runs').exists()
    assert f'{photos} has no masks; pass --test-data=PAIRS' in result.output
    assert result.output.strip().endswith('or pass --no-auto-test')
