"""Segmentation evaluation (metrics/segmentation.py): scores, eval128 scoring, the UNet, the protocol, the CLIs."""

import json
import os

import numpy as np
import pytest
import torch

from metrics import segmentation as seg


def masks_from_cells(size: int, cells) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.int64)
    for r, c in cells:
        mask[r, c] = 1
    return mask


# ----------------------------------------------------------------------------------------------
# Scores.

def crafted_pair():
    """Two 4×4 images. A: GT 4 px, prediction 3 px of which 2 hit. B: one pixel, exact."""
    gt = torch.stack([masks_from_cells(4, [(0, 0), (0, 1), (1, 0), (1, 1)]), masks_from_cells(4, [(3, 3)])])
    pred = torch.stack([masks_from_cells(4, [(0, 0), (0, 1), (2, 2)]), masks_from_cells(4, [(3, 3)])])
    return pred, gt


def test_per_image_scores_match_hand_computed_values():
    pred, gt = crafted_pair()
    np.testing.assert_allclose(seg.per_image_iou(pred, gt).numpy(), [2 / 5, 1.0])
    np.testing.assert_allclose(seg.per_image_dice(pred, gt).numpy(), [2 * 2 / (3 + 4), 1.0])


def test_paper_average_and_dataset_level_scores_differ_as_computed_by_hand():
    pred, gt = crafted_pair()
    scores = seg.SegmentationScores()
    scores.update(pred[:1], gt[:1])                      # two updates = one batch of two
    scores.update(pred[1:], gt[1:])
    result = scores.result()
    assert result['IoU'] == pytest.approx((2 / 5 + 1) / 2)         # per-image mean: 0.7
    assert result['DICE'] == pytest.approx((4 / 7 + 1) / 2)
    # Pooled: intersection 3, |P| = 4, |G| = 5 → union 6.
    assert result['IoU_dataset'] == pytest.approx(3 / 6)
    # Background: both-background pixels 11 + 15 = 26; union = 32 − 3 = 29.
    assert result['mIoU'] == pytest.approx((26 / 29 + 0.5) / 2)
    assert result['pACC'] == pytest.approx((26 + 3) / 32)
    assert seg.confusion_matrix(pred, gt).tolist() == [[26, 2], [1, 3]]   # C[pred, gt]


def test_scores_by_object_size_group_images_by_true_area_as_computed_by_hand():
    # Four 4x4 images, listed out of size order. True areas 2, 8, 1, 4 px; predictions:
    # image 0 (2 px): 4 px covering it (IoU 2/4); image 1 (8 px): exact; image 2 (1 px): 3 px over
    # it (IoU 1/3); image 3 (4 px): 2 of its pixels (IoU 2/4).
    gt = torch.stack([masks_from_cells(4, [(0, 0), (0, 1)]), masks_from_cells(4, [(r, c) for r in (0, 1) for c in range(4)]),
                      masks_from_cells(4, [(3, 3)]), masks_from_cells(4, [(2, 0), (2, 1), (3, 0), (3, 1)])])
    pred = torch.stack([masks_from_cells(4, [(0, 0), (0, 1), (1, 0), (1, 1)]), gt[1],
                        masks_from_cells(4, [(3, 3), (3, 2), (2, 3)]), masks_from_cells(4, [(2, 0), (2, 1)])])
    small, large = seg.scores_by_object_size(pred, gt, groups=2)
    # Small: images 2 and 0 (1 and 2 px); large: images 3 and 1 (4 and 8 px).
    assert small == pytest.approx({'n': 2, 'area_min': 1 / 16, 'area_max': 2 / 16, 'IoU': (1 / 3 + 2 / 4) / 2,
                                   'area_ratio': (3 + 4) / (1 + 2)})
    assert large == pytest.approx({'n': 2, 'area_min': 4 / 16, 'area_max': 8 / 16, 'IoU': (2 / 4 + 1) / 2,
                                   'area_ratio': (2 + 8) / (4 + 8)})
    # Three groups of four images: 2 + 1 + 1, smallest first; the line a person reads.
    thirds = seg.scores_by_object_size(pred, gt)
    assert [g['n'] for g in thirds] == [2, 1, 1] and thirds[2]['area_max'] == 0.5
    assert seg.format_by_size([small, large]) == ('0.417 / 0.750 (true areas 0.06-0.12 / 0.25-0.50; '
                                                  'predicted/true 2.33 / 0.83)')
    with pytest.raises(ValueError, match='differ in shape'):
        seg.scores_by_object_size(pred, gt[:, :2])
    # A group whose true masks are all empty has no ratio (None, valid JSON), shown as a dash.
    empty = seg.scores_by_object_size(pred[:2], torch.zeros_like(gt[:2]), groups=1)
    assert empty[0]['area_ratio'] is None and empty[0]['IoU'] == 0.0
    assert seg.format_by_size(empty).endswith('predicted/true —)')


def test_fixed_mask_score_matches_a_hand_computation():
    # Four 2x2 masks over pixels a b / c d: {a, b}, {a, b, c}, {a}, {a, c, d}. Pixel means a 1,
    # b 0.5, c 0.5, d 0.25, so levels 0.05-0.25 give {a, b, c, d}, 0.30-0.50 {a, b, c}, 0.55-0.95 {a}.
    a, b, c, d = (0, 0), (0, 1), (1, 0), (1, 1)
    gt = torch.stack([masks_from_cells(2, cells) for cells in ([a, b], [a, b, c], [a], [a, c, d])]).to(torch.uint8)
    iou_abcd = (2 / 4 + 3 / 4 + 1 / 4 + 3 / 4) / 4                  # 9/16
    iou_abc = (2 / 3 + 1 + 1 / 3 + 2 / 4) / 4                       # 5/8, the best
    iou_a = (1 / 2 + 1 / 3 + 1 + 1 / 3) / 4                         # 13/24
    fixed = seg.fixed_mask_score(gt)
    assert fixed['threshold'] == 0.3                                # the lowest level of the best three
    assert fixed['IoU'] == pytest.approx(iou_abc)
    assert fixed['DICE'] == pytest.approx((2 * 2 / 5 + 1 + 2 * 1 / 4 + 2 * 2 / 6) / 4)
    assert fixed['area'] == 0.75 and fixed['mask'].tolist() == [[True, True], [True, False]]
    np.testing.assert_allclose(fixed['IoU_by_level'], [iou_abcd] * 5 + [iou_abc] * 5 + [iou_a] * 9)
    assert set(seg.SCORE_NAMES) <= set(fixed)                       # scored like the UNet, every score
    # The masks as layout.load_data_masks holds them (float numpy) give the same answer; batches too.
    again = seg.fixed_mask_score(gt.numpy().astype(np.float32), batch=3)
    assert (again['IoU'], again['DICE'], again['threshold']) == (fixed['IoU'], fixed['DICE'], fixed['threshold'])
    with pytest.raises(ValueError, match='non-empty'):
        seg.fixed_mask_score(gt[:0])


def test_fixed_mask_score_follows_the_empty_mask_rule():
    # All true masks empty: every level's mask is empty, each image scores 1 (both empty).
    empty = torch.zeros(3, 4, 4, dtype=torch.uint8)
    fixed = seg.fixed_mask_score(empty)
    assert (fixed['IoU'], fixed['DICE'], fixed['threshold'], fixed['area']) == (1.0, 1.0, 0.05, 0.0)
    # One empty and one one-pixel mask: levels <= 0.5 give the pixel (IoU 0 and 1), the others an
    # empty mask (1 and 0): 0.5 at every level, the tie goes to the lowest.
    half = torch.stack([masks_from_cells(4, []), masks_from_cells(4, [(1, 2)])])
    fixed = seg.fixed_mask_score(half)
    assert (fixed['IoU'], fixed['threshold']) == (0.5, 0.05) and fixed['IoU_by_level'] == [0.5] * 19


@pytest.mark.parametrize('iou, fixed, fires', [(0.70, 0.629, False), (0.67, 0.629, True), (0.078, 0.462, True)])
def test_fixed_mask_warning_fires_under_the_margin(iou, fixed, fires):
    warning = seg.fixed_mask_warning(iou, fixed)
    assert (warning is not None) == fires
    if fires:
        assert warning.startswith('the masks do no better than one fixed mask') and f'{iou - fixed:+.3f}' in warning


def test_results_carry_the_fixed_mask_the_gain_and_the_warning(capsys):
    # The four masks of the hand computation above: fixed mask {a, b, c}, IoU 5/8.
    a, b, c, d = (0, 0), (0, 1), (1, 0), (1, 1)
    gt = torch.stack([masks_from_cells(2, cells) for cells in ([a, b], [a, b, c], [a], [a, c, d])]).to(torch.uint8)
    exact = seg.SegmentationScores()
    exact.update(gt, gt)
    fixed, by_size = seg.fixed_mask_comparison(exact.result(), gt, gt)     # a perfect prediction: gain 3/8
    assert fixed['IoU_gain'] == pytest.approx(1 - 5 / 8) and fixed['warnings'] == []
    assert fixed['fixed_mask']['threshold'] == 0.3 and 'mask' not in fixed['fixed_mask']
    json.dumps(fixed)                                                      # goes into results.json as it is
    # By size, smallest true area first, groups of 2, 1, 1 images: {a} 1/3 and {a, b} 2/3, {a, b, c} 1, {a, c, d} 2/4.
    assert [g['fixed_mask_IoU'] for g in by_size] == pytest.approx([(1 / 3 + 2 / 3) / 2, 1, 2 / 4])
    # A prediction that is the fixed mask itself: gain 0, the warning fires.
    same = seg.SegmentationScores()
    pred = torch.tensor([[1, 1], [1, 0]], dtype=torch.uint8).expand_as(gt)
    same.update(pred, gt)
    fixed, _ = seg.fixed_mask_comparison(same.result(), pred, gt)
    assert fixed['IoU_gain'] == pytest.approx(0) and fixed['warnings'] == [seg.fixed_mask_warning(5 / 8, 5 / 8)]
    # The printed table: a 'fixed' row, the gain line, the warning.
    results = {'protocol': {'name': 'scale', 'input_resolution': 2, 'mask_resolution': 2}, 'real_data': 'x',
               'num_test_images': 4, 'best_iteration': 1, 'val': same.result(), 'results': same.result(),
               'by_size': None, 'run_dir': 'RUN', **fixed}
    seg.print_results(results)
    out = capsys.readouterr().out
    assert any(line.startswith('fixed ') and f'{5 / 8:13.4f}' in line for line in out.splitlines())
    assert 'test IoU gain over the fixed mask: +0.0000 (fixed mask: IoU 0.6250, DICE 0.7417; the mean of the ' \
           'test masks >= 0.30, covering 0.75 of the image)' in out
    assert f'WARNING: {fixed["warnings"][0]}' in out
    seg.print_results(results, warnings=False)
    assert 'WARNING' not in capsys.readouterr().out


def test_empty_masks_follow_the_documented_rule():
    empty, full = torch.zeros(1, 3, 3, dtype=torch.int64), torch.ones(1, 3, 3, dtype=torch.int64)
    assert seg.per_image_iou(empty, empty).item() == 1.0            # both empty → 1
    assert seg.per_image_dice(empty, empty).item() == 1.0
    assert seg.per_image_iou(empty, full).item() == 0.0             # missed object → 0
    assert seg.per_image_dice(empty, full).item() == 0.0
    assert seg.per_image_iou(full, empty).item() == 0.0             # hallucinated object → 0
    assert seg.scores_from_confusion(seg.confusion_matrix(empty, empty)) == {'IoU_dataset': 1.0, 'mIoU': 1.0,
                                                                              'pACC': 1.0}


def test_per_image_scores_agree_with_numpy_sets_on_random_masks():
    rng = np.random.default_rng(0)
    pred, gt = rng.random((20, 8, 8)) < 0.4, rng.random((20, 8, 8)) < 0.3
    iou = [np.logical_and(p, g).sum() / np.logical_or(p, g).sum() for p, g in zip(pred, gt)]
    dice = [2 * np.logical_and(p, g).sum() / (p.sum() + g.sum()) for p, g in zip(pred, gt)]
    np.testing.assert_allclose(seg.per_image_iou(torch.from_numpy(pred), torch.from_numpy(gt)).numpy(), iou)
    np.testing.assert_allclose(seg.per_image_dice(torch.from_numpy(pred), torch.from_numpy(gt)).numpy(), dice)


# ----------------------------------------------------------------------------------------------
# eval128 scoring: logits upsampled ×2 (bilinear, align_corners False), then arg-max.

# Foreground-minus-background logit on a 2×2 grid; the bilinear ×2 upsampling (align_corners False:
# output x → source x/2 − 1/4, clamped) gives, per row, [a, ¾a + ¼b, ¼a + ¾b, b]. Rows 0/1 of the
# 2×2 grid are [1, 1] → [1, 1, 1, 1] and [1, −5] → [1, −0.5, −3.5, −5]; mixing rows the same way:
#   row 0:  1      1       1       1
#   row 1:  1      0.625  −0.125  −0.5
#   row 2:  1     −0.125  −2.375  −3.5
#   row 3:  1     −0.5    −3.5    −5
EVAL128_DIFF = torch.tensor([[1.0, 1.0], [1.0, -5.0]])
EVAL128_FG = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (2, 0), (3, 0)]


def test_predict_labels_upsamples_logits_before_the_argmax():
    logits = torch.stack([torch.zeros(2, 2), EVAL128_DIFF])[None]
    labels = seg.predict_labels(logits, 4)
    assert labels.shape == (1, 4, 4)
    assert labels[0].tolist() == masks_from_cells(4, EVAL128_FG).tolist()
    assert seg.predict_labels(logits, 2)[0].tolist() == [[1, 1], [1, 0]]   # same size: plain arg-max


class FixedLogits(torch.nn.Module):
    """A stand-in segmenter: the EVAL128_DIFF logits for every input image."""

    def forward(self, x):
        assert x.shape[-1] == 2 and x.min() >= -1 and x.max() <= 1
        return torch.stack([torch.zeros(2, 2), EVAL128_DIFF])[None].expand(len(x), -1, -1, -1)


def test_evaluate_scores_low_resolution_predictions_against_high_resolution_masks():
    images = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    gt = masks_from_cells(4, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)])[None].to(torch.uint8)
    scores, preds = seg.evaluate(FixedLogits(), images, gt, batch=4, device=torch.device('cpu'))
    # Prediction 8 px, GT 5 px, all 5 inside the prediction: IoU 5/8, DICE 10/13. (Upsampling the
    # 2×2 *labels* instead would predict 12 px and give 5/12.)
    assert scores['IoU'] == pytest.approx(5 / 8)
    assert scores['DICE'] == pytest.approx(10 / 13)
    assert preds.shape == (1, 4, 4)


# ----------------------------------------------------------------------------------------------
# The UNet.

def double_conv_params(c_in: int, c_out: int) -> int:
    return (9 * c_in + 1) * c_out + (9 * c_out + 1) * c_out + 4 * c_out  # two convs with bias + two BN (γ, β)


def test_unet_has_the_widths_of_method_8():
    expected = (double_conv_params(3, 64) + double_conv_params(64, 128) + double_conv_params(128, 256)
                + double_conv_params(256, 512) + double_conv_params(512, 512)
                + double_conv_params(1024, 256) + double_conv_params(512, 128) + double_conv_params(256, 64)
                + double_conv_params(128, 64) + 64 * 2 + 2)
    assert sum(p.numel() for p in seg.UNet().parameters()) == expected


@pytest.mark.parametrize('size', [32, 36])
def test_unet_maps_images_to_two_logits_per_pixel(size):
    torch.manual_seed(0)
    net = seg.UNet(base_width=4).eval()
    x = torch.rand(2, 3, size, size) * 2 - 1
    assert net(x).shape == (2, 2, size, size)
    torch.testing.assert_close(net(x)[1:], net(x[1:]))  # eval mode: images are independent


def test_unet_snapshot_round_trip(tmp_path):
    from torch_utils import checkpoint
    torch.manual_seed(0)
    net = seg.UNet(base_width=4)
    net(torch.randn(4, 3, 16, 16))                       # move the BatchNorm running statistics
    net.eval()
    checkpoint.save_snapshot(str(tmp_path / 'u.pt'), {'unet': net}, data={'iteration': 3})
    torch.load(tmp_path / 'u.pt', weights_only=True)
    loaded = checkpoint.load_snapshot(str(tmp_path / 'u.pt'))['unet']
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x), net(x))


def test_batch_indices_cover_every_sample_once_per_epoch_and_repeat_for_a_seed():
    stream = seg.batch_indices(10, 4, torch.Generator().manual_seed(1))
    first = torch.cat([next(stream) for _ in range(5)])             # 20 indices = 2 epochs
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:].tolist()) == list(range(10))
    again = seg.batch_indices(10, 4, torch.Generator().manual_seed(1))
    assert torch.equal(torch.cat([next(again) for _ in range(5)]), first)


def test_augment_pairs_moves_masks_with_the_images():
    pytest.importorskip('training.augment')
    from training.augment import segmentation_augment_pipe
    torch.manual_seed(0)
    labels = (torch.rand(8, 16, 16) < 0.5).long()
    images = labels[:, None].float().expand(-1, 3, -1, -1) * 2 - 1    # the image *is* its mask
    gen = torch.Generator().manual_seed(0)
    aug_images, aug_labels = seg.augment_pairs(segmentation_augment_pipe('geom'), images, labels, gen)
    assert aug_labels.dtype == torch.int64 and aug_labels.shape == labels.shape
    assert not torch.equal(aug_labels, labels)                      # something moved ...
    moved = (aug_images[:, 0] > 0).long()
    assert (moved == aug_labels).float().mean() > 0.95               # ... and the masks moved with it
    assert seg.augment_pairs(None, images, labels) == (images, labels)


# ----------------------------------------------------------------------------------------------
# The protocol (needs training/dataset.py).

def write_pair_set(folder, n: int, resolution: int, split: str = 'train', seed: int = 0) -> None:
    """Ground-truth pairs of the built-in synthetic data in the synthetic-sample layout (img/, mask/)."""
    from PIL import Image
    from training import synthetic
    data = synthetic.generate(split, n, seed=seed, resolution=resolution)
    os.makedirs(folder / 'img')
    os.makedirs(folder / 'mask')
    for i in range(n):
        Image.fromarray(data['img'][i].transpose(1, 2, 0)).save(folder / 'img' / f'{i + 1:06d}.png')
        Image.fromarray(np.repeat(data['mask'][i][..., None] * 255, 3, axis=2)).save(folder / 'mask' / f'{i + 1:06d}.png')


@pytest.fixture
def dataset_module():
    return pytest.importorskip('training.dataset')




def test_unet_trained_on_true_pairs_reaches_a_high_iou_on_the_synthetic_test_split(tmp_path, dataset_module, capsys):
    """The ceiling the GAN's masks are measured against: true synthetic pairs, tested on the test split."""
    write_pair_set(tmp_path / 'syn', n=400, resolution=32)
    cfg = seg.SegmentationConfig(syn_data=str(tmp_path / 'syn'), real_data='synthetic', aug='none', scale=32,
                                 iters=300, batch=16, val_interval=100, base_width=8, num_workers=0,
                                 progress=False, device='cpu')
    results = seg.run_segmentation_eval(cfg, run_dir=str(tmp_path / 'run'))
    # Measured 0.83-0.84 over seeds 0-2; predicting all foreground scores about the object area (~0.35).
    assert results['results']['IoU'] >= 0.7
    assert results['results']['IoU_dataset'] >= 0.7
    assert results['num_train_pairs'] == 360 and results['num_val_pairs'] == 40
    lines = [json.loads(l) for l in (tmp_path / 'run' / 'metric-val.jsonl').read_text().splitlines()]
    assert [l['iteration'] for l in lines] == [20, 120, 220, 300]
    best = max(lines, key=lambda l: l['results']['IoU_dataset'])
    assert results['best_iteration'] == best['iteration'] and results['val'] == best['results']
    # Without a bar (a redirected log) the run says where it writes at once, then one line per validation.
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f'UNet run folder: {tmp_path / "run"}'
    assert [l.split(':')[0] for l in out[1:5]] == [f'UNet iteration {i}/300' for i in (20, 120, 220, 300)]


def test_eval128_protocol_scores_against_128_masks_and_writes_the_run(tmp_path, dataset_module):
    from click.testing import CliRunner
    import eval_segmentation_eval128
    write_pair_set(tmp_path / 'syn', n=10, resolution=128)
    write_pair_set(tmp_path / 'real', n=5, resolution=128, split='test')
    result = CliRunner().invoke(eval_segmentation_eval128.main, [
        f'--syn-data={tmp_path / "syn"}', f'--real-data={tmp_path / "real"}', '--aug=gc', '--iters=3',
        '--batch=4', '--val-interval=2', '--base-width=2', '--workers=0', '--quiet'])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / 'syn' / '00000-real-real-gc_aug-eval128'
    results = json.loads((run_dir / 'results.json').read_text())
    assert results['protocol']['input_resolution'] == 64 and results['protocol']['mask_resolution'] == 128
    assert set(seg.SCORE_NAMES) <= set(results['results']) and results['num_test_images'] == 5
    assert [json.loads(l)['iteration'] for l in (run_dir / 'metric-val.jsonl').read_text().splitlines()] == [2, 3]
    assert json.loads((run_dir / 'options.json').read_text())['protocol'] == 'eval128'
    # The original's metric-test.jsonl beside it: its keys, its meanings (its IoU is our IoU_dataset).
    (line,) = (run_dir / 'metric-test.jsonl').read_text().splitlines()
    scores = results['results']
    assert json.loads(line)['results'] == {'pACC': scores['pACC'], 'IoU': scores['IoU_dataset'], 'mIoU': scores['mIoU'],
                                           'DRC_IoU': scores['IoU'], 'DRC_DICE': scores['DICE']}
    payload = torch.load(run_dir / 'unet-best.pt', weights_only=True)
    assert payload['data']['iteration'] == results['best_iteration']
    from PIL import Image
    assert Image.open(run_dir / 'seg-test.png').size == (5 * 128, 3 * 128)   # images / GT / prediction
    assert '\ntest' in result.output and 'IoU' in result.output
    # The fixed mask of the 128-pixel test masks, the gain over it and its warning, in results.json.
    from training.dataset import open_dataset
    masks = seg.load_pairs(open_dataset(str(tmp_path / 'real'), 'test', 128), 0, '', False)[1]
    fixed = seg.fixed_mask_score(masks)
    assert results['fixed_mask'] == {k: v for k, v in fixed.items() if k != 'mask'}
    assert results['IoU_gain'] == pytest.approx(results['results']['IoU'] - fixed['IoU'])
    warning = seg.fixed_mask_warning(results['results']['IoU'], fixed['IoU'])
    assert results['warnings'] == ([warning] if warning else [])
    assert '\nfixed ' in result.output and 'test IoU gain over the fixed mask: ' in result.output
    assert ('WARNING: the masks do no better than one fixed mask' in result.output) == (warning is not None)


def test_native128_and_scale_runs_are_named_by_protocol(tmp_path, dataset_module):
    from click.testing import CliRunner
    import eval_segmentation
    import eval_segmentation_eval128
    write_pair_set(tmp_path / 'syn', n=10, resolution=32)
    common = [f'--syn-data={tmp_path / "syn"}', f'--real-data={tmp_path / "syn"}', '--iters=1', '--batch=2',
              '--base-width=2', '--workers=0', '--quiet', '--aug=none']
    assert CliRunner().invoke(eval_segmentation.main, common + ['--scale=32']).exit_code == 0
    assert CliRunner().invoke(eval_segmentation_eval128.main, common + ['--native128']).exit_code == 0
    assert sorted(os.listdir(tmp_path / 'syn')) == ['00000-real-syn-none_aug-32', '00001-real-syn-none_aug-native128',
                                                     'img', 'mask']
    native = json.loads((tmp_path / 'syn' / '00001-real-syn-none_aug-native128' / 'results.json').read_text())
    assert native['protocol']['input_resolution'] == 128 and 'not the paper' in native['protocol']['description']


def test_a_seed_repeats_a_run_with_augmentation(tmp_path, dataset_module):
    write_pair_set(tmp_path / 'syn', n=10, resolution=32)
    runs = []
    for name in ('a', 'b'):
        cfg = seg.SegmentationConfig(syn_data=str(tmp_path / 'syn'), real_data=str(tmp_path / 'syn'), aug='gc',
                                     scale=32, iters=4, batch=4, val_interval=2, base_width=2, num_workers=0,
                                     progress=False, device='cpu', seed=3)
        seg.run_segmentation_eval(cfg, run_dir=str(tmp_path / name))
        runs.append([json.loads(l)['results'] for l in (tmp_path / name / 'metric-val.jsonl').read_text().splitlines()])
    assert runs[0] == runs[1]


# ----------------------------------------------------------------------------------------------
# User errors.

def test_cli_names_a_missing_synthetic_folder(tmp_path):
    from click.testing import CliRunner
    import eval_segmentation
    missing = tmp_path / 'no-such-set'
    result = CliRunner().invoke(eval_segmentation.main, [f'--syn-data={missing}', '--real-data=cub'])
    assert result.exit_code == 2
    assert str(missing) in result.output and 'Traceback' not in result.output


def test_empty_or_unpaired_synthetic_folders_are_user_errors(tmp_path, dataset_module):
    import dnnlib
    from PIL import Image
    cfg = seg.SegmentationConfig(syn_data=str(tmp_path), real_data=str(tmp_path))   # the real test set: the same pairs
    with pytest.raises(dnnlib.UserError, match='no img/ folder'):
        seg.check_config(cfg)
    (tmp_path / 'img').mkdir()
    (tmp_path / 'mask').mkdir()
    with pytest.raises(dnnlib.UserError, match='no images in'):
        seg.check_config(cfg)
    Image.new('RGB', (8, 8)).save(tmp_path / 'img' / '000001.png')
    with pytest.raises(dnnlib.UserError, match='000001.png'):
        seg.check_config(cfg)
    Image.new('RGB', (8, 8)).save(tmp_path / 'mask' / '000001.png')
    seg.check_config(cfg)
    with pytest.raises(dnnlib.UserError, match='--aug'):
        seg.check_config(seg.SegmentationConfig(syn_data=str(tmp_path), real_data=str(tmp_path), aug='colour'))


def test_dry_run_prints_the_originals_defaults(tmp_path, dataset_module):
    from click.testing import CliRunner
    import eval_segmentation
    (tmp_path / 'img').mkdir()
    (tmp_path / 'mask').mkdir()
    from PIL import Image
    Image.new('RGB', (8, 8)).save(tmp_path / 'img' / '000001.png')
    Image.new('RGB', (8, 8)).save(tmp_path / 'mask' / '000001.png')
    result = CliRunner().invoke(eval_segmentation.main, [f'--syn-data={tmp_path}', f'--real-data={tmp_path}', '-n'])
    assert result.exit_code == 0, result.output
    options = json.loads(result.output)
    assert (options['iters'], options['batch'], options['lr'], options['val_interval'], options['base_width'],
            options['aug'], options['scale']) == (6000, 64, 1e-3, 1000, 64, 'none', 128)  # the original's
    assert sorted(os.listdir(tmp_path)) == ['img', 'mask']             # a dry run writes nothing


@pytest.mark.parametrize('iters, val_interval, expected', [
    (6000, 1000, [20, 1020, 2020, 3020, 4020, 5020, 6000]),   # the original: ticks of 20, every 50 ticks, and done
    (600, 200, [20, 220, 420, 600]),                          # the CPU demo's auto test
    (6, 3, [3, 6]),                                           # shorter than a tick: every val_interval
    (20, 1000, [20]),
])
def test_validation_follows_the_originals_tick_schedule(iters, val_interval, expected):
    assert [i for i in range(1, iters + 1) if seg.evaluation_due(i, val_interval, iters)] == expected


def test_eval128_script_accepts_the_papers_scale_flag_and_rejects_others(tmp_path):
    """The README's command passes --scale=128; any other scale is a one-line error."""
    from click.testing import CliRunner
    import eval_segmentation_eval128
    write_pair_set(tmp_path / 'syn', n=20, resolution=32)
    common = [f'--syn-data={tmp_path / "syn"}', '--real-data=synthetic', '-n']
    assert CliRunner().invoke(eval_segmentation_eval128.main, common + ['--scale=128']).exit_code == 0
    result = CliRunner().invoke(eval_segmentation_eval128.main, common + ['--scale=64'])
    assert result.exit_code == 2 and 'eval_segmentation.py --scale=64' in result.output
