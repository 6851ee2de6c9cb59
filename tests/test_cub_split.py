"""The CUB split file is checked against ReDO's published one: a warning when it differs."""

import hashlib
import os

from tests._fixtures import build_cub
from training import drc
from training.dataset import open_dataset


def test_a_cub_split_that_is_not_redos_gives_one_warning_with_its_counts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(drc, '_checked_splits', set())
    build_cub(str(tmp_path))
    for split in ('train', 'test', 'train'):
        open_dataset('cub', split=split, resolution=32, data_root=str(tmp_path))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning: ')]
    assert len(lines) == 1, lines                     # once per file, not per split or call
    assert 'train_val_test_split.txt is not the train_val_test_split.txt that ReDO publishes' in lines[0]
    assert '3 train / 1 val / 2 test, expected 10000 / 788 / 1000' in lines[0]   # the fixture's ids


def test_the_published_split_gives_no_warning(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(drc, '_checked_splits', set())
    build_cub(str(tmp_path))
    with open(os.path.join(tmp_path, 'train_val_test_split.txt'), 'rb') as f:
        monkeypatch.setattr(drc, 'CUB_SPLIT_SHA256', hashlib.sha256(f.read()).hexdigest())
    open_dataset('cub', split='test', resolution=32, data_root=str(tmp_path))
    assert 'warning' not in capsys.readouterr().err
