"""experiments/heldout_scenes.py: two held-out scene sets, read back as DRC cars by training/dataset.py."""

import numpy as np
import pytest
from click.testing import CliRunner

from experiments import heldout_scenes as hs
from training import dataset as ds


@pytest.mark.parametrize('kind', hs.KINDS)
def test_tiny_set_is_read_back_as_cars(tmp_path, kind):
    result = CliRunner().invoke(hs.main, [f'--kind={kind}', f'--out={tmp_path}', '--train=4', '--test=3',
                                          '--resolution=32', '--seed=5'])
    assert result.exit_code == 0, result.output
    train = ds.open_dataset('car', 'train', 32, data_root=str(tmp_path))
    test = ds.open_dataset('car', 'test', 32, data_root=str(tmp_path))
    assert (len(train), len(test)) == (4, 3)
    np.testing.assert_array_equal(train[2][0], hs.sample(kind, 5, 'train', 2, 32)[0])
    image, mask = test[1]
    expected_image, expected_mask = hs.sample(kind, 5, 'test', 1, 32)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(mask, expected_mask)
    # Never overwritten: a second write to the same folder is one line, exit 2.
    again = CliRunner().invoke(hs.main, [f'--kind={kind}', f'--out={tmp_path}', '--train=1', '--test=1'])
    assert again.exit_code == 2 and 'already exists' in again.output


@pytest.mark.parametrize('kind', hs.KINDS)
def test_masks_are_small_off_centre_and_often_cut(kind):
    masks = hs.generate(kind, 'test', 40, seed=0, resolution=64)['mask']
    area = masks.mean(axis=(1, 2))
    assert area.min() >= hs.AREA_RANGE[0] and area.max() <= hs.AREA_RANGE[1]
    border = np.concatenate([masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1]], axis=1)
    assert 0.25 <= border.any(axis=1).mean() <= 0.9          # many objects cut by the border, not all
    rows, cols = np.mgrid[:64, :64]
    cy = (masks * rows).sum(axis=(1, 2)) / masks.sum(axis=(1, 2))
    cx = (masks * cols).sum(axis=(1, 2)) / masks.sum(axis=(1, 2))
    assert np.hypot(cx - 31.5, cy - 31.5).mean() > 0.3 * 32   # off-centre on average
    # No one place holds the object: the mean mask stays far from 1 everywhere.
    assert masks.mean(axis=0).max() < 0.6


def test_kinds_and_splits_are_different_streams():
    a, m_a = hs.sample('blocks', 0, 'train', 0, 32)
    b, m_b = hs.sample('blobs', 0, 'train', 0, 32)
    c, _ = hs.sample('blocks', 0, 'test', 0, 32)
    assert not np.array_equal(m_a, m_b) and not np.array_equal(a, c)
    np.testing.assert_array_equal(a, hs.sample('blocks', 0, 'train', 0, 32)[0])   # a pure function
