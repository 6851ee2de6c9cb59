"""metrics.roles: the border rule for the layers' roles, on hand-made masks; the auto test's fields."""

import json

import numpy as np
import pytest
import torch

import dnnlib
from metrics import auto_test, generate, roles
from tests.test_auto_test import TINY_SIZES, run_dir  # noqa: F401  (a fixture: a run with a tiny snapshot)
from torch_utils import checkpoint


def masks_8x8() -> np.ndarray:
    """Three 8×8 masks: a centred object (border 0), a hole in a full mask (border 1), and an object
    cut by the left edge covering 6 of the 28 ring pixels."""
    centred = np.zeros((8, 8), np.float32)
    centred[2:6, 2:6] = 1
    hole = 1 - centred
    cut = np.zeros((8, 8), np.float32)
    cut[1:7, 0:3] = 0.9                     # the ring: 6 pixels of column 0, and rows 0/7 untouched
    return np.stack([centred, hole, cut])


def test_border_coverage_by_hand():
    np.testing.assert_allclose(roles.border_coverage(masks_8x8()), [0.0, 1.0, 6 / 28])
    np.testing.assert_allclose(roles.border_coverage(torch.from_numpy(masks_8x8())[:, None]), [0.0, 1.0, 6 / 28])


def test_border_rule_swaps_only_the_hole():
    np.testing.assert_array_equal(roles.swapped('border', masks_8x8()), [False, True, False])
    np.testing.assert_array_equal(roles.swapped('as_drawn', masks_8x8()), [False, False, False])
    with pytest.raises(ValueError, match='unknown role rule'):
        roles.swapped('largest', masks_8x8())


def test_apply_roles_exchanges_layers_and_keeps_the_composite():
    torch.manual_seed(0)
    mask = torch.from_numpy(masks_8x8())[:, None]
    fg, bg = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    img = mask * fg + (1 - mask) * bg
    out, swap = roles.apply_roles('border', dict(fg=fg, bg=bg, mask=mask, img=img))
    np.testing.assert_array_equal(swap, [False, True, False])
    assert torch.equal(out['mask'][1], 1 - mask[1]) and torch.equal(out['mask'][0], mask[0])
    assert torch.equal(out['fg'][1], bg[1]) and torch.equal(out['bg'][1], fg[1])
    assert torch.equal(out['fg'][2], fg[2]) and torch.equal(out['bg'][2], bg[2])
    recomposed = out['mask'] * out['fg'] + (1 - out['mask']) * out['bg']
    torch.testing.assert_close(recomposed, img)
    assert out['img'] is img
    same, none = roles.apply_roles('as_drawn', dict(fg=fg, bg=bg, mask=mask, img=img))
    assert same['mask'] is mask and not none.any()


def test_widened_perturbation():
    trained = dict(xint_max=0.125, bg_contrast=0.0, xfrac_max=0.0, rotate_max=0.0, scale_max=0.0)
    assert generate.widened_perturbation(trained, {'xint_max': 0.25})['xint_max'] == 0.25
    assert trained['xint_max'] == 0.125                  # the training's own dict is not changed
    with pytest.raises(dnnlib.UserError, match='not one of'):
        generate.widened_perturbation(trained, {'shift': 0.25})
    with pytest.raises(dnnlib.UserError, match='not one of'):
        generate.widened_perturbation(trained, {'xint_max': -1})
    with pytest.raises(dnnlib.UserError, match='mutually exclusive'):
        generate.widened_perturbation(trained, {'scale_max': 0.5})


def test_auto_test_reports_the_role_rule_and_a_widened_shift(run_dir, capsys):
    """The cpu preset's sample-time fields go through the auto test: the set's folder names them,
    results.json records the rule and the share of samples it swapped; a bad rule is refused first."""
    snapshot = run_dir / 'network-snapshot-000004.pt'
    G = checkpoint.load_snapshot(str(snapshot))['G_ema']
    options = {'data': 'synthetic', 'resolution': 64, 'auto_test_sizes': TINY_SIZES,
               'composition_kwargs': {'class_name': 'training.networks.PerturbedComposition', 'xint_max': 0.125}}
    snapshot.unlink()
    checkpoint.save_snapshot(str(snapshot), {'G_ema': G}, data={'kimg': 4.0, 'sigma': 0.2, 'training_options': options})
    (run_dir / 'training_options.json').write_text(json.dumps(dict(options, auto_test_roles='largest')))
    with pytest.raises(dnnlib.UserError, match="auto_test_roles='largest'"):
        auto_test.run_auto_test(str(run_dir), progress=False)
    assert not (run_dir / 'auto_test').exists()
    options.update(auto_test_roles='border', auto_test_perturb={'xint_max': 0.25})
    (run_dir / 'training_options.json').write_text(json.dumps(options))
    results = auto_test.run_auto_test(str(run_dir), progress=False)
    assert results['synthetic_data'].endswith('synthetic_data-000004-perturbed-xint_max0.25-roles_border')
    assert results['perturb'] == {'xint_max': 0.25} and results['roles'] == 'border'
    own = generate.generator_masks(str(snapshot), TINY_SIZES['n'])
    assert results['roles_swapped'] == pytest.approx(roles.swapped('border', own).mean())
    assert 'of the samples swapped' in capsys.readouterr().out


def test_cpu_presets_choose_roles_by_the_border_and_paper_presets_keep_them():
    from training import presets
    assert presets.resolve_preset('cpu').auto_test_roles == 'border'
    assert presets.resolve_preset('ILS_predL').auto_test_roles == 'as_drawn'     # the original's samples
    assert presets.resolve_preset('ILS', 128).auto_test_roles == 'as_drawn'
