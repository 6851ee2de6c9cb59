"""experiments/train_lever.py and auto_test_variant.py: the fields they change, and what they refuse."""

import pytest

import dnnlib
from experiments import auto_test_variant, train_lever
from training import presets


def test_lever_preset_changes_only_the_named_fields():
    lever = train_lever.lever_preset(['xint_max=0.25', 'min_msize=0.1'])
    assert lever['xint_max'] == 0.25 and lever['min_msize'] == 0.1
    assert {k: v for k, v in lever.items() if k not in ('xint_max', 'min_msize')} == \
        {k: v for k, v in presets.PRESETS_64['cpu'].items() if k not in ('xint_max', 'min_msize')}
    assert 'xint_max' not in presets.PRESETS_64['cpu']          # the cpu preset itself is untouched
    with pytest.raises(dnnlib.UserError, match='a preset field'):
        train_lever.lever_preset(['binweight=10'])
    with pytest.raises(dnnlib.UserError, match='not JSON'):
        train_lever.lever_preset(['bin_weight=ten'])


def test_variant_fields():
    assert auto_test_variant.parse_sets(('auto_test_roles=border', 'auto_test_perturb={"xint_max": 0.25}')) == \
        {'auto_test_roles': 'border', 'auto_test_perturb': {'xint_max': 0.25}}
    with pytest.raises(dnnlib.UserError, match='FIELD one of'):
        auto_test_variant.parse_sets(('kimg=60',))
