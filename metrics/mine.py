"""MINE estimate of the mutual information between generated layers (METHOD.md §9).

A statistics network T(x, y) is trained to maximise the Donsker–Varadhan bound

    Î(x; y) = mean_n T(x_n, y_n) − log mean_n exp T(x_n, y_ρ(n)),

ρ drawn uniformly *with replacement* within the batch (samples of the product of marginals).
:func:`mine_estimate` does this for any pair of tensors (tests feed it Gaussians);
:func:`estimate_layer_mi` runs the two evaluations of a synthetic set:

* ``separate`` — two critics, MI_1 = Î(m·f ; m·b) (visible foreground vs the background it hides)
  and MI_2 = Î((1−m)·b ; (1−m)·f) (visible background vs the hidden foreground), trained jointly
  on the sum of their losses with one optimiser and one plateau scheduler, as the original does;
* ``single`` — one critic, MI = Î(f ; b) on the whole layers.

Bias-corrected gradient (Belghazi et al. 2018, §3.2): the gradient of the log-mean-exp term is
E[e^T ∇T] / E[e^T]; estimated on one batch its denominator makes the gradient biased, so MINE
replaces it with an exponential moving average of the batch means of e^T, ``ma ← (1−r)·ma + r·mean
e^T`` with rate r = ``ma_rate``. Only the gradient changes: the reported numbers are always the
plain DV bound. The default ``ma_rate=0`` is the plain DV gradient of the original code (METHOD.md §9
and ORIGINAL.md §10: no correction); 0.01 follows the MINE paper (an option, README "What differs").

An estimate is reported as *not converged* (:func:`convergence`) when the critics trained for fewer
steps than the paper's 100 000, or when an estimate is negative (a mutual information never is).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

import dnnlib
from torch_utils import checkpoint
from metrics.segmentation import append_jsonl, batch_indices, evaluation_due, pick_device

PairFn = Callable[[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]
LAYER_RESOLUTION = 64           # the side MINE reads the layers at by default, as the original


@checkpoint.rebuildable
class StatisticsNetwork(torch.nn.Module):
    """MINE's T(x, y): an MLP on [flat x, flat y] with one ReLU hidden layer; returns [N]."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 3000) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(x_dim + y_dim, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [N, x_dim], y [N, y_dim] (any trailing shape is flattened) → T [N]."""
        return self.net(torch.cat([x.flatten(1), y.flatten(1)], dim=1))[:, 0]


def log_mean_exp(t: torch.Tensor) -> torch.Tensor:
    """log mean exp over a 1-D tensor, without overflow."""
    return torch.logsumexp(t, dim=0) - math.log(len(t))


def dv_bound(t_joint: torch.Tensor, t_marginal: torch.Tensor) -> torch.Tensor:
    """Donsker–Varadhan lower bound of the MI: mean T(joint) − log mean exp T(marginal) (scalar, nats)."""
    return t_joint.mean() - log_mean_exp(t_marginal)


def critic_terms(critic: StatisticsNetwork, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """T on the joint pairs [N] and on pairs with y resampled with replacement within the batch [N]."""
    rho = torch.randint(len(y), (len(y),), generator=generator).to(y.device)
    return critic(x, y), critic(x, y[rho])


def corrected_loss(t_joint: torch.Tensor, t_marginal: torch.Tensor, log_ma: torch.Tensor | None,
                   ma_rate: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss whose gradient is MINE's (bias-corrected when ``ma_rate`` > 0) and the updated log moving average.

    With log_ma the log of the moving average of mean e^T, the surrogate mean(e^T)/ma has the
    gradient E[e^T ∇T]/ma. Everything stays in log space so that large T cannot overflow.
    """
    if ma_rate <= 0:
        return -dv_bound(t_joint, t_marginal), None
    batch_lme = log_mean_exp(t_marginal)
    current = batch_lme.detach()
    if log_ma is None:
        log_ma = current
    else:
        log_ma = torch.logaddexp(log_ma + math.log1p(-ma_rate), current + math.log(ma_rate))
    return -(t_joint.mean() - torch.exp(batch_lme - log_ma)), log_ma


@dataclass
class MineConfig:
    """Training options of the MINE critics; the defaults are the paper's values (METHOD.md §9)."""
    steps: int = 100_000            # optimiser steps (skipped non-finite batches do not count)
    hidden: int = 3000
    lr: float = 2e-4                # Adam, default betas
    batch: int = 64
    resolution: int = LAYER_RESOLUTION  # the layers are resized to R×R before flattening
    eval_every: int = 400           # 20 ticks of 20 iterations, from the first tick: 20, 420, …; and after the last step
    eval_batch: int = 128
    num_final: int = 20             # the estimate = mean of the last num_final training-set evaluations
    ma_rate: float = 0.0            # 0 = the original's plain DV gradient; 0.01 = MINE's bias correction
    patience: int = 10              # ReduceLROnPlateau(max, ×0.1, threshold 1e-4), in evaluations
    max_skips: int = 100            # consecutive non-finite batches before giving up
    seed: int = 0
    device: str | None = None
    progress: bool = True


PAPER_STEPS = 100_000


def convergence(estimates: dict[str, float], steps: int) -> dict:
    """Whether MINE estimates may be read as a result: ``{'converged': bool, 'why': str}``.

    The rule (README "Evaluation outputs"): not converged when the critics trained for fewer
    steps than the paper's 100 000, or when an estimate is negative (a mutual information never
    is: the critic has not learned the joint yet). ``why`` is '' when converged.
    """
    reasons = []
    if steps < PAPER_STEPS:
        reasons.append(f'{steps} steps, fewer than the paper\'s {PAPER_STEPS}')
    negative = [name for name, value in estimates.items() if value < 0]
    if negative:
        reasons.append(f'{", ".join(negative)} negative (a mutual information is never negative)')
    return {'converged': not reasons, 'why': '; '.join(reasons)}


@torch.no_grad()
def evaluate_bounds(critics: list[StatisticsNetwork], pairs: PairFn, num: int, cfg: MineConfig,
                    generator: torch.Generator, device: torch.device) -> list[float]:
    """DV bound of each critic over all ``num`` samples in order, batch by batch (fresh ρ each), averaged."""
    for critic in critics:
        critic.eval()
    sums, count = [0.0] * len(critics), 0
    for start in range(0, num, cfg.eval_batch):
        index = torch.arange(start, min(start + cfg.eval_batch, num), device=device)
        for k, (critic, (x, y)) in enumerate(zip(critics, pairs(index))):
            sums[k] += float(dv_bound(*critic_terms(critic, x, y, generator)))
        count += 1
    for critic in critics:
        critic.train()
    return [s / count for s in sums]


def train_critics(pairs: PairFn, num: int, dims: list[tuple[int, int]], cfg: MineConfig,
                  names: list[str], curve_path: str | None = None) -> dict:
    """Train one critic per pair of ``pairs(index)`` jointly (summed losses, one Adam, one scheduler).

    ``pairs`` maps indices [B] (on the device) to a list of (x [B, Dx], y [B, Dy]); ``dims`` gives
    (Dx, Dy) per pair. Returns ``{'final': {name: estimate}, 'curve': [{'iteration', 'lr', name: Î}],
    'lr': final lr, 'skipped': count}``; each evaluation is also appended to ``curve_path``.
    """
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    critics = [StatisticsNetwork(dx, dy, cfg.hidden).to(device) for dx, dy in dims]
    optimizer = torch.optim.Adam([p for c in critics for p in c.parameters()], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode='max', factor=0.1,
                                                           patience=cfg.patience, threshold=1e-4)
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = batch_indices(num, cfg.batch, generator)
    log_mas: list[torch.Tensor | None] = [None] * len(critics)
    curve, skipped, skips_in_a_row, step = [], 0, 0, 0

    progress = dnnlib.progress_bar(None, cfg.progress, total=cfg.steps, desc='MINE', unit='it')
    while step < cfg.steps:
        batch = pairs(next(batches).to(device))
        losses, bounds, new_mas = [], [], []
        for critic, (x, y), log_ma in zip(critics, batch, log_mas):
            t_joint, t_marginal = critic_terms(critic, x, y, generator)
            loss, log_ma = corrected_loss(t_joint, t_marginal, log_ma, cfg.ma_rate)
            losses.append(loss)
            new_mas.append(log_ma)
            bounds.append(dv_bound(t_joint.detach(), t_marginal.detach()))
        if not all(torch.isfinite(b) and torch.isfinite(l) for b, l in zip(bounds, losses)):
            # A diverged batch (exp overflow) would poison Adam's moments: skip it, as the original does.
            skipped += 1
            skips_in_a_row += 1
            if skips_in_a_row > cfg.max_skips:
                raise dnnlib.UserError(f'the MINE bound was non-finite for {skips_in_a_row} batches in a row; '
                                       f'lower the learning rate (--lr of eval_MI_MINE.py, now {cfg.lr})')
            continue
        skips_in_a_row = 0
        optimizer.zero_grad(set_to_none=True)
        sum(losses).backward()
        optimizer.step()
        log_mas = new_mas
        step += 1
        progress.update(1)

        if evaluation_due(step, cfg.eval_every, cfg.steps):
            values = evaluate_bounds(critics, pairs, num, cfg, generator, device)
            scheduler.step(sum(values))
            entry = {'iteration': step, 'lr': optimizer.param_groups[0]['lr'], **dict(zip(names, values))}
            curve.append(entry)
            if curve_path is not None:
                append_jsonl(curve_path, {**entry, 'timestamp': time.time()})
            progress.set_postfix({name: f'{v:.4f}' for name, v in zip(names, values)})
    progress.close()

    last = curve[-cfg.num_final:]
    final = {name: sum(e[name] for e in last) / len(last) for name in names}
    return {'final': final, 'curve': curve, 'lr': optimizer.param_groups[0]['lr'], 'skipped': skipped}


def mine_estimate(x: torch.Tensor, y: torch.Tensor, steps: int = 100_000, **options) -> dict:
    """MINE estimate of I(x; y) in nats from paired samples x [N, Dx], y [N, Dy].

    ``options`` are further :class:`MineConfig` fields (hidden, lr, batch, eval_every, ma_rate,
    seed, ...). Returns ``{'final': mean of the last num_final evaluations, 'curve':
    [{'iteration', 'lr', 'MI'}], 'lr': final lr, 'skipped': skipped batches}``.
    """
    cfg = MineConfig(steps=steps, **options)
    device = pick_device(cfg.device)
    x, y = x.flatten(1).float().to(device), y.flatten(1).float().to(device)
    if len(x) != len(y):
        raise ValueError(f'x and y hold different numbers of samples: {len(x)} and {len(y)}')
    result = train_critics(lambda index: [(x[index], y[index])], len(x), [(x.shape[1], y.shape[1])], cfg, ['MI'])
    return {**result, 'final': result['final']['MI']}


# ----------------------------------------------------------------------------------------------
# The layers of a synthetic set.

def load_layers(path: str, resolution: int = LAYER_RESOLUTION, num_workers: int = 3,
                progress: bool = True, allow_partial: bool = False) -> dict[str, torch.Tensor]:
    """fg, bg: uint8 [N, 3, R, R]; mask: uint8 [N, R, R] (channel 0 of the mask PNG, soft, 0..255).

    A generated set holding fewer samples than its meta.json's n is refused unless
    ``allow_partial`` (then the samples present in all three folders are read).
    """
    if not os.path.isdir(path):
        raise dnnlib.UserError(f'synthetic data folder not found: {path}')
    from training.dataset import open_dataset
    from training.image_files import open_image_folder
    from metrics.segmentation import load_pairs
    from training.sample_set import complete_samples
    for name in ('fg', 'bg', 'mask'):
        if not os.path.isdir(os.path.join(path, name)):
            raise dnnlib.UserError(f'{path} has no {name}/ folder: MINE needs the fg/, bg/ and mask/ layers '
                                   f'written by generate_segmentation_samples.py')
    samples = complete_samples(path, ('fg', 'bg', 'mask'), allow_partial, warn=True)
    datasets = {}
    for name in ('fg', 'bg', 'mask'):
        folder = os.path.join(path, name)
        datasets[name] = (open_dataset(folder, split='train', resolution=resolution) if samples is None else
                          open_image_folder(folder, resolution, names=samples))
    # Layers are paired by file name: the three folders must list the same names.
    names = {name: [os.path.relpath(r.image, os.path.join(path, name)) for r in ds.records]
             for name, ds in datasets.items()}
    for name in ('bg', 'mask'):
        if names[name] != names['fg']:
            odd = sorted(set(names[name]) ^ set(names['fg']))
            raise dnnlib.UserError(f'{path}: fg/ and {name}/ hold different files'
                                   + (f' (e.g. {odd[0]})' if odd else '') + '; regenerate the synthetic set')
    layers = {name: load_pairs(ds, num_workers, f'{name} layer', progress)[0] for name, ds in datasets.items()}
    layers['mask'] = layers['mask'][:, 0]
    return layers


def layer_pairs(layers: dict[str, torch.Tensor], mode: str) -> tuple[PairFn, list[str]]:
    """The (x, y) pairs of a mode as a function of sample indices, and their names."""
    def decode(index):
        f = layers['fg'][index].float() / 127.5 - 1
        b = layers['bg'][index].float() / 127.5 - 1
        m = layers['mask'][index][:, None].float() / 255
        return f, b, m

    if mode == 'separate':
        def pairs(index):
            f, b, m = decode(index)
            return [((m * f).flatten(1), (m * b).flatten(1)), (((1 - m) * b).flatten(1), ((1 - m) * f).flatten(1))]
        return pairs, ['MI_1', 'MI_2']
    if mode == 'single':
        def pairs(index):
            f, b, _ = decode(index)
            return [(f.flatten(1), b.flatten(1))]
        return pairs, ['MI']
    raise ValueError(f'unknown MINE mode {mode!r}')


MODES = {'both': ('separate', 'single'), 'separate': ('separate',), 'single': ('single',)}


def mine_bytes(hidden: int, batch: int, resolution: int, num_samples: int = 0, critics: int = 2) -> int:
    """Memory of a MINE run: ``critics`` critics of 6 R² inputs (two RGB layers) and ``hidden``
    units trained with Adam, one batch of joint and marginal inputs through them, and the
    ``num_samples`` fg, bg and mask layers kept as uint8 (7 R² bytes each)."""
    from torch_utils import memory
    inputs = 6 * resolution * resolution
    weights = critics * ((inputs + 1) * hidden + hidden + 1)
    maps = critics * 2 * batch * (inputs + hidden)     # joint and marginal passes
    return memory.TRAINED_PARAMETER_BYTES * weights + 2 * memory.FLOAT_BYTES * maps + 7 * inputs // 6 * num_samples


def check_memory(cfg: MineConfig, mode: str, device: torch.device | str, num_samples: int = 0,
                 what: str | None = None) -> None:
    """UserError naming --hidden, --batch and --resolution when the MINE critics of ``mode`` and
    the layers cannot fit in ``device``'s free memory, before any layer is read or folder made."""
    from torch_utils import memory
    critics = 2 if 'separate' in MODES.get(mode, ('separate',)) else 1
    memory.check_fits(mine_bytes(cfg.hidden, max(cfg.batch, cfg.eval_batch), cfg.resolution, num_samples, critics),
                      what or f'MINE at --hidden={cfg.hidden}, --batch={cfg.batch} and --resolution={cfg.resolution}'
                      + (f' on {num_samples} samples' if num_samples else ''), device,
                      advice='choose a smaller --hidden or --resolution')


def _count_files(folder: str) -> int:
    try:
        return sum(1 for _ in os.scandir(folder))
    except OSError:
        return 0   # a missing folder is load_layers' error to report


def estimate_layer_mi(path: str, cfg: MineConfig, mode: str = 'both', num_workers: int = 3,
                      outdir: str | None = None, allow_partial: bool = False) -> dict:
    """Run the MINE evaluations of a synthetic set and write ``<outdir>/<NNNNN>/``.

    ``outdir`` defaults to ``<path>/MI-estimation-MINE``. The run folder holds ``options.json``,
    ``metric-mine-<mode>.jsonl`` (every evaluation as it happens), ``curve.json`` (all curves),
    ``curve.png`` and ``results.json`` = {"MI_1", "MI_2", "MI"} (those of the modes run) with
    "converged" and "why" (:func:`convergence`).
    """
    if mode not in MODES:
        raise dnnlib.UserError(f'--mode={mode!r} is not one of {", ".join(MODES)}')
    start_time = time.time()
    device = pick_device(cfg.device)
    check_memory(cfg, mode, device, num_samples=_count_files(os.path.join(path, 'fg')))
    layers = {k: v.to(device) for k, v in load_layers(path, cfg.resolution, num_workers=num_workers, progress=cfg.progress,
                                                          allow_partial=allow_partial).items()}
    outdir = outdir or os.path.join(path, 'MI-estimation-MINE')
    run_dir = dnnlib.next_run_dir(outdir, '').rstrip('-')
    os.makedirs(run_dir, exist_ok=False)
    dnnlib.write_bytes_atomic(os.path.join(run_dir, 'options.json'), dnnlib.json_text(
        {'path': path, 'mode': mode, 'num_samples': len(layers['fg']), **asdict(cfg)}, indent=2).encode())

    results, curves, details = {}, {}, {}
    for run in MODES[mode]:
        pairs, names = layer_pairs(layers, run)
        dims = [(x.shape[1], y.shape[1]) for x, y in pairs(torch.arange(1, device=device))]
        out = train_critics(pairs, len(layers['fg']), dims, cfg, names,
                            curve_path=os.path.join(run_dir, f'metric-mine-{run}.jsonl'))
        results.update(out['final'])
        curves[run] = curve = out['curve']
        details[run] = {'final_lr': out['lr'], 'skipped_batches': out['skipped']}
    dnnlib.write_bytes_atomic(os.path.join(run_dir, 'curve.json'), dnnlib.json_text(curves, indent=2).encode())
    plot_curves(os.path.join(run_dir, 'curve.png'), curves)
    summary = {**results, **convergence(results, cfg.steps), 'details': details, 'num_samples': len(layers['fg']), 'run_dir': run_dir,
               'estimate': f'mean of the last {min(cfg.num_final, len(curve))} training-set evaluations (nats)',
               'total_time': time.time() - start_time}
    dnnlib.write_bytes_atomic(os.path.join(run_dir, 'results.json'), dnnlib.json_text(summary, indent=2).encode())
    write_original_results(run_dir, results)
    return summary


# The original's result files: <run>/MI_estimation_results.json, its keys → ours.
ORIGINAL_RESULT_KEYS = {'separate': {'ave_MI_train1': 'MI_1', 'ave_MI_train2': 'MI_2'},
                        'single': {'ave_MI_train': 'MI'}}


def write_original_results(run_dir: str, results: dict) -> None:
    """``separate/`` and ``single/MI_estimation_results.json`` as the original writes them (for the
    modes run), so that a script written for its runs reads ours: the same numbers as our MI_1,
    MI_2 and MI under the original's keys."""
    for run, keys in ORIGINAL_RESULT_KEYS.items():
        if all(ours in results for ours in keys.values()):
            os.makedirs(os.path.join(run_dir, run), exist_ok=True)
            dnnlib.write_bytes_atomic(os.path.join(run_dir, run, 'MI_estimation_results.json'),
                                      dnnlib.json_text({key: results[ours] for key, ours in keys.items()}).encode())


# ----------------------------------------------------------------------------------------------
# The curve plot, drawn with PIL (no plotting library).

PLOT_COLOURS = {'MI_1': (31, 119, 180), 'MI_2': (255, 127, 14), 'MI': (44, 160, 44)}


def plot_curves(path: str, curves: dict[str, list[dict]], size: tuple[int, int] = (640, 400)) -> None:
    """Line plot of every estimate against the iteration, one colour per name, with a legend."""
    from PIL import Image, ImageDraw
    width, height = size
    left, right, top, bottom = 60, 20, 20, 40
    series = {name: [(e['iteration'], e[name]) for e in curve]
              for curve in curves.values() for name in curve[0] if name in PLOT_COLOURS} if curves else {}
    points = [p for s in series.values() for p in s]
    image = Image.new('RGB', size, 'white')
    draw = ImageDraw.Draw(image)
    if points:
        x_max = max(p[0] for p in points) or 1
        y_lo, y_hi = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
        y_hi = y_hi if y_hi > y_lo else y_lo + 1
        to_px = lambda it, v: (left + (width - left - right) * it / x_max,
                               height - bottom - (height - top - bottom) * (v - y_lo) / (y_hi - y_lo))
        draw.line([to_px(0, y_lo), to_px(x_max, y_lo)], fill='black')
        draw.line([to_px(0, y_lo), to_px(0, y_hi)], fill='black')
        if y_lo < 0:
            draw.line([to_px(0, 0), to_px(x_max, 0)], fill=(200, 200, 200))
        for value in (y_lo, y_hi):
            draw.text((4, to_px(0, value)[1] - 6), f'{value:.3g}', fill='black')
        draw.text((width - right - 80, height - bottom + 8), f'iter {x_max}', fill='black')
        draw.text((left, height - bottom + 22), 'MINE estimate (nats) vs iteration', fill='black')
        for k, (name, s) in enumerate(series.items()):
            colour = PLOT_COLOURS[name]
            if len(s) > 1:
                draw.line([to_px(*p) for p in s], fill=colour, width=2)
            else:
                x0, y0 = to_px(*s[0])
                draw.ellipse([x0 - 2, y0 - 2, x0 + 2, y0 + 2], fill=colour)
            draw.text((left + 10 + 70 * k, top), name, fill=colour)
    image.save(path)
