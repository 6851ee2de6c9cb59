"""training/synthetic.py and the 'synthetic' dataset: determinism, layers, areas, splits, cache."""

import os

import numpy as np
import pytest

import dnnlib
from training import dataset as ds
from training import synthetic


@pytest.fixture(scope='module')
def layers():
    return synthetic.generate('train', 120, seed=0, layers=True)


def test_same_seed_same_samples_other_seed_different():
    a = synthetic.generate('train', 6, seed=0)
    b = synthetic.generate('train', 6, seed=0)
    c = synthetic.generate('train', 6, seed=1)
    np.testing.assert_array_equal(a['img'], b['img'])
    np.testing.assert_array_equal(a['mask'], b['mask'])
    assert all(not np.array_equal(a['img'][i], c['img'][i]) for i in range(6))


def test_sample_depends_only_on_its_index():
    whole = synthetic.generate('test', 7, seed=0, chunk=3)
    tail = synthetic.generate('test', 3, seed=0, start=4, chunk=64)
    np.testing.assert_array_equal(whole['img'][4:], tail['img'])
    np.testing.assert_array_equal(whole['mask'][4:], tail['mask'])


def test_image_is_the_mask_composite_of_fg_over_bg(layers):
    img, mask, fg, bg = (layers[k] for k in ('img', 'mask', 'fg', 'bg'))
    assert img.shape == fg.shape == bg.shape == (120, 3, 128, 128) and mask.shape == (120, 128, 128)
    assert img.dtype == mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    m = mask[:, None].astype(np.int64)
    np.testing.assert_array_equal(img, m * fg + (1 - m) * bg)


def test_object_area_between_15_and_60_percent(layers):
    area = layers['mask'].mean(axis=(1, 2))
    assert area.min() >= 0.15 and area.max() <= 0.60
    assert area.max() - area.min() > 0.25                       # sizes really vary


def test_shapes_and_textures_vary():
    params = [synthetic._sample_params(np.random.default_rng([0, 0, i])) for i in range(200)]
    assert {p['shape'] for p in params} == set(range(len(synthetic.SHAPES)))
    assert {p['fg_pattern'] for p in params} == set(range(1, len(synthetic.PATTERNS)))


def test_foreground_and_background_colours_are_independent(layers):
    # Mean colour of the object (inside the mask) vs of the background (outside): drawn
    # independently, so across samples they are uncorrelated, and neither sits in its own range.
    m = layers['mask'][:, None].astype(np.float64)
    img = layers['img'].astype(np.float64)
    fg_colour = (img * m).sum(axis=(2, 3)) / m.sum(axis=(2, 3))
    bg_colour = (img * (1 - m)).sum(axis=(2, 3)) / (1 - m).sum(axis=(2, 3))
    for c in range(3):
        r = np.corrcoef(fg_colour[:, c], bg_colour[:, c])[0, 1]
        assert abs(r) < 0.3, (c, r)
        assert fg_colour[:, c].std() > 25 and bg_colour[:, c].std() > 25


def test_backgrounds_are_textured(layers):
    # A flat background would let a model segment by colour alone: every background varies.
    bg = layers['bg'].astype(np.float64)
    assert (bg.std(axis=(2, 3)).max(axis=1) > 4).all()


def test_train_and_test_splits_are_disjoint():
    train = synthetic.generate('train', 40, seed=0)['img']
    test = synthetic.generate('test', 20, seed=0)['img']
    distance = np.abs(train[:, None].astype(np.int16) - test[None].astype(np.int16)).mean(axis=(2, 3, 4))
    assert distance.min() > 5


def test_downsample_is_the_area_mean():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    mask = rng.integers(0, 2, (3, 8, 8), dtype=np.uint8)
    mask[0, 0:2, 0:2] = [[1, 1], [0, 0]]                             # exactly half covered → background
    small_img, small_mask = synthetic.downsample(img, mask, 2)
    for y in range(4):
        for x in range(4):
            block = img[:, :, 2 * y:2 * y + 2, 2 * x:2 * x + 2].astype(np.float64)
            np.testing.assert_array_equal(small_img[:, :, y, x], np.rint(block.mean(axis=(2, 3))))
            cover = mask[:, 2 * y:2 * y + 2, 2 * x:2 * x + 2].mean(axis=(1, 2))
            np.testing.assert_array_equal(small_mask[:, y, x], (cover > 0.5).astype(np.uint8))
    assert small_mask[0, 0, 0] == 0


def test_dataset_at_64_is_the_area_downsampled_128(monkeypatch):
    d128 = ds.open_dataset('synthetic', 'test', 128, num_images=5)
    d64 = ds.open_dataset('synthetic', 'test', 64, num_images=5)
    assert d64.name == 'synthetic64-test' and d64.has_masks and len(d64) == 5
    img128, mask128 = d128[2]
    img64, mask64 = d64[2]
    assert img64.shape == (3, 64, 64) and mask64.shape == (64, 64) and mask64.dtype == np.uint8
    ref_img, ref_mask = synthetic.downsample(img128[None], mask128[None], 2)
    np.testing.assert_array_equal(img64, ref_img[0])
    np.testing.assert_array_equal(mask64, ref_mask[0])
    train = ds.open_dataset('synthetic', 'train', 64, num_images=4)
    img, label = train[0]
    assert train.name == 'synthetic64' and not train.has_masks and label.shape == (0,)


def test_cache_is_written_once_and_reused(monkeypatch):
    first = ds.open_dataset('synthetic', 'train', 64, num_images=6, synthetic_seed=7)
    path = synthetic.cache_path(dnnlib.cache_dir(), 'train', 6, 7)
    assert os.path.isfile(path)
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith('.tmp-')]

    def fail(*args, **kwargs):
        raise AssertionError('regenerated although cached')

    monkeypatch.setattr(synthetic, 'generate', fail)
    second = ds.open_dataset('synthetic', 'train', 64, num_images=6, synthetic_seed=7)
    for i in range(6):
        np.testing.assert_array_equal(first[i][0], second[i][0])


def test_unsupported_resolution_is_a_user_error():
    with pytest.raises(dnnlib.UserError, match='dividing 128'):
        ds.open_dataset('synthetic', resolution=96, num_images=2)
