"""experiments/ablation_summary.py (the ILS ablation's JSON and table) and experiments/quality_summary.py's sizes,
on fake run folders."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import _fixtures as fx
from experiments import ablation_summary, quality_summary


def bench(module, *args):
    """Run a bench helper's click command in this process (a subprocess would import torch again)."""
    return CliRunner().invoke(module.main, [str(a) for a in args])


def fake_run(outdir, cfg, seed, iou, number=0, results=True, training_s=100.0, generator_layout=None, by_size=None,
             fixed=None, options=None):
    """OUTDIR/<cfg>-seed<seed>/NNNNN-synthetic-<cfg>-batch16/ as the training and the auto test leave it;
    ``fixed``: the fixed mask's IoU (None: a results.json written before the fixed mask)."""
    run = outdir / f'{cfg}-seed{seed}' / f'{number:05d}-synthetic-{cfg}-batch16'
    (run / 'auto_test').mkdir(parents=True)
    (run / 'training_options.json').write_text(json.dumps({'cfg': cfg, 'seed': seed, 'data': 'synthetic', **(options or {})}))
    (run / 'stats.jsonl').write_text(json.dumps({'Timing/total_sec': {'num': 1, 'mean': training_s / 2}}) + '\n'
                                     + json.dumps({'Timing/total_sec': {'num': 1, 'mean': training_s}}) + '\n')
    if results:
        layout = {'ratios': {'position': iou / 2, 'x': 0.1, 'y': 0.1, 'area': 0.3},
                  'generated': {'empty': 0.0, 'full': 0.0, 'grey': 0.25, 'mean_border': 0.125},
                  'data': {} if fixed is None else {'mean_border': 0.03}}
        fixed_keys = {} if fixed is None else {'fixed_mask_IoU': fixed, 'fixed_mask_DICE': fixed + 0.1,
                                               'fixed_mask_threshold': 0.45, 'IoU_gain': iou - fixed,
                                               'warnings': ['w'] * (iou < fixed + 0.05)}
        (run / 'auto_test' / 'results.json').write_text(json.dumps(
            {'kimg': 30, 'IoU': iou, 'DICE': iou + 0.1, 'MI_1': 0.5, 'MI_2': 0.25, 'MI': None, 'layout': layout,
             'layout_generator': generator_layout, 'IoU_by_size': by_size,
             'sizes': {'n': 2000}, 'total_time': 140.0, **fixed_keys}))
    return run


def test_summary_joins_runs_and_averages_over_seeds(tmp_path):
    ious = {'cpu': [0.70, 0.72, 0.60], 'cpu_noILS': [0.50, 0.65, 0.62]}
    for cfg, values in ious.items():
        for seed, iou in enumerate(values):
            # The by-size groups of older results are missing (None): their cells read '—'.
            by_size = [{'IoU': iou - 0.2, 'area_ratio': 1.5}, {'IoU': iou, 'area_ratio': 1.0}] if seed == 2 else None
            fake_run(tmp_path, cfg, seed, iou, by_size=by_size)
    fake_run(tmp_path, 'cpu', 0, 0.99, number=1, results=False)   # a newer, killed rerun of seed 0
    out = tmp_path / 'ablation.json'
    result = bench(ablation_summary, 'summary', str(tmp_path), f'--out={out}')
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    # The killed rerun is the newest run of its folder: listed as incomplete, its folder's older run unused.
    assert [(r['cfg'], r['seed']) for r in summary['runs']] == [('cpu', 1), ('cpu', 2)] + [('cpu_noILS', s) for s in range(3)]
    assert summary['incomplete'] == [str(tmp_path / 'cpu-seed0' / '00001-synthetic-cpu-batch16')]
    for cfg, values in ious.items():
        used = values[1:] if cfg == 'cpu' else values
        entry = summary['by_cfg'][cfg]
        assert entry['IoU']['mean'] == pytest.approx(np.mean(used)) and entry['IoU']['std'] == pytest.approx(np.std(used))
        assert entry['DICE']['mean'] == pytest.approx(np.mean(used) + 0.1)
        assert entry['position_spread']['mean'] == pytest.approx(np.mean(used) / 2)
        assert entry['MI'] is None                                   # None in every seed
        assert entry['IoU_small']['mean'] == pytest.approx(values[2] - 0.2)   # seed 2 only: the first group
        assert entry['area_ratio_small']['mean'] == 1.5
    row = summary['runs'][0]
    assert row['training_s'] == 100.0 and row['auto_test_s'] == 140.0 and row['grey'] == 0.25 and row['MI_1'] == 0.5 and row['border'] == 0.125
    # The markdown table: a header, a rule, one line per run, one per preset.
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith('| cfg | seed | IoU | fixed mask | gain | IoU small third | pred/true area small third '
                               '| DICE | MI_1 | MI_2 | MI | position spread | area spread')
    # Results written before the fixed mask and the size thirds: '—' in those cells.
    assert '| cpu | 1 | 0.720 | — | — | — | — | 0.820 | 0.50 | 0.25 | — | 0.36 | 0.30 | 0% | 0% | 25% | 0.12 | — |' in lines
    assert '| cpu | 2 | 0.600 | — | — | 0.400 | 1.50 | 0.700 |' in result.stdout
    assert f'| **cpu_noILS** | mean of 3 | {np.mean(ious["cpu_noILS"]):.3f} ± {np.std(ious["cpu_noILS"]):.3f} |' in result.stdout
    assert 'incomplete (no auto test result)' in result.stdout


def test_summary_carries_the_fixed_mask_and_the_gain(tmp_path):
    for seed, (iou, fixed) in enumerate([(0.80, 0.63), (0.60, 0.63)]):
        fake_run(tmp_path, 'cpu', seed, iou, fixed=fixed)
    out = tmp_path / 'ablation.json'
    result = bench(ablation_summary, 'summary', str(tmp_path), f'--out={out}')
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert [r['fixed_mask_IoU'] for r in summary['runs']] == [0.63, 0.63]
    assert [r['IoU_gain'] for r in summary['runs']] == pytest.approx([0.17, -0.03])
    assert summary['by_cfg']['cpu']['IoU_gain'] == pytest.approx({'mean': 0.07, 'std': 0.1})
    assert '| cpu | 0 | 0.800 | 0.630 | +0.170 |' in result.stdout and '| cpu | 1 | 0.600 | 0.630 | -0.030 |' in result.stdout
    assert '| **cpu** | mean of 2 | 0.700 ± 0.100 | 0.630 ± 0.000 | +0.070 ± 0.100 |' in result.stdout


def test_runs_table_gives_one_row_per_run_with_fixed_mask_gain_ceiling_and_layout(tmp_path):
    # Two ablation OUTDIRs on two datasets, and one run directory given on its own.
    own = {'ratios': {'position': 0.05, 'x': 0.04, 'y': 0.03, 'area': 0.2}, 'generated': {}, 'data': {}}
    fake_run(tmp_path / 'syn', 'cpu', 0, 0.80, fixed=0.63, generator_layout=own)
    fake_run(tmp_path / 'syn', 'cpu', 1, 0.82, fixed=0.63)
    fake_run(tmp_path / 'syn', 'cpu', 2, 0.5, results=False)
    cars = fake_run(tmp_path / 'cars', 'cpu', 0, 0.078, fixed=0.462, options={'data': 'car', 'data_root': '/d/heldout'})
    # The cars run has its own ceiling folder (experiments/quality.sh); the synthetic ones get --ceiling.
    seg_run = cars / 'ceiling' / '00000-real-car-color_aug-32'
    seg_run.mkdir(parents=True)
    (seg_run / 'results.json').write_text(json.dumps({'results': {'IoU': 0.934}}))
    (seg_run / 'options.json').write_text('{}')
    syn_ceiling = tmp_path / 'syn-ceiling.json'
    syn_ceiling.write_text(json.dumps({'results': {'IoU': 0.94}}))
    out = tmp_path / 'runs.json'
    result = bench(ablation_summary, 'runs', tmp_path / 'syn', cars, f'--ceiling=synthetic={syn_ceiling}', f'--out={out}')
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == ("| dataset | cfg | seed | IoU | fixed mask | gain | ceiling | border gen | border data "
                        "| G's position spread | G's area spread | warnings |")
    assert lines[2:5] == ['| car@heldout | cpu | 0 | 0.078 | 0.462 | -0.384 | 0.934 | 0.12 | 0.03 | 0.04 | 0.30 | 1 |',
                          '| synthetic | cpu | 0 | 0.800 | 0.630 | +0.170 | 0.940 | 0.12 | 0.03 | 0.05 | 0.20 | 0 |',
                          '| synthetic | cpu | 1 | 0.820 | 0.630 | +0.190 | 0.940 | 0.12 | 0.03 | 0.41 | 0.30 | 0 |']
    assert lines[5].startswith('incomplete (no auto test result): ') and 'cpu-seed2' in lines[5]
    rows = json.loads(out.read_text())['runs']
    assert [r['ceiling_IoU'] for r in rows] == [0.934, 0.94, 0.94] and rows[0]['warnings'] == ['w']
    # Without a ceiling the cell reads '—'; a path that is not there, or a bad --ceiling, is one line.
    assert '| synthetic | cpu | 1 | 0.820 | 0.630 | +0.190 | — |' in bench(ablation_summary, 'runs', tmp_path / 'syn').stdout
    for args in ([tmp_path / 'nothing'], [cars, '--ceiling=synthetic']):
        result = bench(ablation_summary, 'runs', *args)
        assert result.exit_code == 2 and result.output.startswith('error: ') and result.output.count('\n') == 1


def test_fixed_mask_command_scores_a_datasets_test_split(tmp_path):
    from metrics.segmentation import fixed_mask_score, load_pairs
    from training.dataset import open_dataset
    fx.build_cub(str(tmp_path / 'birds'))
    result = bench(ablation_summary, 'fixed-mask', '--data=cub', f'--data-root={tmp_path / "birds"}', '--resolution=16')
    assert result.exit_code == 0, result.output
    masks = load_pairs(open_dataset('cub', 'test', 16, str(tmp_path / 'birds')), 0, '', False)[1]
    fixed = fixed_mask_score(masks)
    assert result.stdout == (f'cub test split ({len(masks)} masks at 16 px): fixed mask IoU {fixed["IoU"]:.4f}, '
                             f'DICE {fixed["DICE"]:.4f}, threshold {fixed["threshold"]:.2f}, area {fixed["area"]:.3f}\n')
    result = bench(ablation_summary, 'fixed-mask', f'--data={tmp_path / "none"}')
    assert result.exit_code == 2 and result.output.startswith('error: ')


def test_summary_without_finished_runs_is_a_one_line_error(tmp_path):
    fake_run(tmp_path, 'cpu', 0, 0.7, results=False)
    result = bench(ablation_summary, 'summary', str(tmp_path), f'--out={tmp_path / "a.json"}')
    assert result.exit_code == 2 and result.output.startswith('error: no run with auto_test/results.json')
    assert result.output.count('\n') == 1 and not (tmp_path / 'a.json').exists()


def test_quality_sizes_accept_cub_train_masks_and_refuse_maskless_cars(tmp_path):
    fx.build_cub(str(tmp_path / 'birds'))
    fx.add_train_masks(str(tmp_path / 'birds'), 'birds')
    fx.build_mrcnn(str(tmp_path / 'cars'), 'cars')
    for name, data in (('cub', 'birds'), ('car', 'cars')):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'training_options.json').write_text(json.dumps(
            {'data': name, 'data_root': str(tmp_path / data), 'resolution': 32, 'auto_test_sizes': {'n': 5}}))
    result = bench(quality_summary, 'sizes', str(tmp_path / 'cub'))
    # N is capped by the 3 train images; the UNet sizes are the original's (the preset gave none).
    assert result.exit_code == 0 and result.stdout.split() == ['3', '32', '6000', '64', '64', '1000'], result.output
    assert bench(quality_summary, 'option', str(tmp_path / 'cub'), 'data').stdout == 'cub\n'
    result = bench(quality_summary, 'sizes', str(tmp_path / 'car'))
    assert result.exit_code == 2 and 'cars train split has no masks' in result.output


def test_quality_summary_carries_the_fixed_mask_the_gain_and_the_warnings(tmp_path):
    run = fake_run(tmp_path, 'cpu', 0, 0.60, fixed=0.63)
    (run / 'auto_test' / 'results.json').write_text(json.dumps(
        dict(json.loads((run / 'auto_test' / 'results.json').read_text()), snapshot='s.pt')))
    seg_run = run / 'ceiling' / '00000-real-synthetic-color_aug-32'
    seg_run.mkdir(parents=True)
    (seg_run / 'results.json').write_text(json.dumps({'results': {'IoU': 0.94, 'DICE': 0.97}, 'run_dir': str(seg_run)}))
    (seg_run / 'options.json').write_text(json.dumps({'syn_data': 'pairs'}))
    out = tmp_path / 'quality.json'
    result = bench(quality_summary, 'summary', run, run / 'ceiling', f'--out={out}')
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert (summary['fixed_mask_IoU'], summary['fixed_mask_threshold'], summary['warnings']) == (0.63, 0.45, ['w'])
    assert summary['IoU_gain'] == pytest.approx(-0.03)
    assert 'fixed mask IoU / DICE    | 0.6300 / 0.7300' in result.stdout
    assert 'IoU gain over fixed mask | -0.0300' in result.stdout and 'WARNING: w' in result.stdout


def test_a_perturbed_sets_row_gives_the_spreads_of_gs_own_masks(tmp_path):
    # The auto test shifted the set (cpu presets): the spreads of the row are G's own, the border the set's.
    own = {'ratios': {'position': 0.05, 'x': 0.04, 'y': 0.03, 'area': 0.2}, 'generated': {}, 'data': {}}
    run = fake_run(tmp_path, 'cpu', 0, 0.8, generator_layout=own)
    row = ablation_summary.run_row(str(run))
    assert (row['position_spread'], row['area_spread'], row['border']) == (0.05, 0.2, 0.125)
    assert ablation_summary.run_row(str(fake_run(tmp_path, 'cpu', 1, 0.8)))['position_spread'] == 0.4
