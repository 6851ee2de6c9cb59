"""The paper's segmentation evaluation (METHOD.md §8): a UNet trained on synthetic pairs, tested on real ones.

Three parts, each usable on its own:

* **Scores** — pure functions of predicted and ground-truth label maps: the paper's per-image
  foreground IoU and DICE, and the dataset-level confusion-matrix scores (foreground IoU, mIoU,
  pixel accuracy). :func:`predict_labels` turns logits into labels at the ground truth's size
  (the eval128 protocol upsamples 64-pixel logits ×2 before the arg-max).
* **UNet** — the 4-level UNet of METHOD.md §8 (widths 64·(1, 2, 4, 8, 8) down, 64·(4, 2, 1, 1) up,
  ``base_width`` shrinks it for CPU demos).
* **Protocol** — :func:`run_segmentation_eval` trains the UNet on the synthetic ``img/`` + ``mask/``
  pairs (first 90 % train, last 10 % validation, sorted), keeps the snapshot with the best
  validation IoU, tests it on the real test split beside the split's fixed mask
  (:func:`fixed_mask_score`: the best one mask for every image) and writes the run directory. It can also
  continue a saved UNet, test one without training, and test every validated UNet (the
  original's ``--resume-from``, ``--test-only``, ``--test-all``).

Empty masks: the per-image IoU and DICE of an image whose prediction *and* ground truth are both
empty are defined as 1 (a perfect answer; the original divides 0 by 0 and gets NaN). A non-empty
ground truth with an empty prediction scores 0, as the formulas give.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

import dnnlib
from torch_utils import checkpoint

# ----------------------------------------------------------------------------------------------
# Scores. Label maps are integer tensors [N, H, W] with 0 = background, 1 = foreground.

SCORE_NAMES = ('IoU', 'DICE', 'IoU_dataset', 'mIoU', 'pACC')


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Pixel counts ``C[p, g]`` (int64 [2, 2]) of prediction class p against ground-truth class g.

    ``pred``, ``gt``: [N, H, W] (or any equal shapes) with values in {0, 1}.
    """
    index = pred.reshape(-1).long() * 2 + gt.reshape(-1).long()
    return torch.bincount(index, minlength=4).reshape(2, 2).cpu()


def per_image_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Foreground |P ∩ G| / |P ∪ G| of each image: float64 [N]; both empty → 1 (METHOD.md §8).

    ``pred``, ``gt``: [N, H, W] in {0, 1}.
    """
    p, g = pred.flatten(1).bool(), gt.flatten(1).bool()
    inter = (p & g).sum(1).double()
    union = (p | g).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def per_image_dice(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Foreground 2|P ∩ G| / (|P| + |G|) of each image: float64 [N]; both empty → 1 (METHOD.md §8)."""
    p, g = pred.flatten(1).bool(), gt.flatten(1).bool()
    inter = (p & g).sum(1).double()
    total = (p.sum(1) + g.sum(1)).double()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def scores_from_confusion(conf: torch.Tensor) -> dict[str, float]:
    """Dataset-level scores of a summed confusion matrix ``C[pred, gt]`` (METHOD.md §8).

    ``IoU_dataset`` = C11 / (C11 + C10 + C01) (foreground); ``mIoU`` = mean of the foreground and
    background IoU; ``pACC`` = (C00 + C11) / ΣC. A class absent from both prediction and ground
    truth has IoU 1, as per image.
    """
    c = conf.double()
    ious = []
    for k in (0, 1):
        union = c[k, :].sum() + c[:, k].sum() - c[k, k]
        ious.append(float(c[k, k] / union) if union > 0 else 1.0)
    total = float(c.sum())
    return {'IoU_dataset': ious[1], 'mIoU': (ious[0] + ious[1]) / 2,
            'pACC': float(c[0, 0] + c[1, 1]) / total if total > 0 else 1.0}


def scores_by_object_size(pred: torch.Tensor, gt: torch.Tensor, groups: int = 3) -> list[dict[str, float]]:
    """The paper's IoU in ``groups`` equal-count groups of test images, from the smallest true object up.

    ``pred``, ``gt``: [N, H, W] in {0, 1}. Each group gives its ``n`` images, the range of their
    true areas (``area_min``, ``area_max``: fractions of the image), their mean per-image ``IoU``
    and ``area_ratio`` = predicted over true foreground pixels, summed over the group (1 = sizes
    right on average; 1.5 = predictions half again as large as the objects; None when the group's
    true masks are all empty). A segmenter trained on masks that never go below some size
    over-segments the objects under it: the small group then reads a low IoU and a ratio above 1
    while the large group does not.
    """
    if pred.shape != gt.shape:
        raise ValueError(f'prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape')
    pred_area = pred.flatten(1).bool().sum(1).double()
    true_area = gt.flatten(1).bool().sum(1).double()
    iou = per_image_iou(pred, gt)
    pixels = gt[0].numel() if len(gt) else 1
    order = torch.argsort(true_area, stable=True)
    rows = []
    for index in torch.tensor_split(order, groups):
        if len(index) == 0:
            continue
        true_sum = float(true_area[index].sum())
        rows.append({'n': len(index), 'area_min': float(true_area[index].min()) / pixels,
                     'area_max': float(true_area[index].max()) / pixels, 'IoU': float(iou[index].mean()),
                     'area_ratio': float(pred_area[index].sum()) / true_sum if true_sum > 0 else None})
    return rows


class SegmentationScores:
    """Accumulates batches of label maps; :meth:`result` gives every score of :data:`SCORE_NAMES`.

    ``IoU`` and ``DICE`` are the paper's numbers: per-image foreground scores averaged over
    images. The ``*_dataset``/``mIoU``/``pACC`` scores pool pixels of all images first, so one
    large object weighs more than one small one; the two averagings differ in general.
    """

    def __init__(self) -> None:
        self.conf = torch.zeros(2, 2, dtype=torch.int64)
        self.iou: list[torch.Tensor] = []
        self.dice: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """``pred``, ``gt``: [N, H, W] in {0, 1} of equal shape."""
        if pred.shape != gt.shape:
            raise ValueError(f'prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape')
        self.conf += confusion_matrix(pred, gt)
        self.iou.append(per_image_iou(pred, gt).cpu())
        self.dice.append(per_image_dice(pred, gt).cpu())

    @property
    def num_images(self) -> int:
        return sum(len(x) for x in self.iou)

    def result(self) -> dict[str, float]:
        if self.num_images == 0:
            raise ValueError('no images were scored')
        return {'IoU': float(torch.cat(self.iou).mean()), 'DICE': float(torch.cat(self.dice).mean()),
                **scores_from_confusion(self.conf)}


# The fixed mask's levels: 0.05, 0.10, ..., 0.95 (k / 20 is the double nearest each level, as is
# the mean j / N of the masks, so a mean equal to a level is compared exactly).
FIXED_MASK_LEVELS = tuple(k / 20 for k in range(1, 20))
# A segmenter whose IoU is less than this above the fixed mask's does no better than one mask.
FIXED_MASK_MARGIN = 0.05


def fixed_mask_score(true_masks, batch: int = 1024) -> dict:
    """The best score of one mask used for every image: the pixel-wise mean of the true masks,
    thresholded at the level of :data:`FIXED_MASK_LEVELS` that gives the best paper IoU.

    ``true_masks``: [N, H, W] (torch or numpy), the masks at the scored resolution as the protocol
    holds them (uint8 in {0, 1}; any value above 0.5 is foreground). The mask at level t holds the
    pixels where at least a fraction t of the true masks are foreground (mean >= t). Each level is
    scored by :class:`SegmentationScores`, the class that scores the UNet: per-image IoU and DICE
    averaged over images, so the empty-mask rule is the same (an empty true mask scores 1 against
    an empty fixed mask and 0 against any other). Ties go to the lowest level.

    It reads the test labels: an upper bound on any prediction that ignores the image. Returns
    every score of :data:`SCORE_NAMES` at the best level, and ``threshold`` (that level),
    ``area`` (fraction of the image the fixed mask covers), ``IoU_by_level`` (the paper IoU at
    each level, in order) and ``mask`` (bool [H, W]: the fixed mask itself; not JSON).
    """
    gt = torch.as_tensor(true_masks)
    if gt.ndim != 3 or len(gt) == 0:
        raise ValueError(f'true masks must be a non-empty [N, H, W] stack, got shape {tuple(gt.shape)}')
    gt = gt > 0.5
    mean = gt.double().sum(0) / len(gt)    # exact j / N, for the comparison with k / 20
    best, by_level = None, []
    for level in FIXED_MASK_LEVELS:
        mask = mean >= level
        scores = SegmentationScores()
        for start in range(0, len(gt), batch):   # bounded memory on large test splits
            chunk = gt[start:start + batch]
            scores.update(mask.expand_as(chunk), chunk)
        result = scores.result()
        by_level.append(result['IoU'])
        if best is None or result['IoU'] > best['IoU']:
            best = {**result, 'threshold': level, 'area': float(mask.double().mean()), 'mask': mask}
    return {**best, 'IoU_by_level': by_level}


def fixed_mask_warning(iou: float, fixed_iou: float) -> str | None:
    """The warning when ``iou`` beats the fixed mask's ``fixed_iou`` by less than
    :data:`FIXED_MASK_MARGIN` (None otherwise)."""
    if iou >= fixed_iou + FIXED_MASK_MARGIN:
        return None
    return (f'the masks do no better than one fixed mask: IoU {iou:.3f} against {fixed_iou:.3f} for the mean of '
            f'the test masks used for every image (gain {iou - fixed_iou:+.3f}, less than {FIXED_MASK_MARGIN})')


def predict_labels(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Arg-max labels [N, size, size] (int64) of two-class logits [N, 2, h, w].

    When ``size`` differs from ``h`` the *logits* are resized bilinearly (align_corners=False)
    before the arg-max: the eval128 protocol scores 64-pixel predictions against 128-pixel masks
    this way (METHOD.md §8). Ties go to the background (class 0).
    """
    if logits.shape[-2:] != (size, size):
        logits = F.interpolate(logits.float(), size=(size, size), mode='bilinear', align_corners=False)
    return logits.argmax(dim=1)


# ----------------------------------------------------------------------------------------------
# The UNet (METHOD.md §8).

class DoubleConv(torch.nn.Sequential):
    """(3×3 conv → BatchNorm → ReLU) ×2; [N, in, H, W] → [N, out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        layers = []
        for c_in in (in_channels, out_channels):
            # The conv bias is redundant before BatchNorm, but the original has it (it shapes the init).
            layers += [torch.nn.Conv2d(c_in, out_channels, 3, padding=1),
                       torch.nn.BatchNorm2d(out_channels), torch.nn.ReLU(inplace=True)]
        super().__init__(*layers)


class UpBlock(torch.nn.Module):
    """Bilinear ×2 (align_corners=True) of the deeper map, concatenation after the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=True)
        # Odd input sizes leave the upsampled map a pixel short of the skip: pad it to match.
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


@checkpoint.rebuildable
class UNet(torch.nn.Module):
    """Two-class UNet of METHOD.md §8: [N, 3, H, W] in [-1, 1] → logits [N, 2, H, W].

    Down widths ``base_width``·(1, 2, 4, 8, 8) with 2×2 max-pooling between them, up widths
    ``base_width``·(4, 2, 1, 1); ``base_width=64`` is the paper's network. Fully convolutional:
    any input size works (multiples of 16 avoid padding).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base_width: int = 64) -> None:
        super().__init__()
        self.base_width = w = base_width
        down = [w, 2 * w, 4 * w, 8 * w, 8 * w]
        up = [4 * w, 2 * w, w, w]
        self.inc = DoubleConv(in_channels, down[0])
        self.down = torch.nn.ModuleList(DoubleConv(a, b) for a, b in zip(down[:-1], down[1:]))
        skips = down[-2::-1]                     # 8w, 4w, 2w, w: the skip feeding each up block
        deeper = [down[-1]] + up[:-1]            # 8w, 4w, 2w, w: the map coming from below
        self.up = torch.nn.ModuleList(UpBlock(s + d, o) for s, d, o in zip(skips, deeper, up))
        self.outc = torch.nn.Conv2d(up[-1], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.inc(x)]
        for block in self.down:
            features.append(block(F.max_pool2d(features[-1], 2)))
        x = features.pop()
        for block in self.up:
            x = block(x, features.pop())
        return self.outc(x)


# ----------------------------------------------------------------------------------------------
# Configuration.

AUG_KINDS = ('none', 'color', 'geom', 'gc')
UNET_BEST, UNET_LAST = 'unet-best.pt', 'unet-last.pt'   # the selected UNet; the latest, with Adam's state

# The original's UNet and MINE loops run in ticks of 20 iterations and evaluate after the first
# tick, then every k ticks, and at the end: UNet 20, 1020, …, 5020, 6000; MINE 20, 420, …, 99 620, 100 000.
TICK_ITERATIONS = 20


def evaluation_due(iteration: int, interval: int, total: int) -> bool:
    """Whether to evaluate after ``iteration`` (1-based) of ``total``: after the first tick of
    min(20, interval) iterations, every ``interval`` after it, and after the last iteration."""
    first = min(TICK_ITERATIONS, interval)
    return iteration == total or (iteration >= first and (iteration - first) % interval == 0)

# protocol → (input resolution of train/val/test images, resolution of the masks scored);
# 'scale' takes both from SegmentationConfig.scale.
PROTOCOLS = {'scale': None, 'eval128': (64, 128), 'native128': (128, 128)}


@dataclass
class SegmentationConfig:
    """Everything :func:`run_segmentation_eval` needs; the defaults are the paper's values."""
    syn_data: str                       # folder with img/ and mask/ (generate_segmentation_samples.py)
    real_data: str                      # cub | dog | car | synthetic | folder of img/ + mask/ pairs
    real_root: str | None = None        # dataset root (as in training/dataset.py)
    aug: str = 'none'                   # none | color | geom | gc (the paper's commands pass color)
    protocol: str = 'scale'             # scale | eval128 | native128
    scale: int = 128                    # input = mask resolution of the 'scale' protocol (paper: 64 and 128)
    iters: int = 6000
    batch: int = 64
    lr: float = 1e-3                    # Adam, default betas, constant (METHOD.md §8)
    val_interval: int = 1000            # validate after 20 iterations, every val_interval after, and at the end
    val_fraction: float = 0.1           # the last 10 % of the sorted pairs
    base_width: int = 64
    eval_batch: int = 128
    num_workers: int = 3                # PNG decoding processes while loading the sets
    seed: int = 0
    outdir: str | None = None           # parent of the run directory; default: syn_data
    device: str | None = None           # default: cuda when available
    progress: bool = True
    grid_size: int = 16                 # test images shown in seg-test.png
    crop_ratio: float = 1.0             # centre square of this fraction of each synthetic pair, before resizing
    test_all: bool = False              # also test every validated UNet: metric-test_all.jsonl
    resume_from: str | None = None      # a UNet file or run directory to continue (or to test)
    test_only: bool = False             # no training: test the UNet of resume_from
    allow_partial: bool = False         # evaluate a generated set holding fewer samples than its meta.json's n

    def resolutions(self) -> tuple[int, int]:
        """(input resolution, scored mask resolution) of this protocol."""
        return (self.scale, self.scale) if self.protocol == 'scale' else PROTOCOLS[self.protocol]

    def run_desc(self) -> str:
        """``real-<data>-<aug>_aug-<scale|eval128|native128>``: the run directory's name after its number."""
        data = os.path.basename(os.path.normpath(self.real_data))
        tag = str(self.scale) if self.protocol == 'scale' else self.protocol
        return f'real-{data}-{self.aug}_aug-{tag}' + (f'-CropRatio{self.crop_ratio}' if self.crop_ratio != 1 else '')

    def protocol_record(self) -> dict:
        """Plain description of what was trained and scored at which size (stored in results.json)."""
        input_res, target_res = self.resolutions()
        notes = {'scale': f'train, validate and test at {input_res}',
                 'eval128': 'the paper\'s 128 protocol: UNet trained and run at 64, logits upsampled x2 '
                            '(bilinear, align_corners=False) and scored against 128 masks',
                 'native128': 'our improvement, not the paper\'s protocol: train, validate and test at 128'}
        return {'name': self.protocol, 'input_resolution': input_res, 'mask_resolution': target_res,
                'description': notes[self.protocol]}


def check_config(cfg: SegmentationConfig) -> None:
    """User-facing validation of the options and of the synthetic folder (before any work)."""
    if cfg.aug not in AUG_KINDS:
        raise dnnlib.UserError(f'--aug={cfg.aug!r} is not one of {", ".join(AUG_KINDS)}')
    if cfg.protocol not in PROTOCOLS:
        raise dnnlib.UserError(f'protocol {cfg.protocol!r} is not one of {", ".join(PROTOCOLS)}')
    for name in ('iters', 'batch', 'val_interval', 'base_width', 'scale', 'eval_batch'):
        if getattr(cfg, name) < 1:
            raise dnnlib.UserError(f'--{name.replace("_", "-")} must be at least 1, got {getattr(cfg, name)}')
    if not 0 < cfg.val_fraction < 1:
        raise dnnlib.UserError(f'the validation fraction must lie in (0, 1), got {cfg.val_fraction}')
    if not 0 < cfg.crop_ratio <= 1:
        raise dnnlib.UserError(f'--crop-ratio must lie in (0, 1], got {cfg.crop_ratio}')
    if cfg.test_only and cfg.resume_from is None:
        raise dnnlib.UserError('--test-only needs --resume-from=RUN_DIR or a unet-*.pt file: the UNet to test')
    if cfg.test_only and cfg.test_all:
        raise dnnlib.UserError('--test-all tests each UNet validated while training; '
                               'it does not combine with --test-only')
    if cfg.resume_from is not None:
        unet_path(cfg.resume_from, cfg.test_only)
    check_synthetic_folder(cfg.syn_data)
    from torch_utils.misc import ensure_writable_dir
    try:
        ensure_writable_dir(cfg.outdir or cfg.syn_data)
    except OSError as err:
        raise dnnlib.UserError(f'cannot make the run folder in {cfg.outdir or cfg.syn_data} ({err}); '
                               f'pass --outdir=DIR') from None
    open_synthetic_pairs(cfg, cfg.resolutions()[0])  # lists the pairs: a mask missing? a partial set?
    from training.dataset import open_dataset
    open_dataset(cfg.real_data, split='test', resolution=cfg.resolutions()[0], data_root=cfg.real_root,
                 root_option='--real-root')   # lists the real test split: found, with masks?


def unet_path(path: str, test_only: bool) -> str:
    """--resume-from: a UNet file, or a run directory: its unet-best.pt to test, unet-last.pt to continue."""
    if os.path.isdir(path):
        found = os.path.join(path, UNET_BEST if test_only else UNET_LAST)
        if not os.path.isfile(found):
            raise dnnlib.UserError(f'--resume-from: {path} has no {os.path.basename(found)}; pass a run directory '
                                   f'of eval_segmentation or a unet-*.pt file')
        return found
    if not os.path.isfile(path):
        raise dnnlib.UserError(f'--resume-from: {path} does not exist')
    return path


def read_unet(path: str, cfg: SegmentationConfig) -> dict:
    """A saved UNet, loaded with weights_only (never a pickle): ``{'unet': UNet, 'data': dict}``.

    UserError unless it is one of our UNet files, trained at this run's input resolution.
    """
    payload = checkpoint.load_snapshot(path)
    if not isinstance(payload.get('unet'), UNet):
        raise dnnlib.UserError(f'--resume-from: {path} holds no UNet; pass unet-best.pt or unet-last.pt of a '
                               f'segmentation run')
    check_unet_data(payload, path)
    trained_at = payload['data'].get('protocol', {}).get('input_resolution')
    if trained_at != cfg.resolutions()[0]:
        raise dnnlib.UserError(f'--resume-from: {path} was trained on {trained_at}-pixel inputs, this run uses '
                               f'{cfg.resolutions()[0]}; pass the --scale (or protocol) it was trained with')
    return payload


def unet_parameters(base_width: int) -> int:
    """Parameters + buffers of ``UNet(base_width=w)``: a quadratic in w (every convolution joins
    two widths that are multiples of w), read off three tiny builds, exact for any w."""
    counts = [sum(t.numel() for t in (*UNet(base_width=k).parameters(), *UNet(base_width=k).buffers()))
              for k in (1, 2, 3)]
    a = (counts[2] - 2 * counts[1] + counts[0]) // 2
    b = counts[1] - counts[0] - 3 * a
    c = counts[0] - a - b
    return a * base_width ** 2 + b * base_width + c


def unet_bytes(base_width: int, batch: int, resolution: int, num_images: int = 0) -> int:
    """Memory of training ``UNet(base_width)`` at ``resolution``: weights with gradients and Adam's
    state, the feature maps of one training batch (about six floats per map float: convolution,
    BatchNorm and their gradients), and ``num_images`` decoded uint8 image + mask pairs."""
    from torch_utils import memory
    widths = [1, 2, 4, 8, 8, 4, 2, 1, 1]                       # down levels, then up levels
    sides = [resolution >> i for i in (0, 1, 2, 3, 4, 3, 2, 1, 0)]
    map_floats = sum(base_width * k * side * side for k, side in zip(widths, sides))
    return (memory.TRAINED_PARAMETER_BYTES * unet_parameters(base_width)
            + 6 * memory.FLOAT_BYTES * batch * map_floats + num_images * 4 * resolution * resolution)


def check_memory(cfg: SegmentationConfig, device: torch.device | str, what: str | None = None) -> None:
    """UserError naming --base-width, --batch and the resolution when the UNet training cannot fit
    in ``device``'s free memory, before any pair is read or folder made."""
    from torch_utils import memory
    resolution = cfg.resolutions()[0]
    try:   # the synthetic pairs are decoded into memory: count them (a listing, nothing read)
        pairs = 0 if cfg.test_only else sum(1 for _ in os.scandir(os.path.join(cfg.syn_data, 'img')))
    except OSError:
        pairs = 0   # a missing folder is check_config's error to report
    memory.check_fits(unet_bytes(cfg.base_width, 0 if cfg.test_only else cfg.batch, resolution, pairs),
                      what or f'the UNet at --base-width={cfg.base_width}, --batch={cfg.batch} and {resolution} px'
                      + (f' on {pairs} synthetic pairs' if pairs else ''),
                      device, advice='choose a smaller --base-width or --batch (or a smaller set or resolution)')


def check_unet_data(payload: dict, path: str) -> None:
    """The progress a UNet file carries, checked before a run folder is made: ``data`` a mapping
    with ``protocol`` a mapping, ``iteration`` (and ``best_iteration``) an integer >= 0, ``val``
    scores or null, and Adam's state one that loads into this UNet's optimiser."""
    data = payload.get('data')

    def refuse(problem: str) -> dnnlib.UserError:
        return dnnlib.UserError(f'--resume-from: {path} is damaged or was altered ({problem}); pass '
                                f'unet-best.pt or unet-last.pt of a segmentation run as it was written')

    def is_count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(data, dict):
        raise refuse('its data is not a mapping')
    if not isinstance(data.get('protocol', {}), dict):
        raise refuse(f'protocol={data["protocol"]!r} is not a mapping')
    for name in ('iteration', 'best_iteration'):
        if (name == 'iteration' or data.get(name) is not None) and not is_count(data.get(name)):
            raise refuse(f'{name}={data.get(name)!r} is not an integer >= 0')
    val = data.get('val')
    if val is not None and not (isinstance(val, dict) and isinstance(val.get('IoU_dataset'), (int, float))
                                and not isinstance(val.get('IoU_dataset'), bool)):
        raise refuse('its validation scores are not those of this project')
    if 'optimizer' in data:
        try:   # a throwaway optimiser: the training loads the same state into its own
            torch.optim.Adam(payload['unet'].parameters()).load_state_dict(copy.deepcopy(data['optimizer']))
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise refuse(f'its optimiser state does not fit the UNet: {reason}') from None


def check_synthetic_folder(path: str) -> None:
    """UserError unless ``path`` is a folder with img/ (the pairs themselves are checked by open_dataset)."""
    if not os.path.isdir(path):
        raise dnnlib.UserError(f'synthetic data folder not found: {path} (pass the synthetic_data-KKKKKK '
                               f'folder written by generate_segmentation_samples.py)')
    if not os.path.isdir(os.path.join(path, 'img')):
        raise dnnlib.UserError(f'{path} has no img/ folder: not a synthetic segmentation set (expected img/ and mask/)')


def open_synthetic_pairs(cfg: SegmentationConfig, resolution: int, warn: bool = False) -> torch.utils.data.Dataset:
    """The (image, mask) pairs of ``cfg.syn_data`` at ``resolution``. A generated set (one with a
    meta.json) gives the samples present in both img/ and mask/, and is refused when it holds fewer
    than its n unless ``cfg.allow_partial`` (:func:`training.sample_set.complete_samples`)."""
    from training.dataset import open_dataset
    from training.image_files import open_pairs
    from training.sample_set import complete_samples
    names = complete_samples(cfg.syn_data, ('img', 'mask'), cfg.allow_partial, warn)
    if names is None:
        return open_dataset(cfg.syn_data, split='test', resolution=resolution, crop_ratio=cfg.crop_ratio)
    return open_pairs(cfg.syn_data, resolution, names=names, crop_ratio=cfg.crop_ratio)


# ----------------------------------------------------------------------------------------------
# Data. Sets are decoded once (in worker processes) and kept as uint8 tensors.

def load_pairs(dataset: torch.utils.data.Dataset, num_workers: int, desc: str,
               progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """All (image, mask) pairs of a dataset: uint8 [N, 3, R, R] and uint8 [N, R, R] in {0, 1}."""
    # More decoding processes than cores only adds start-up time.
    num_workers = min(num_workers, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=num_workers, shuffle=False)
    images, masks = [], []
    for image, mask in dnnlib.progress_bar(loader, progress, desc=desc, unit='batch', leave=False):
        images.append(torch.as_tensor(image, dtype=torch.uint8))
        masks.append(torch.as_tensor(mask, dtype=torch.uint8))
    return torch.cat(images), torch.cat(masks)


def load_sets(cfg: SegmentationConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{'train', 'val', 'test'}`` → (images at the input resolution, masks at the scored resolution).

    Training masks are always at the input resolution (the UNet is trained at its own size).
    """
    input_res, target_res = cfg.resolutions()
    syn = open_synthetic_pairs(cfg, input_res, warn=True)
    num_train = int(math.floor((1 - cfg.val_fraction) * len(syn)))
    if num_train < 1 or num_train >= len(syn):
        raise dnnlib.UserError(f'{cfg.syn_data} holds {len(syn)} pairs: too few to split into training '
                               f'and validation sets')
    images, masks = load_pairs(syn, cfg.num_workers, 'synthetic pairs', cfg.progress)
    sets = {'train': (images[:num_train], masks[:num_train]), 'val': (images[num_train:], masks[num_train:])}
    if target_res != input_res:
        syn_target = open_synthetic_pairs(cfg, target_res)
        val_target = torch.utils.data.Subset(syn_target, range(num_train, len(syn_target)))
        sets['val'] = (sets['val'][0], load_pairs(val_target, cfg.num_workers, 'val masks', cfg.progress)[1])
    sets['test'] = load_test_set(cfg)
    return sets


def load_test_set(cfg: SegmentationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The real test split: images at the input resolution, masks at the scored resolution."""
    from training.dataset import open_dataset
    input_res, target_res = cfg.resolutions()
    real = open_dataset(cfg.real_data, split='test', resolution=input_res, data_root=cfg.real_root,
                        root_option='--real-root')
    images, masks = load_pairs(real, cfg.num_workers, 'real test pairs', cfg.progress)
    if target_res != input_res:
        real_target = open_dataset(cfg.real_data, split='test', resolution=target_res, data_root=cfg.real_root,
                                   root_option='--real-root')
        masks = load_pairs(real_target, cfg.num_workers, 'test masks', cfg.progress)[1]
    return images, masks


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, R, R] → float32 in [-1, 1]."""
    return images.float() / 127.5 - 1


def batch_indices(num: int, batch: int, generator: torch.Generator):
    """Endless batches of indices: a fresh permutation per epoch, batches may span two epochs."""
    buffer = torch.empty(0, dtype=torch.int64)
    while True:
        if len(buffer) < batch:   # as many epochs as the batch needs, in one concatenation
            epochs = -(-(batch - len(buffer)) // num)
            buffer = torch.cat([buffer, *(torch.randperm(num, generator=generator) for _ in range(epochs))])
        yield buffer[:batch]
        buffer = buffer[batch:]


# ----------------------------------------------------------------------------------------------
# Training and evaluation.

def augment_pairs(pipe, images: torch.Tensor, masks: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment images [N, 3, R, R] in [-1, 1] and labels [N, R, R] in {0, 1} (int64) with one pipe.

    Colour ops change the images only, geometric ones both (training/augment.py); ``pipe`` None
    leaves both as they are.
    """
    if pipe is None:
        return images, masks
    aug_images, aug_masks = pipe(images, masks[:, None].float(), generator=generator)
    return aug_images, (aug_masks[:, 0] > 0.5).long()


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, batch: int,
             device: torch.device) -> tuple[dict[str, float], torch.Tensor]:
    """Scores of ``model`` (eval mode) on uint8 images [N, 3, r, r] against masks [N, R, R].

    Returns the scores and the predicted labels [N, R, R] (uint8, on the CPU).
    """
    was_training = model.training
    model.eval()
    scores, preds = SegmentationScores(), []
    size = masks.shape[-1]
    for start in range(0, len(images), batch):
        x = to_float_images(images[start:start + batch].to(device))
        pred = predict_labels(model(x), size)
        scores.update(pred, masks[start:start + batch].to(device))
        preds.append(pred.to('cpu', torch.uint8))
    model.train(was_training)
    return scores.result(), torch.cat(preds)


def save_test_grid(path: str, images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor) -> None:
    """PNG of three rows: test images, ground-truth masks, predicted masks (at the mask size)."""
    from torch_utils.misc import save_image_grid
    size = masks.shape[-1]
    rgb = images.float()
    if rgb.shape[-1] != size:
        rgb = F.interpolate(rgb, size=(size, size), mode='nearest')
    rows = [rgb.to(torch.uint8)] + [(m.to(torch.uint8) * 255)[:, None].expand(-1, 3, -1, -1) for m in (masks, preds)]
    tiles = torch.cat(rows).permute(0, 2, 3, 1).contiguous().numpy()  # [3·n, R, R, 3], row-major
    save_image_grid(tiles, path, rows=3, cols=len(images))


def append_jsonl(path: str, entry: dict) -> None:
    with dnnlib.naming_file(path), open(path, 'a', encoding='utf-8') as f:   # a full disk names the file
        f.write(dnnlib.json_text(entry) + '\n')


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per split, one column per score."""
    header = f'{"":8s}' + ''.join(f'{name:>13s}' for name in SCORE_NAMES)
    lines = [header] + [f'{split:8s}' + ''.join(f'{scores[name]:13.4f}' for name in SCORE_NAMES)
                        for split, scores in rows.items()]
    return '\n'.join(lines)


def pick_device(name: str | None) -> torch.device:
    """``name`` checked by :func:`dnnlib.parse_device` (None: cuda when available, else cpu)."""
    return torch.device(dnnlib.parse_device(name))


def run_segmentation_eval(cfg: SegmentationConfig, run_dir: str | None = None) -> dict:
    """Train the UNet on the synthetic pairs, keep the best validation snapshot, test it (METHOD.md §8).

    Writes into ``run_dir`` (default: the next ``<outdir>/<NNNNN>-<cfg.run_desc()>``):
    ``options.json``, ``metric-val.jsonl`` (one line per validation), ``unet-best.pt`` (a safe
    snapshot: ``torch_utils.checkpoint.load_snapshot(path)['unet']``), ``unet-last.pt`` (the
    latest validated UNet with Adam's state, for ``resume_from``), ``metric-test_all.jsonl``
    (``test_all``), ``results.json`` and ``seg-test.png``. ``resume_from`` continues a run from
    its iteration (``test_only``: tests that UNet, no training). Returns the content of results.json.
    """
    check_config(cfg)
    start_time = time.time()
    device = pick_device(cfg.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    resumed = None
    if cfg.resume_from is not None:
        resumed = read_unet(unet_path(cfg.resume_from, cfg.test_only), cfg)
        cfg = replace(cfg, base_width=resumed['unet'].base_width)   # the file decides the network
        if not cfg.test_only and int(resumed['data']['iteration']) >= cfg.iters:
            raise dnnlib.UserError(f'--resume-from: the UNet is at iteration {resumed["data"]["iteration"]} already; '
                                   f'raise --iters above it to train on, or pass --test-only to test it')
    check_memory(cfg, device)
    # Every pair is read (and every input error found) before the run folder is made.
    sets = {'test': load_test_set(cfg)} if cfg.test_only else load_sets(cfg)
    run_dir = run_dir or dnnlib.next_run_dir(cfg.outdir or cfg.syn_data, cfg.run_desc())
    os.makedirs(run_dir, exist_ok=False)
    dnnlib.write_bytes_atomic(os.path.join(run_dir, 'options.json'), dnnlib.json_text(
        {**asdict(cfg), 'protocol_details': cfg.protocol_record(), 'run_dir': run_dir}, indent=2).encode())
    print(f'UNet run folder: {run_dir}', flush=True)   # said at once: training may take an hour on a CPU

    if cfg.test_only:
        model = resumed['unet'].to(device)
        best = {'iteration': resumed['data']['iteration'], 'scores': resumed['data'].get('val')}
    else:
        model, best = train_unet(cfg, sets, run_dir, device, resumed, start_time)

    test_scores, preds = evaluate(model, *sets['test'], cfg.eval_batch, device)
    n = min(cfg.grid_size, len(preds))
    save_test_grid(os.path.join(run_dir, 'seg-test.png'), sets['test'][0][:n], sets['test'][1][:n], preds[:n])
    fixed, by_size = fixed_mask_comparison(test_scores, preds, sets['test'][1])
    results = {
        'results': test_scores, 'by_size': by_size, **fixed,
        'best_iteration': best['iteration'], 'val': best['scores'],
        'num_test_images': len(preds), 'num_train_pairs': len(sets['train'][0]) if 'train' in sets else None,
        'num_val_pairs': len(sets['val'][0]) if 'val' in sets else None,
        'real_data': cfg.real_data, 'aug': cfg.aug, 'protocol': cfg.protocol_record(),
        'metrics': {'IoU': 'per-image foreground IoU averaged over images (paper); both empty -> 1',
                    'DICE': 'per-image foreground DICE averaged over images (paper); both empty -> 1',
                    'IoU_dataset': 'foreground IoU of the summed confusion matrix',
                    'mIoU': 'mean of foreground and background dataset-level IoU',
                    'pACC': 'pixel accuracy',
                    'by_size': 'IoU in three equal-count groups of test images by true object area, smallest '
                               'first; area_ratio = predicted / true foreground pixels of the group; '
                               'fixed_mask_IoU = the fixed mask\'s IoU on the group',
                    'fixed_mask': FIXED_MASK_NOTE, 'IoU_gain': 'test IoU minus the fixed mask\'s IoU'},
        'snapshot': unet_path(cfg.resume_from, True) if cfg.test_only else UNET_BEST, 'run_dir': run_dir,
        'total_time': time.time() - start_time, 'timestamp': time.time(),
    }
    results['total_time_str'] = dnnlib.format_time(results['total_time'])
    dnnlib.write_bytes_atomic(os.path.join(run_dir, 'results.json'), dnnlib.json_text(results, indent=2).encode())
    write_original_test_line(run_dir, results)
    return results


def write_original_test_line(run_dir: str, results: dict) -> None:
    """``metric-test.jsonl`` as the original writes it, so that a script written for its runs reads
    ours: one line whose ``results`` hold the original's keys with the original's meanings. Its
    ``IoU`` is the dataset-level score, our ``IoU_dataset``; its ``DRC_IoU`` / ``DRC_DICE`` are the
    paper's per-image scores, our ``IoU`` / ``DICE``."""
    scores = results['results']
    line = {'results': {'pACC': scores['pACC'], 'IoU': scores['IoU_dataset'], 'mIoU': scores['mIoU'],
                        'DRC_IoU': scores['IoU'], 'DRC_DICE': scores['DICE']},
            'snapshot_pth': results['snapshot'], 'total_time': results['total_time'],
            'total_time_str': results['total_time_str'], 'timestamp': results['timestamp']}
    dnnlib.write_bytes_atomic(os.path.join(run_dir, 'metric-test.jsonl'), (dnnlib.json_text(line) + '\n').encode())


FIXED_MASK_NOTE = ('one mask for every test image: the pixel-wise mean of the test masks, thresholded at the '
                   'level in 0.05..0.95 with the best IoU; it reads the test labels, so it bounds any prediction '
                   'that ignores the image')


def fixed_mask_comparison(test_scores: dict, preds: torch.Tensor, masks: torch.Tensor) -> tuple[dict, list[dict]]:
    """The fixed-mask part of results.json, and the by-size groups carrying the fixed mask's IoU.

    ``test_scores``: the UNet's test scores; ``preds``, ``masks``: [N, R, R] in {0, 1}. Returns
    (``{'fixed_mask': scores of :func:`fixed_mask_score` but the mask, 'IoU_gain': IoU minus the
    fixed mask's, 'warnings': [the :func:`fixed_mask_warning`, if it fires]}``, the groups of
    :func:`scores_by_object_size`, each with ``fixed_mask_IoU``).
    """
    fixed = fixed_mask_score(masks)
    by_size = scores_by_object_size(preds, masks)
    fixed_by_size = scores_by_object_size(fixed['mask'].expand_as(masks), masks)
    for group, fixed_group in zip(by_size, fixed_by_size):   # the same grouping: both sort the true areas
        group['fixed_mask_IoU'] = fixed_group['IoU']
    warning = fixed_mask_warning(test_scores['IoU'], fixed['IoU'])
    return {'fixed_mask': {k: v for k, v in fixed.items() if k != 'mask'}, 'IoU_gain': test_scores['IoU'] - fixed['IoU'],
            'warnings': [warning] if warning else []}, by_size


def train_unet(cfg: SegmentationConfig, sets: dict, run_dir: str, device: torch.device, resumed: dict | None,
               start_time: float) -> tuple[torch.nn.Module, dict]:
    """The UNet training of :func:`run_segmentation_eval` (from ``resumed``'s iteration when given).

    Returns the UNet holding the best validation weights and ``{'iteration', 'scores'}`` of them.
    """
    from training.augment import segmentation_augment_pipe
    train_images, train_masks = (t.to(device) for t in sets['train'])

    # The seed fixes the weights, the batch order (own generator) and the augmentation draws. A
    # resumed run reseeds with seed + iteration: repeatable, though not the uninterrupted stream.
    start = int(resumed['data']['iteration']) if resumed is not None else 0   # < cfg.iters: checked by the caller
    torch.manual_seed(cfg.seed)
    batches = batch_indices(len(train_images), cfg.batch, torch.Generator().manual_seed(cfg.seed + start))
    model = (resumed['unet'] if resumed is not None else UNet(base_width=cfg.base_width)).to(device).train()
    model.requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    pipe = segmentation_augment_pipe(cfg.aug)
    pipe = pipe.to(device) if pipe is not None else None
    aug_generator = torch.Generator(device=device).manual_seed(cfg.seed + start)

    best = {'iteration': 0, 'scores': None, 'state': None}
    if resumed is not None:
        if 'optimizer' in resumed['data']:
            optimizer.load_state_dict(resumed['data']['optimizer'])
        for payload in resume_candidates(cfg, resumed):
            best = keep_if_better(best, payload['unet'], payload['data']['iteration'], payload['data']['val'],
                                  cfg, run_dir)
    progress = dnnlib.progress_bar(range(start + 1, cfg.iters + 1), cfg.progress, desc='UNet', unit='it')
    for iteration in progress:
        index = next(batches).to(device)
        images, masks = augment_pairs(pipe, to_float_images(train_images[index]), train_masks[index].long(),
                                      aug_generator)
        loss = F.cross_entropy(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        if evaluation_due(iteration, cfg.val_interval, cfg.iters):
            scores, _ = evaluate(model, *sets['val'], cfg.eval_batch, device)
            append_jsonl(os.path.join(run_dir, 'metric-val.jsonl'), {
                'iteration': iteration, 'results': scores, 'loss': loss.item(),
                'total_time': time.time() - start_time, 'timestamp': time.time()})
            progress.set_postfix(loss=f'{loss.item():.3f}', val_IoU=f'{scores["IoU_dataset"]:.3f}')
            if progress.disable:   # no bar (output not a terminal): one line per validation instead
                print(f'UNet iteration {iteration}/{cfg.iters}: loss {loss.item():.3f}, '
                      f'val IoU {scores["IoU_dataset"]:.3f}', flush=True)
            if cfg.test_all:  # the original's --test-all; selection stays on the validation set
                append_jsonl(os.path.join(run_dir, 'metric-test_all.jsonl'), {
                    'iteration': iteration, 'results': evaluate(model, *sets['test'], cfg.eval_batch, device)[0],
                    'timestamp': time.time()})
            best = keep_if_better(best, model, iteration, scores, cfg, run_dir)
            checkpoint.save_snapshot(os.path.join(run_dir, UNET_LAST), {'unet': model}, data={
                'iteration': iteration, 'val': scores, 'optimizer': optimizer.state_dict(),
                'best_iteration': best['iteration'], 'config': asdict(cfg), 'protocol': cfg.protocol_record()})
    progress.close()

    model.load_state_dict(best['state'])
    return model, {'iteration': best['iteration'], 'scores': best['scores']}


def keep_if_better(best: dict, model: torch.nn.Module, iteration: int, scores: dict, cfg: SegmentationConfig,
                   run_dir: str) -> dict:
    """Model selection by the dataset-level foreground IoU on the synthetic validation set: the new
    best (weights copied, ``unet-best.pt`` written) if ``scores`` beat ``best``, else ``best``."""
    if best['scores'] is not None and scores['IoU_dataset'] <= best['scores']['IoU_dataset']:
        return best
    checkpoint.save_snapshot(os.path.join(run_dir, UNET_BEST), {'unet': model}, data={
        'iteration': iteration, 'val': scores, 'config': asdict(cfg), 'protocol': cfg.protocol_record()})
    return {'iteration': iteration, 'scores': scores,
            'state': copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})}


def resume_candidates(cfg: SegmentationConfig, resumed: dict) -> list[dict]:
    """The UNets a resumed run's selection starts from: the unet-best.pt beside a resumed
    unet-last.pt (when it is the one that file names as best), then the resumed UNet itself."""
    source = unet_path(cfg.resume_from, False)
    sibling = os.path.join(os.path.dirname(source), UNET_BEST)
    if os.path.basename(source) == UNET_LAST and os.path.isfile(sibling):
        payload = read_unet(sibling, cfg)
        if payload['data']['iteration'] == resumed['data'].get('best_iteration'):
            return [payload, resumed]
    return [resumed]


def format_by_size(groups: list[dict]) -> str:
    """One line of :func:`scores_by_object_size`'s groups, e.g.
    ``0.645 / 0.830 / 0.890 (true areas 0.15-0.27 / 0.27-0.38 / 0.38-0.62; predicted/true 1.45 / 1.08 / 0.99;
    fixed mask 0.412 / 0.655 / 0.801)``; the fixed-mask part only for groups that carry it."""
    ious = ' / '.join(f'{g["IoU"]:.3f}' for g in groups)
    areas = ' / '.join(f'{g["area_min"]:.2f}-{g["area_max"]:.2f}' for g in groups)
    ratios = ' / '.join('—' if g['area_ratio'] is None else f'{g["area_ratio"]:.2f}' for g in groups)
    fixed = ('; fixed mask ' + ' / '.join(f'{g["fixed_mask_IoU"]:.3f}' for g in groups)
             if all('fixed_mask_IoU' in g for g in groups) else '')
    return f'{ious} (true areas {areas}; predicted/true {ratios}{fixed})'


def format_fixed_mask(fixed: dict, gain: float) -> str:
    """One line: the gain over the fixed mask and what that mask is (results.json's ``fixed_mask``)."""
    return (f'{gain:+.4f} (fixed mask: IoU {fixed["IoU"]:.4f}, DICE {fixed["DICE"]:.4f}; the mean of the test masks '
            f'>= {fixed["threshold"]:.2f}, covering {fixed["area"]:.2f} of the image)')


def print_results(results: dict, warnings: bool = True) -> None:
    """The table a person reads at the end of a run (``warnings``: and its WARNING lines; the auto
    test repeats them under its own table)."""
    protocol = results['protocol']
    print(f'real test set {results["real_data"]} ({results["num_test_images"]} images), protocol '
          f'{protocol["name"]} (input {protocol["input_resolution"]}, masks {protocol["mask_resolution"]}), '
          f'best validation at iteration {results["best_iteration"]}')
    fixed = results.get('fixed_mask')   # absent from results written before the fixed mask
    print(format_table({'val': results['val'], 'test': results['results'], **({'fixed': fixed} if fixed else {})}))
    if fixed:
        print(f'test IoU gain over the fixed mask: {format_fixed_mask(fixed, results["IoU_gain"])}')
    if results.get('by_size'):
        print(f'test IoU by object size: {format_by_size(results["by_size"])}')
    print(f'IoU/DICE = paper (per-image mean); fixed = one mask for every image, read from the test labels; '
          f'written to {results["run_dir"]}')
    for warning in (results.get('warnings') or []) if warnings else []:
        print(f'WARNING: {warning}')
