"""Every ``--cfg`` of the two training scripts, as data (METHOD.md §5).

One base (:data:`BASE`) holds every hyper-parameter of the paper's 64 px presets; each preset
lists only the fields that differ. :func:`resolve_preset` merges the two and fills in the values
that follow from the batch size (R1 γ, EMA half-life). The two training CLIs differ only in the
table they read (:data:`PRESETS_64`, :data:`PRESETS_128`) and their default preset.
"""

from __future__ import annotations

import copy
from typing import Any

import dnnlib

BASE: dict[str, Any] = dict(
    resolution=64,
    # Schedule (METHOD §5): 8000 kimg, ticks of 4 kimg, a snapshot every 50 ticks.
    kimg=8000, batch=32, kimg_per_tick=4, snap=50,
    metrics=['fid10k_full', 'kid10k_full'],
    metric_num_gen=None,            # None: each metric's own sample count (10k for *10k_full)
    # Networks (METHOD §1-2): fmaps 0.5 → channel_base 16384, channel_max 256.
    z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384, channel_max=256,
    mapping_lr_mul=0.01,            # learning-rate multiplier of the mapping networks
    mbstd=4, num_fp16_res=4, conv_clamp=256,
    # Optimisers and lazy regularisation (METHOD §3).
    lrate=0.0025, betas=[0.0, 0.99], adam_eps=1e-8,
    G_reg_interval=4, D_reg_interval=16,
    # StyleGAN2's path-length regulariser, off in ILSGAN (ORIGINAL §4.7): G-reg is then a no-op.
    pl_weight=0.0, pl_batch_shrink=2, pl_decay=0.01,
    # Style mixing, off in ILSGAN (ORIGINAL §2.4): mode orig | style | layer | none.
    style_mixing_prob=0.0, mixing='orig',
    freeze_layers=0,                # Freeze-D: D layers counted from the input that do not train
    gamma=None,                     # None: 0.0002 · R² / batch
    ema_kimg=None,                  # None: batch · 10 / 32
    ema_ramp=0.05,
    # Perturbed composition and mask losses (METHOD §1, §3).
    # The original's other perturbations (bg contrast, an affine warp of fg and mask: translation as a
    # fraction of the half-width, rotation in degrees, log2 scale) exist but are off in its presets.
    xint_max=0.125, bg_contrast=0.0, xfrac_max=0.0, rotate_max=0.0, scale_max=0.0,
    min_msize=0.25, max_msize=None, msize_weight=2.0, bin_weight=2.0,
    # ILS term (METHOD §4).
    estimator='club',               # 'club' | 'l1_distance'
    distribution='predetermined_laplace',
    initial_sigma=0.2, sigma=1.0,
    anti_kimg=400,                  # σ = initial_sigma while kimg ≤ anti_kimg, then sigma
    neg_weight=1.0, opt_mask=True, stop_grad=False,
    estimator_resolution=64, estimator_channels=[64, 128, 256, 256, 256], estimator_weight=0.1,
    # ADA (METHOD §3).
    aug='ada', augpipe='bgc', p=0.0, target=0.6, ada_kimg=500, ada_interval=4,
    # Image grids written at start and at every snapshot: fakes (rows × cols) and layers.
    grid_rows=16, grid_cols=16, layer_rows=8, layer_groups=2,
    workers=3,
    channels_last=None,             # G and D in NHWC: None = on a CPU only (oneDNN's layout; the CUDA kernels take NCHW)
    cpu_threads=None,               # torch threads when training on a CPU; None = torch's default
    # Overrides of metrics.auto_test.AutoTestSizes for the auto test that train_ILS_64.py runs
    # after training; empty = the original's sizes (10 000 samples, 6000 UNet iterations, ...).
    auto_test_sizes={},
    # Whether that auto test composes every sample with the training perturbation (generation's
    # --perturb); False = G's samples as they are, as the original.
    auto_test_perturb=False,
)

# The demo preset: narrow networks at 32 px that separate the synthetic dataset's objects on a
# 2-core CPU in minutes (~10.5 s/kimg on two threads; a mask and an object by ~10 kimg). Choices
# the paper's presets do not make, each measured (README, "The demo"):
# - 32 px: 4× less work than 64 px.
# - Mask-size bounds [0.25, 0.6]: the paper's lower bound and an upper one (with the paper's
#   one-sided 0.25 bound the mask saturated to all-ones within 3 kimg and stayed there). A lower
#   bound of 0.15 (the synthetic objects' smaller areas) let seeds 1 and 2 settle on a uniform grey
#   mask of ~0.16 with the object drawn by bg (IoU 0.000 each; seed 0: 0.805): a faint mask
#   hides the shift's seams. At 0.25 every seed binarises by ~10 kimg: IoU 0.061 / 0.774 / 0.794
#   for seeds 0 / 1 / 2 (seed 0's mask covers the surround instead of the object). Binarisation
#   weight 10 instead (bound 0.15) sent seed 1's mask towards empty (mean ~0.05 by 4 kimg). The
#   lower bound on the batch's mean area instead of each mask's (small objects allowed) made the
#   mask take the sky on held-out data (experiments/heldout_data.py, seed 0: IoU 0.044 against 0.496).
# - The minibatch-stddev group stays the paper's 4: over the whole batch of 16 (a stronger signal of
#   too little variety) it gave IoU 0.838 / 0.816 / 0.799 on seeds 0-2, mean 0.818 against 0.819,
#   and G's own spreads did not widen (experiments/results/ablation-cpu-mbstd16-2026-12-01.json).
# - Batch 16, not 32: batch 32 trains 30 kimg 1.2-1.3x faster (7m34s, 8m15s), but seed 1 drew
#   smooth blobs with a dark rim for objects, IoU 0.665 against 0.829 (seed 0: 0.817 against 0.826;
#   experiments/results/demo-cpu-batch32-2026-12-01.json).
# - Mapping networks of 2 layers, not the paper's 8: with 8, G's own layout spreads about doubled
#   (seed 1: position 0.37, area 0.53 of the data's, against 0.20 / 0.24), but seed 0's mask took
#   the surround (IoU 0.040) and seed 1's varied, irregular masks scored 0.772 against 0.829; with
#   4, IoU 0.740 / 0.789 on seeds 0 / 1 (experiments/results/ablation-cpu-mapping{8,4}-2026-12-01.json).
#   More varied layouts at 30 kimg did not mean masks closer to the objects.
# - What limits IoU (metrics.segmentation.scores_by_object_size, seed 0): the third of the test
#   objects that are smallest scores 0.72 against 0.89 for the largest, drawn 1.4x too large,
#   because G's masks are all about one size (area 0.34 +- 0.03; the data's 0.35 +- 0.10). Levers
#   for it that did not help, seed 0 each (experiments/results/demo-levers-2026-12-01.json): a lower
#   bound of 0.20 (IoU 0.805; G's mean area stays the data's: the bound did not hold the sizes
#   together), mapping lr multiplier 0.1 (0.803), style mixing 0.9 (ground layer by 10 kimg), a
#   scale perturbation on top of the shift (ground layer by 20 kimg), truncation 1.5 in the auto
#   test (0.803), R1 gamma 10x (0.533: the mask takes part of the surround), no per-pixel noise
#   in G (0.730, a scratch change).
# - 30 kimg is near the peak, not a budget cut: trained to 60 kimg, IoU fell on both seeds tried
#   (seed 0: 0.771 / 0.791 / 0.722 at 40 / 45 / 60 kimg; seed 2: 0.692 / 0.659 at 45 / 60). G's own
#   layouts grew as varied as the data's (area spread 0.69-0.82), but with irregular masks that reach
#   the border (experiments/results/demo-cpu-60kimg-2026-12-01.json).
# - The ILS term strong and early: σ = 5 for the first 6 kimg, then the paper's 1 (the paper: 0.2 for
#   the first 400 of 8000 kimg), with the mask detached from the term (opt_mask False). With the
#   paper's weak start, seed 0's first layers split the scene into a layer of ground in front and
#   the object behind it, seen through a hole in the mask (by 5 kimg; IoU 0.061, with and without
#   ILS, and the same with style mixing 0.9 or an affine perturbation): nothing then undoes it. A
#   strong early ILS term pushes the hidden part of each layer away from the visible part of the
#   other, which that split needs to be alike, and seed 0 starts with a centred object mask instead.
#   σ = 5 throughout kept the mask grey (binarisation loss 0.19 at 16 kimg, mask attached or not).
# - Mask-size weight 10 instead of 2: at 2, runs on two threads (and the mapping lr ×10 variant)
#   collapsed to an empty mask by 5 kimg; at 10 no run did.
# - No conv_clamp (an fp16 guard; on a CPU it only costs a clamp and its backward) and NHWC.
# - The auto test composes each sample with the training perturbation (auto_test_perturb; the
#   ±4 px shift of fg and mask the discriminator saw): after 30 kimg G draws its object at one
#   place, and the shift gives the UNet objects where the data has them. Seed 0, same snapshot,
#   same UNet: IoU 0.696 -> 0.791. A 1500-iteration UNet on those samples: 0.793 (not the limit).
#   Training with the original's affine perturbation instead (translation 0.25, log2 scale 0.5,
#   rotation 180°) made a half-image mask: IoU 0.334.
# - MINE reads the layers at 32 px, their size, instead of the original's 64 (mine_resolution): the
#   critics' first layer is 4x smaller and MINE's 2 x 600 steps take 79 s instead of 252 s on the
#   same set (2 cores, loaded); the estimates stay unconverged either way.
# A CPU run repeats exactly only at a fixed thread count, hence cpu_threads.
_CPU_DEMO: dict[str, Any] = dict(
    resolution=32, z_dim=64, w_dim=64, mapping_layers=2, channel_base=1024, channel_max=32,
    batch=16, kimg=30, kimg_per_tick=1, snap=5, initial_sigma=5.0, anti_kimg=6, opt_mask=False,
    max_msize=0.6, msize_weight=10.0,
    metrics=[], metric_num_gen=512, grid_rows=8, grid_cols=8, layer_groups=1,
    estimator_channels=[16, 32, 32, 32, 32], workers=0, cpu_threads=2, channels_last=True, conv_clamp=None,
    auto_test_sizes=dict(n=2000, seg_iters=600, seg_batch=32, seg_base_width=16,
                         seg_val_interval=200, mine_steps=600, mine_hidden=256, mine_eval_every=100,
                         mine_resolution=32),
    auto_test_perturb=True)

# Only the fields that differ from BASE.
PRESETS_64: dict[str, dict[str, Any]] = {
    'ILS_predL': {},
    'ILS_predN': dict(distribution='predetermined_gaussian'),
    'ILS_learnL': dict(distribution='neural_laplace', initial_sigma=0.001, sigma=0.001),
    'ILS_learnN': dict(distribution='neural_gaussian', initial_sigma=0.001, sigma=0.001),
    'ILS_L1': dict(estimator='l1_distance', distribution=None),
    'cpu': _CPU_DEMO,
    # The longer CPU quality run (experiments/quality.sh): the demo preset with a 64 px level (16 channels)
    # on top, trained longer, on both cores of a 2-core machine.
    'cpu64': dict({k: v for k, v in _CPU_DEMO.items() if k != 'resolution'}, kimg=24),
    # The ILS ablation (experiments/ablation.sh): the demo preset without the ILS term (σ = 0 throughout;
    # the bound is still computed, so the random streams match the demo's), and with ILS_L1's
    # direct L1 separation in place of the CLUB bound.
    'cpu_noILS': dict(_CPU_DEMO, initial_sigma=0.0, sigma=0.0),
    'cpu_L1': dict(_CPU_DEMO, estimator='l1_distance', distribution=None),
}
PRESETS_128: dict[str, dict[str, Any]] = {
    'ILS': dict(resolution=128),
}
DEFAULT_CFG = {64: 'ILS_predL', 128: 'ILS'}
PRESET_TABLES = {64: PRESETS_64, 128: PRESETS_128}

DISTRIBUTIONS = ('predetermined_laplace', 'predetermined_gaussian', 'neural_laplace', 'neural_gaussian')
ESTIMATORS = ('club', 'l1_distance')


def preset_names(resolution: int) -> list[str]:
    return list(PRESET_TABLES[resolution])


def resolve_preset(name: str, resolution: int = 64, **overrides: Any) -> dnnlib.EasyDict:
    """BASE + the preset's fields + ``overrides`` (None values are ignored), with derived values.

    Derived (ORIGINAL §6.2): ``gamma = 0.0002 · R² / batch`` and ``ema_kimg = batch · 10 / 32``
    unless given, both computed from the final batch size.
    """
    table = PRESET_TABLES.get(resolution)
    if table is None:
        raise dnnlib.UserError(f'no presets for resolution {resolution}; valid: {sorted(PRESET_TABLES)}')
    if name not in table:
        for other_res, other in PRESET_TABLES.items():
            if name in other:
                script = f'train_ILS_{other_res}.py'
                raise dnnlib.UserError(f'--cfg={name} is a {other_res} px preset; use {script} '
                                       f'(valid here: {", ".join(table)})')
        raise dnnlib.UserError(f'unknown --cfg={name}; valid: {", ".join(table)}')
    spec = dnnlib.EasyDict(copy.deepcopy(BASE))
    spec.update(copy.deepcopy(table[name]))
    spec.update({key: value for key, value in overrides.items() if value is not None})
    spec.cfg = name
    if spec.gamma is None:
        spec.gamma = 0.0002 * spec.resolution ** 2 / spec.batch
    if spec.ema_kimg is None:
        spec.ema_kimg = spec.batch * 10 / 32
    return spec
