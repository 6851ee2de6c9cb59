"""Shared test set-up: GPU tests skip cleanly without CUDA; the repo root is importable."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    # The suite's tensors are small: on a 2-core CI machine extra intra-op threads only spin
    # against each other (several tests ran 5-10x slower with two threads than with one).
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if item.get_closest_marker('gpu') is not None:  # not `'gpu' in keywords`: a folder named gpu matches that
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never let a test read or write the user's real download/dataset cache."""
    monkeypatch.setenv('ILSGAN_CACHE', str(tmp_path_factory.getbasetemp() / 'ilsgan-cache'))
