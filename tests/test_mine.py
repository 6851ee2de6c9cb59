"""MINE (metrics/mine.py): the DV bound, the bias-corrected gradient, Gaussian closed forms, the layer CLI."""

import json
import math
import os

import numpy as np
import pytest
import torch

from metrics import mine




def correlated_gaussians(n: int, d: int, rho: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I_d), y = ρx + √(1−ρ²)ε: I(x; y) = −d/2 · log(1 − ρ²) nats."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, rho * x + math.sqrt(1 - rho ** 2) * torch.randn(n, d, generator=g)


def gaussian_mi(d: int, rho: float) -> float:
    return -0.5 * d * math.log(1 - rho ** 2)


def test_dv_bound_matches_hand_computed_value():
    t_joint = torch.tensor([1.0, 2.0, 3.0])
    t_marginal = torch.tensor([0.0, math.log(2.0), math.log(3.0), 1000.0])
    # mean(1,2,3) = 2; log mean exp = log((1 + 2 + 3 + e^1000)/4) = 1000 − log 4 (to double precision)
    expected = 2.0 - (1000.0 - math.log(4.0))
    assert mine.dv_bound(t_joint.double(), t_marginal.double()).item() == pytest.approx(expected, abs=1e-9)
    small = torch.tensor([0.0, math.log(2.0), math.log(3.0)], dtype=torch.float64)
    assert mine.dv_bound(t_joint.double(), small).item() == pytest.approx(2.0 - math.log(2.0), abs=1e-12)


def test_plain_gradient_is_the_dv_gradient_and_corrected_one_uses_the_moving_average():
    torch.manual_seed(0)
    t_joint = torch.randn(5, dtype=torch.float64, requires_grad=True)
    t_marginal = torch.randn(6, dtype=torch.float64, requires_grad=True)
    loss, log_ma = mine.corrected_loss(t_joint, t_marginal, None, ma_rate=0.0)
    assert log_ma is None
    assert loss.item() == pytest.approx(-mine.dv_bound(t_joint, t_marginal).item())
    grad_j, grad_m = torch.autograd.grad(loss, [t_joint, t_marginal])
    e = np.exp(t_marginal.detach().numpy())
    np.testing.assert_allclose(grad_j.numpy(), -np.full(5, 1 / 5))
    np.testing.assert_allclose(grad_m.numpy(), e / e.sum())              # softmax: the biased DV gradient

    # With a moving average ma the marginal gradient is e^T / (n · ma) (MINE §3.2).
    previous = math.log(0.7)
    rate = 0.25
    loss, log_ma = mine.corrected_loss(t_joint, t_marginal, torch.tensor(previous, dtype=torch.float64), rate)
    ma = (1 - rate) * 0.7 + rate * e.mean()
    assert log_ma.item() == pytest.approx(math.log(ma))
    grad_m, = torch.autograd.grad(loss, [t_marginal])
    np.testing.assert_allclose(grad_m.numpy(), e / (6 * ma), rtol=1e-10)


@pytest.mark.parametrize('d, steps, hidden, tolerance', [(2, 2000, 64, 0.15), (5, 3000, 128, 0.45)])
def test_mine_estimates_correlated_gaussian_mi(d, steps, hidden, tolerance):
    x, y = correlated_gaussians(4000, d, 0.8, seed=d)
    result = mine.mine_estimate(x, y, steps=steps, hidden=hidden, lr=1e-3, eval_every=100, eval_batch=1000,
                                num_final=5, device='cpu', progress=False)
    assert abs(result['final'] - gaussian_mi(d, 0.8)) < tolerance, (result['final'], gaussian_mi(d, 0.8))
    # As the original: after the first tick of 20 steps, every 100 after it, and at the end.
    assert [e['iteration'] for e in result['curve']] == list(range(20, steps, 100)) + [steps]
    assert result['final'] == pytest.approx(np.mean([e['MI'] for e in result['curve'][-5:]]))


def test_mine_estimates_zero_for_independent_variables_with_and_without_correction():
    x, _ = correlated_gaussians(4000, 2, 0.0, seed=10)
    y, _ = correlated_gaussians(4000, 2, 0.0, seed=11)
    for ma_rate in (0.0, 0.01):
        result = mine.mine_estimate(x, y, steps=1000, hidden=64, lr=1e-3, eval_every=100, eval_batch=1000,
                                    num_final=5, ma_rate=ma_rate, device='cpu', progress=False)
        assert abs(result['final']) < 0.05


def test_default_gradient_is_the_originals_plain_dv_gradient():
    from click.testing import CliRunner
    import eval_MI_MINE
    assert mine.MineConfig().ma_rate == 0.0
    dry = CliRunner().invoke(eval_MI_MINE.main, ['--path=x', '--dry-run'])
    assert dry.exit_code == 0 and json.loads(dry.output)['ma_rate'] == 0.0


@pytest.mark.parametrize('estimates, steps, converged, why', [
    ({'MI_1': 0.5, 'MI': 0.1}, 100_000, True, ''),
    ({'MI_1': 0.5, 'MI': 0.1}, 99_999, False, "99999 steps, fewer than the paper's 100000"),
    ({'MI_1': 0.5, 'MI': -3.5859}, 200_000, False, 'MI negative (a mutual information is never negative)'),
    ({'MI_1': -0.1, 'MI': -3.5859}, 600, False,
     "600 steps, fewer than the paper's 100000; MI_1, MI negative (a mutual information is never negative)"),
])
def test_estimates_from_few_steps_or_negative_are_not_converged(estimates, steps, converged, why):
    assert mine.convergence(estimates, steps) == {'converged': converged, 'why': why}


def test_mine_is_repeatable_for_a_seed():
    x, y = correlated_gaussians(500, 2, 0.8, seed=3)
    kwargs = dict(steps=60, hidden=16, eval_every=20, device='cpu', progress=False, seed=5)
    a, b = mine.mine_estimate(x, y, **kwargs), mine.mine_estimate(x, y, **kwargs)
    assert a['curve'] == b['curve']


def test_non_finite_batches_are_skipped_not_counted():
    x, y = correlated_gaussians(64, 2, 0.5, seed=4)
    x[0, 0] = float('nan')                         # every batch holding sample 0 has a NaN bound
    result = mine.mine_estimate(x, y, steps=30, hidden=8, batch=8, eval_every=10, device='cpu', progress=False)
    assert result['skipped'] > 0
    assert [e['iteration'] for e in result['curve']] == [10, 20, 30]
    with pytest.raises(Exception, match='non-finite'):
        mine.mine_estimate(x, y, steps=30, hidden=8, batch=64, max_skips=5, device='cpu', progress=False)


def write_layer_set(folder, n: int = 24, resolution: int = 64) -> dict:
    """A synthetic set as generate_segmentation_samples.py writes it (fg/, bg/, mask/ as RGB PNGs)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, (n, resolution, resolution, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (n, resolution, resolution, 3), dtype=np.uint8)
    mask = np.repeat(rng.integers(0, 256, (n, resolution, resolution, 1), dtype=np.uint8), 3, axis=3)
    for name, array in (('fg', fg), ('bg', bg), ('mask', mask), ('img', fg)):
        os.makedirs(folder / name, exist_ok=True)
        for i in range(n):
            Image.fromarray(array[i]).save(folder / name / f'{i + 1:06d}.png')
    return dict(fg=fg, bg=bg, mask=mask)


def test_layer_pairs_build_the_masked_regions_of_method_9(tmp_path):
    arrays = write_layer_set(tmp_path, n=4)
    layers = mine.load_layers(str(tmp_path), num_workers=0, progress=False)
    np.testing.assert_array_equal(layers['fg'].numpy(), arrays['fg'].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(layers['mask'].numpy(), arrays['mask'][..., 0])
    pairs, names = mine.layer_pairs(layers, 'separate')
    assert names == ['MI_1', 'MI_2']
    (x1, y1), (x2, y2) = pairs(torch.tensor([2]))
    f = arrays['fg'][2].transpose(2, 0, 1) / 127.5 - 1
    b = arrays['bg'][2].transpose(2, 0, 1) / 127.5 - 1
    m = arrays['mask'][2, :, :, 0][None] / 255
    for got, want in ((x1, m * f), (y1, m * b), (x2, (1 - m) * b), (y2, (1 - m) * f)):
        np.testing.assert_allclose(got.numpy()[0], want.reshape(-1), atol=1e-5)
    (x, y), = mine.layer_pairs(layers, 'single')[0](torch.tensor([1]))
    np.testing.assert_allclose(y.numpy()[0], (arrays['bg'][1].transpose(2, 0, 1) / 127.5 - 1).reshape(-1), atol=1e-6)


def test_cli_writes_results_curve_and_plot(tmp_path):
    from click.testing import CliRunner
    import eval_MI_MINE
    write_layer_set(tmp_path, n=16)
    result = CliRunner().invoke(eval_MI_MINE.main, [f'--path={tmp_path}', '--steps=6', '--hidden=8', '--batch=8',
                                                    '--eval-every=3', '--workers=0', '--quiet'])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / 'MI-estimation-MINE' / '00000'
    results = json.loads((run_dir / 'results.json').read_text())
    assert {'MI_1', 'MI_2', 'MI'} <= set(results)
    assert results['converged'] is False and results['why'].startswith("6 steps, fewer than the paper's 100000")
    assert "NOT CONVERGED: 6 steps, fewer than the paper's 100000" in result.output
    curves = json.loads((run_dir / 'curve.json').read_text())
    assert [e['iteration'] for e in curves['separate']] == [3, 6]
    assert results['MI'] == pytest.approx(np.mean([e['MI'] for e in curves['single']]))
    # The original's result files beside ours: the same numbers under its keys.
    assert json.loads((run_dir / 'separate' / 'MI_estimation_results.json').read_text()) == {
        'ave_MI_train1': results['MI_1'], 'ave_MI_train2': results['MI_2']}
    assert json.loads((run_dir / 'single' / 'MI_estimation_results.json').read_text()) == {'ave_MI_train': results['MI']}
    lines = (run_dir / 'metric-mine-separate.jsonl').read_text().splitlines()
    assert len(lines) == 2 and 'MI_2' in json.loads(lines[0])
    from PIL import Image
    assert Image.open(run_dir / 'curve.png').size == (640, 400)


def test_layers_with_different_file_names_are_a_user_error(tmp_path):
    import dnnlib
    write_layer_set(tmp_path, n=3, resolution=8)
    os.rename(tmp_path / 'bg' / '000003.png', tmp_path / 'bg' / '000004.png')
    with pytest.raises(dnnlib.UserError, match='000003.png|000004.png'):
        mine.load_layers(str(tmp_path), num_workers=0, progress=False)


def test_cli_names_a_missing_folder(tmp_path):
    from click.testing import CliRunner
    import eval_MI_MINE
    missing = tmp_path / 'nowhere'
    result = CliRunner().invoke(eval_MI_MINE.main, [f'--path={missing}', '--steps=1'])
    assert result.exit_code != 0
    assert str(missing) in result.output


def test_resolution_option_sets_the_size_the_critics_see(tmp_path, monkeypatch):
    """--resolution resizes the layers before flattening: 16 px layers at --resolution=8 give the
    critics 3·8·8 = 192 inputs per side (the default 64 would give 12 288)."""
    from click.testing import CliRunner
    import eval_MI_MINE
    write_layer_set(tmp_path, n=8, resolution=16)
    seen = []
    real_train = mine.train_critics

    def recording_train(pairs, num, dims, cfg, *args, **kwargs):
        seen.append(dims)
        return real_train(pairs, num, dims, cfg, *args, **kwargs)
    monkeypatch.setattr(mine, 'train_critics', recording_train)
    result = CliRunner().invoke(eval_MI_MINE.main, [f'--path={tmp_path}', '--steps=2', '--hidden=4', '--batch=4',
                                                    '--resolution=8', '--workers=0', '--quiet'])
    assert result.exit_code == 0, result.output
    assert seen == [[(192, 192), (192, 192)], [(192, 192)]]
    options = json.loads((tmp_path / 'MI-estimation-MINE' / '00000' / 'options.json').read_text())
    assert options['resolution'] == 8
