"""experiments/heldout_data.py: the held-out procedural set, read back as DRC cars by training/dataset.py."""

import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from experiments import heldout_data as hd
from training import dataset as ds
from training import drc


def write(out, *args: str):
    """Run the command in this process; returns its result."""
    return CliRunner().invoke(hd.main, [f'--out={out}', *args])


def read_png(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """6 train + 4 test images at 32 px, written by the command."""
    out = tmp_path_factory.mktemp('heldout')
    result = write(out, '--train=6', '--test=4', '--resolution=32', '--seed=3')
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope='module')
def masks64():
    """Masks of the first 200 train samples at 64 px, with their object draws."""
    masks = hd.generate('train', 200, seed=0, resolution=64)['mask']
    objects = [hd.draw_object(np.random.default_rng([0, hd.SPLIT_STREAMS['train'], i])) for i in range(200)]
    return masks, objects


def test_tiny_set_is_read_by_training_dataset_as_cars(tiny):
    out, output = tiny
    lines = output.strip().splitlines()
    assert lines[-1].startswith(f'wrote {os.path.join(out, "cars")}: 6 train + 4 test images at 32 px')
    train = ds.open_dataset('car', 'train', 32, data_root=str(out))
    test = ds.open_dataset('car', 'test', 32, data_root=str(out))
    assert (len(train), len(test)) == (6, 4)
    for i in range(6):
        image, label = train[i]
        assert image.shape == (3, 32, 32) and image.dtype == np.uint8 and label.shape == (0,)
        # At R = 32 the centre crop and resize are identities: the pixels come back exactly.
        np.testing.assert_array_equal(image, hd.sample(3, 'train', i, 32)[0])
    for i in range(4):
        image, mask = test[i]
        expected_image, expected_mask = hd.sample(3, 'test', i, 32)
        assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
        assert set(np.unique(mask)) == {0, 1}
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(mask, expected_mask)


def test_files_follow_the_drc_cars_conventions(tiny):
    out, _ = tiny
    root = os.path.join(out, 'cars')
    tokens = np.load(os.path.join(root, 'data_mrcnn_train_select.npy'), allow_pickle=False)
    assert tokens.dtype.kind == 'U' and list(tokens) == [f'train{i:06d}' for i in range(6)]
    assert list(drc.load_tokens(os.path.join(root, 'data_mrcnn_test_select.npy'))) == [f'test{i:06d}' for i in range(4)]
    for folder, suffix in (('data_mrcnn/train/orig', 'maskorig'), ('data_mrcnn/test/resized', 'maskresized')):
        masks = [n for n in os.listdir(os.path.join(root, folder)) if n.endswith(f'_{suffix}.png')]
        assert len(masks) == (6 if 'train' in folder else 4)
        for name in masks:
            with Image.open(os.path.join(root, folder, name)) as mask:
                assert mask.mode == 'L'
                assert set(np.unique(np.asarray(mask))) <= {0, 255}
    # Train masks (the ceiling export reads them) match the generator's.
    with_masks = ds.open_dataset('car', 'train', 32, data_root=str(out), train_masks=True)
    np.testing.assert_array_equal(with_masks[5][1], hd.sample(3, 'train', 5, 32)[1])


def test_existing_set_is_never_overwritten(tiny):
    out, _ = tiny
    before = read_png(os.path.join(out, 'cars', 'data_mrcnn', 'train', 'orig', 'train000000_orig.png'))
    result = write(out, '--train=2', '--test=2', '--resolution=32', '--seed=4')
    assert result.exit_code != 0 and 'never overwritten' in result.output
    after = read_png(os.path.join(out, 'cars', 'data_mrcnn', 'train', 'orig', 'train000000_orig.png'))
    np.testing.assert_array_equal(before, after)


def test_sample_depends_on_seed_split_and_index_only(tmp_path):
    small, large = tmp_path / 'small', tmp_path / 'large'
    assert write(small, '--train=3', '--test=1', '--resolution=32').exit_code == 0
    assert write(large, '--train=7', '--test=2', '--resolution=32', '--workers=2').exit_code == 0
    for i in range(3):
        name = os.path.join('cars', 'data_mrcnn', 'train', 'orig', f'train{i:06d}_orig.png')
        np.testing.assert_array_equal(read_png(small / name), read_png(large / name))
    whole, tail = hd.generate('test', 5, resolution=32), hd.generate('test', 2, resolution=32, start=3)
    np.testing.assert_array_equal(whole['img'][3:], tail['img'])
    other_seed = hd.generate('test', 5, seed=1, resolution=32)
    assert all(not np.array_equal(whole['img'][i], other_seed['img'][i]) for i in range(5))


def test_train_and_test_are_different_streams():
    train, test = hd.generate('train', 8, resolution=32), hd.generate('test', 8, resolution=32)
    for i in range(8):
        assert not any(np.array_equal(test['img'][i], train['img'][j]) for j in range(8))
        assert not np.array_equal(test['mask'][i], train['mask'][i])


def test_mask_areas_lie_in_the_stated_range_and_vary(masks64):
    area = masks64[0].mean(axis=(1, 2))
    low, high = hd.AREA_RANGE
    assert area.min() >= low and area.max() <= high, (area.min(), area.max())
    assert area.max() - area.min() > 0.3
    assert 0.15 < np.median(area) < 0.35


def test_mask_area_matches_an_independent_estimate(masks64):
    # For objects inside the frame, the area is scale² · (area in object units) / 4, the latter
    # counted here on a fine grid of the parts' own inside test, independently of the renderer.
    for mask, (_, parts, _, layout) in zip(masks64[0][:60], masks64[1][:60]):
        if layout.cut:
            continue
        bounds = np.array([hd.part_bounds(p) for p in parts if p.silhouette])
        step = 0.01
        x, y = np.meshgrid(np.arange(bounds[:, 0].min(), bounds[:, 2].max(), step),
                           np.arange(bounds[:, 1].min(), bounds[:, 3].max(), step))
        inside = np.zeros(x.shape, bool)
        for part in parts:
            if part.silhouette:
                inside |= hd.part_sdf(part, x, y) < 0
        expected = layout.scale ** 2 * inside.sum() * step ** 2 / 4
        assert abs(mask.mean() - expected) < 0.05 * expected, (mask.mean(), expected)   # seen: 2 %


def test_a_share_of_objects_is_cut_by_the_border(masks64):
    masks, objects = masks64
    touches = masks[:, 0].any(1) | masks[:, -1].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1)
    cut = np.array([layout.cut for *_, layout in objects])
    assert 0.1 <= touches.mean() <= 0.35
    np.testing.assert_array_equal(touches, cut)        # cut objects reach the border, the others keep off it
    assert {kind for kind, *_ in objects} == set(hd.OBJECTS)


def test_scene_does_not_depend_on_the_resolution():
    for i in range(6):
        small = hd.sample(0, 'test', i, 32)[1].astype(bool)
        large = hd.sample(0, 'test', i, 128)[1].reshape(32, 4, 32, 4).mean(axis=(1, 3)) > 0.5
        assert (small & large).sum() / (small | large).sum() > 0.85
