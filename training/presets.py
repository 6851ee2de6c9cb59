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
    # Not in the paper: the size floor on the batch's mean mask area instead of each mask's (training/loss.py).
    msize_on_batch=False,
    # Not in the paper: a weight on relu(mask's cover of the image border − border_max) (training/loss.py).
    border_weight=0.0, border_max=0.0,
    # Not in the paper: G's placement head, a translation of fg and mask read from w, up to this share of
    # the width each way (training/networks.py LayeredGenerator); 0 = no head.
    placement_max=0.0,
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
    channels_last=None,             # G and D in NHWC; None = on a CPU only (the CUDA kernels take NCHW)
    cpu_threads=None,               # torch threads when training on a CPU; None = torch's default
    # The auto test after training: overrides of metrics.auto_test.AutoTestSizes (empty = the original's
    # sizes), and whether each sample gets the training perturbation (generation's --perturb).
    auto_test_sizes={}, auto_test_perturb=False,
    auto_test_roles='as_drawn',     # which layer is the object in the auto test's samples (metrics.roles)
)

# The demo preset (`make demo`): narrow networks at 32 px that separate the synthetic set's objects
# in minutes on a 2-core CPU. One reason per field that departs from the paper; the dated evidence is
# in experiments/demo.md ("The reasons behind each field") unless another page is named; results/
# means experiments/results/.
_CPU_DEMO: dict[str, Any] = dict(
    resolution=32, z_dim=64, w_dim=64, channel_base=1024, channel_max=32,  # a CPU budget: 4x less work than 64 px
    mapping_layers=2,       # 8 or 4: seed 0's mask took the surround (results/ablation-cpu-mapping*.json)
    batch=16,               # 32 trains faster but seed 1 fell to IoU 0.665 (results/demo-cpu-batch32-*.json)
    kimg=30, kimg_per_tick=1, snap=5,  # near the peak: IoU fell by 60 kimg (results/demo-cpu-60kimg-*.json)
    # ILS strong and early, mask detached: with the paper's weak start seed 0 drew a ground layer in
    # front of the object; sigma 5 throughout kept the mask grey (experiments/ablation.md).
    initial_sigma=5.0, anti_kimg=6, opt_mask=False,
    max_msize=0.6,          # with the paper's one-sided bound the mask saturated to all-ones within 3 kimg
    msize_weight=10.0,      # at 2, runs on two threads collapsed to an empty mask by 5 kimg
    metrics=[], metric_num_gen=512,  # no FID: the Inception detector is a download
    grid_rows=8, grid_cols=8, layer_groups=1, estimator_channels=[16, 32, 32, 32, 32], workers=0,
    cpu_threads=2,          # a CPU run repeats exactly only at a fixed thread count
    channels_last=True,     # oneDNN's layout on a CPU (experiments/speed.md)
    conv_clamp=None,        # an fp16 guard; on a CPU only a cost, 11 % of an iteration (experiments/speed.md)
    # Minutes, not hours; MINE reads the layers at their own 32 px (79 s instead of 252 s).
    auto_test_sizes=dict(n=2000, seg_iters=600, seg_batch=32, seg_base_width=16,
                         seg_val_interval=200, mine_steps=600, mine_hidden=256, mine_eval_every=100,
                         mine_resolution=32),
    # After 30 kimg G draws its object at one place; the training shift moves it where the data's
    # objects are (seed 0, same snapshot: IoU 0.696 -> 0.791).
    auto_test_perturb=True,
    # A sample whose mask covers more than half of the image border marks the scene: its roles are
    # swapped (no label read). A no-op where no mask does; a surround frame 0.030 -> 0.447 (experiments/heldout.md).
    auto_test_roles='border')

# Only the fields that differ from BASE.
PRESETS_64: dict[str, dict[str, Any]] = {
    'ILS_predL': {},
    'ILS_predN': dict(distribution='predetermined_gaussian'),
    'ILS_learnL': dict(distribution='neural_laplace', initial_sigma=0.001, sigma=0.001),
    'ILS_learnN': dict(distribution='neural_gaussian', initial_sigma=0.001, sigma=0.001),
    'ILS_L1': dict(estimator='l1_distance', distribution=None),
    'cpu': _CPU_DEMO,
    # experiments/quality.sh: the demo preset with a 64 px level (16 channels) on top, trained longer.
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
