"""The ILSGAN training schedule (METHOD.md §3, ORIGINAL.md §5).

:func:`training_loop` runs on every rank: per iteration G-main, (G-reg: a no-op unless
``--pl-weight`` is set), D-main with the estimators' fit, D-reg every 16 iterations, then the EMA
of G and the ADA adjustment;
per tick (``kimg_per_tick`` thousand images) the statistics, and every ``snap`` ticks the image
grids, a network snapshot and the metrics. Only rank 0 writes files. The helpers below do the
steps; the loop itself reads as a list of commented phases.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import numpy as np
import torch

import dnnlib
from torch_utils import checkpoint, distributed, misc, training_stats
from training.loss import ILSLoss, NonFiniteLossError, ils_sigma  # noqa: F401 (re-exported)
from training.networks import sample_eps
from training.resume import find_resume_snapshot, resume_from, rng_state, seed_everything, set_rng_state

# Decoded training images kept in memory per process (training.image_files.Dataset.cache_samples): all of
# a 64 px dataset of 10 000 images (123 MB), the first ~10 000 of a 128 px one.
TRAINING_CACHE_BYTES = 512 * 2 ** 20

# ----------------------------------------------------------------------------------------------
# Set-up helpers.

def build_networks(cfg: dnnlib.EasyDict, device: torch.device) -> dnnlib.EasyDict:
    """G, G_ema, D, the perturbed composition, the augment pipe and the estimators of ``cfg``."""
    build = lambda kwargs: dnnlib.construct_class_by_name(**kwargs).to(device)  # noqa: E731
    nets = dnnlib.EasyDict(G=build(cfg.G_kwargs).train().requires_grad_(False),
                           D=build(cfg.D_kwargs).train().requires_grad_(False),
                           composition=build(cfg.composition_kwargs))
    nets.augment_pipe = None
    if cfg.augment_kwargs is not None:
        nets.augment_pipe = build(cfg.augment_kwargs).train().requires_grad_(False)
        nets.augment_pipe.p.fill_(cfg.p)
    nets.estimators = None
    if cfg.estimator_kwargs is not None:
        nets.estimators = build(cfg.estimator_kwargs).train().requires_grad_(False)
        if device.type == 'cuda' and distributed.get_world_size() > 1:
            nets.estimators = torch.nn.SyncBatchNorm.convert_sync_batchnorm(nets.estimators)
    if uses_channels_last(cfg, device):
        for net in (nets.G, nets.D):
            net.to(memory_format=torch.channels_last)
    for net in (nets.G, nets.D, nets.augment_pipe, nets.estimators):
        if net is not None:
            distributed.broadcast_module_(net)  # every rank starts from rank 0's weights
    nets.G_ema = copy.deepcopy(nets.G).eval()
    return nets


def uses_channels_last(cfg: dnnlib.EasyDict, device: torch.device) -> bool:
    """G, D and the reals in NHWC: the preset's ``channels_last``, or when it is None (auto), on a CPU.

    NHWC is oneDNN's native layout: CPU convolutions skip their reorders (bench_training.py
    --ab=layout). The CUDA kernels take NCHW, so on a GPU it stays off unless asked for.
    """
    choice = cfg.get('channels_last')
    return device.type == 'cpu' if choice is None else bool(choice)


def phase_losses(nets: dnnlib.EasyDict, cfg: dnnlib.EasyDict, compiler: Any = None) -> tuple[ILSLoss, ILSLoss]:
    """(loss of G-main and D-main, loss of G-reg and D-reg) over ``nets``.

    With ``cfg.compile`` G and D run through ``compiler`` (default ``torch.compile``) in G-main and
    D-main. R1 and the path-length penalty differentiate twice, which compiled graphs do not
    support, so D-reg and G-reg keep the eager modules (and G-reg's path-length mean lives in the
    second loss). Both share the modules' parameters: snapshots and optimisers see no difference.
    """
    def make(G: Any, D: Any) -> ILSLoss:
        return ILSLoss(G, D, nets.composition, nets.augment_pipe, nets.estimators, **cfg.loss_kwargs)

    eager = make(nets.G, nets.D)
    if not cfg.get('compile'):
        return eager, eager
    compiler = compiler or torch.compile
    return make(compiler(nets.G), compiler(nets.D)), eager


def build_optimizers(nets: dnnlib.EasyDict, cfg: dnnlib.EasyDict) -> dict[str, torch.optim.Adam]:
    """G's and D's Adam; the learned estimators share D's optimiser."""
    D_params = list(nets.D.parameters()) + (list(nets.estimators.parameters()) if nets.estimators is not None else [])
    return {'G': lazy_adam(list(nets.G.parameters()), cfg, cfg.G_reg_interval),
            'D': lazy_adam(D_params, cfg, cfg.D_reg_interval)}


def lazy_adam(params: list[torch.nn.Parameter], cfg: dnnlib.EasyDict, reg_interval: int) -> torch.optim.Adam:
    """Adam with lazy regularisation's rescaling: lr·c, β^c with c = I / (I + 1) (METHOD §3)."""
    c = reg_interval / (reg_interval + 1)
    return torch.optim.Adam(params, lr=cfg.lrate * c, betas=[beta ** c for beta in cfg.betas], eps=cfg.adam_eps)


def data_stream(dataset: Any, cfg: dnnlib.EasyDict, rank: int, world_size: int, batch_gpu: int,
                batch_idx: int, device: torch.device):
    """Endless real batches [batch_gpu, 3, R, R] in [-1, 1], continuing after ``batch_idx`` batches."""
    sampler = misc.InfiniteSampler(len(dataset), rank, world_size, seed=cfg.seed, start=batch_idx * batch_gpu)
    loader = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=batch_gpu, num_workers=cfg.workers,
                                         pin_memory=device.type == 'cuda',
                                         prefetch_factor=4 if cfg.workers > 0 else None,
                                         generator=torch.Generator().manual_seed(cfg.seed))  # not the global RNG
    layout = torch.channels_last if uses_channels_last(cfg, device) else torch.contiguous_format
    for images, _labels in loader:
        images = images.to(device, non_blocking=True).to(torch.float32) / 127.5 - 1
        yield images.contiguous(memory_format=layout)


# ----------------------------------------------------------------------------------------------
# Per-iteration helpers.

def optimizer_step(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    """Average gradients over ranks, sanitise them, step."""
    misc.average_and_sanitize_gradients_([p for p in params if p.grad is not None])
    opt.step()


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, cur_nimg: int, batch: int, ema_kimg: float,
               ramp: float | None) -> None:
    """θ_ema ← θ + β(θ_ema − θ), β = 0.5^(batch / ema_nimg), ema_nimg ≤ ramp · images seen; buffers copied."""
    ema_nimg = ema_kimg * 1000
    if ramp is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ramp)
    beta = 0.5 ** (batch / max(ema_nimg, 1e-8))
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def sum_over_ranks(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks (reduced on ``device``, returned on the CPU)."""
    if not distributed.is_initialized():
        return tensor
    return distributed.all_reduce_sum_(tensor.to(device)).cpu()


class FiniteCheck:
    """The losses of every iteration since the last :meth:`check`, kept on the device.

    :meth:`observe` costs one stack per iteration and no host synchronisation; :meth:`check`
    (at the tick end, before any snapshot is written) reads them all at once and raises
    :class:`NonFiniteLossError` naming the first loss whose rank-averaged value was NaN/inf and
    the kimg of that iteration.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[list[str], torch.Tensor, int]] = []  # (names, values [len(names)], cur_nimg)

    def observe(self, losses: dict[str, torch.Tensor], cur_nimg: int) -> None:
        self.pending.append((list(losses), torch.stack([v.detach().float() for v in losses.values()]), cur_nimg))

    def check(self, last_snapshot: str | None) -> None:
        """Every rank calls this at the same iteration (it all-reduces)."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        values = distributed.all_reduce_mean_(torch.cat([v for _, v, _ in pending]))
        finite = torch.isfinite(values)
        if bool(finite.all()):
            return
        first = int((~finite).nonzero()[0])
        offset = 0
        for names, _, cur_nimg in pending:
            if first < offset + len(names):
                break
            offset += len(names)
        raise NonFiniteLossError(f'{names[first - offset]} became {values[first].item()} at kimg {cur_nimg / 1000:.3f}; '
                                 f'training stopped, the last good snapshot is {last_snapshot or "none (none written yet)"}')


# ----------------------------------------------------------------------------------------------
# Maintenance helpers (tick end).

@torch.no_grad()
def generate_layers(G: torch.nn.Module, z: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """G's unshifted layers for z [n, z_dim] with constant noise, in chunks; on the CPU."""
    chunks = [G(z[i:i + batch], noise_mode='const') for i in range(0, len(z), batch)]
    return {key: torch.cat([c[key].cpu() for c in chunks]) for key in chunks[0]}


def save_grids(run_dir: str, tag: str, G: torch.nn.Module, grid_z: torch.Tensor, cfg: dnnlib.EasyDict,
               batch: int) -> None:
    """``fakes-<tag>.png`` (composites, grid_rows × grid_cols) and ``layers-<tag>.png``: one row per
    latent and ``layer_groups`` groups of columns bg | fg | mask | m·f | composite."""
    layers = generate_layers(G, grid_z, batch)
    misc.save_image_grid(misc.to_uint8(layers['img']), os.path.join(run_dir, f'fakes-{tag}.png'),
                         cfg.grid_rows, cfg.grid_cols)
    count = cfg.layer_rows * cfg.layer_groups
    columns = [layers['bg'][:count], layers['fg'][:count], layers['mask'][:count] * 2 - 1,
               (layers['mask'] * layers['fg'])[:count], layers['img'][:count]]
    tiles = np.stack([misc.to_uint8(c) for c in columns], axis=1)  # [count, 5, H, W, 3]
    tiles = tiles.reshape(cfg.layer_groups, cfg.layer_rows, *tiles.shape[1:]).transpose(1, 0, 2, 3, 4, 5)
    misc.save_image_grid(tiles.reshape(-1, *tiles.shape[3:]), os.path.join(run_dir, f'layers-{tag}.png'),
                         cfg.layer_rows, 5 * cfg.layer_groups)


def reals_indices(dataset_size: int, cfg: dnnlib.EasyDict) -> list[int]:
    """The grid_rows × grid_cols dataset indices shown in ``reals.png`` (a seeded choice; repeated
    when the set is smaller than the grid)."""
    order = np.random.RandomState(cfg.seed).permutation(dataset_size)
    return [int(order[i % len(order)]) for i in range(cfg.grid_rows * cfg.grid_cols)]


def save_reals(run_dir: str, dataset: Any, cfg: dnnlib.EasyDict) -> None:
    """``reals.png``: grid_rows × grid_cols training images (a seeded choice)."""
    images = np.stack([np.asarray(dataset[i][0]) for i in reals_indices(len(dataset), cfg)]).transpose(0, 2, 3, 1)
    misc.save_image_grid(images, os.path.join(run_dir, 'reals.png'), cfg.grid_rows, cfg.grid_cols)


def snapshot_data(cfg: dnnlib.EasyDict, progress: dict, sigma: float, optimizers: dict, ada: Any,
                  rng_states: list) -> dict:
    """The plain data stored beside the networks in a snapshot."""
    return dict(kimg=progress['cur_nimg'] / 1000, sigma=sigma, resolution=cfg.resolution,
                training_options=json.loads(json.dumps(cfg)), dataset=dict(cfg.dataset_kwargs),
                optimizers={name: opt.state_dict() for name, opt in optimizers.items()},
                ada=ada.state_dict() if ada is not None else None, rng=rng_states,
                num_gpus=len(rng_states), **progress)


def evaluate_metrics(cfg: dnnlib.EasyDict, G_ema: torch.nn.Module, run_dir: str, snapshot_path: str, sigma: float,
                     device: torch.device, rank: int, world_size: int) -> dict[str, float]:
    """Every metric of ``cfg.metrics`` on G_ema, one line each in ``metric-<name>.jsonl``."""
    from metrics import metric_main
    values = {}
    for name in cfg.metrics:
        result = metric_main.calc_metric(name, G_ema, cfg.dataset_kwargs, device, num_gpus=world_size, rank=rank,
                                         detector=cfg.detector, num_gen=cfg.metric_num_gen,
                                         detector_runs_code=cfg.get('detector_runs_code', False),
                                         num_workers=cfg.workers)
        metric_main.report_metric(result, run_dir, snapshot_path, sigma, rank=rank)
        values.update(result['results'])
    return values


def write_failed(err: OSError, last_snapshot: str | None) -> dnnlib.UserError:
    """A write that failed at a tick end, as one line naming the file, saying what to do and what
    survived. Raise it ``from err``: an OSError cause makes the exit code 1 (the machine, not the input)."""
    if last_snapshot is None:
        kept = 'no snapshot was written yet: start the run again'
    else:
        kept = f'the last complete snapshot is {last_snapshot}: continue with --resume={last_snapshot}'
    return dnnlib.UserError(f'training stopped: {dnnlib.os_error_message(err)} ({kept})')


def open_tensorboard(run_dir: str) -> Any:
    """A SummaryWriter when TensorBoard is installed; None otherwise (never a hard dependency)."""
    try:
        import torch.utils.tensorboard as tensorboard
    except ImportError:
        return None
    return tensorboard.SummaryWriter(run_dir)


def write_stats(run_dir: str, stats: dict, writer: Any, kimg: float, metrics: dict[str, float]) -> None:
    """One ``stats.jsonl`` line per tick (+ TensorBoard scalars, global step = kimg)."""
    path = os.path.join(run_dir, 'stats.jsonl')
    with dnnlib.naming_file(path), open(path, 'at') as f:
        f.write(dnnlib.json_text(dict(stats, timestamp=time.time())) + '\n')
    if writer is not None:
        step = int(kimg * 1000)
        for name, value in stats.items():
            writer.add_scalar(name, value['mean'], global_step=step)
        for name, value in metrics.items():
            writer.add_scalar(f'Metrics/{name}', value, global_step=step)
        writer.flush()


def status_line(stats: dict) -> str:
    """The tick's one-line summary."""
    def mean(name: str, fmt: str = '.3f') -> str:
        return format(stats[name]['mean'], fmt) if name in stats else '-'
    return '  '.join([
        f'tick {int(stats["Progress/tick"]["mean"]):<5d}', f'kimg {stats["Progress/kimg"]["mean"]:<9.3f}',
        f'time {dnnlib.format_time(stats["Timing/total_sec"]["mean"]):<12s}',
        f'sec/kimg {mean("Timing/sec_per_kimg", ".2f"):<7s}', f'G {mean("Loss/G/total")}',
        f'adv {mean("Loss/G/adv")}', f'bin {mean("Loss/G/bin")}', f'msize {mean("Loss/G/msize")}',
        *([f'border {mean("Loss/G/border")}'] if 'Loss/G/border' in stats else []), f'ils {mean("Loss/G/ils", ".4f")}', f'D {mean("Loss/D/real")}/{mean("Loss/D/fake")}',
        f'r1 {mean("Loss/r1", ".4f")}', f'augment {mean("Progress/augment", ".3f")}',
        f'sigma {mean("Progress/sigma", "g")}', f'mem {mean("Resources/peak_mem_gb", ".2f")}GB'])


# ----------------------------------------------------------------------------------------------
# The loop.

def training_loop(run_dir: str, cfg: dnnlib.EasyDict, rank: int = 0, world_size: int = 1,
                  device: torch.device | str = 'cpu') -> dict:
    """Train ILSGAN as configured by :func:`training.train_cli.build_training_config`.

    Every rank calls this (``world_size`` processes in the group); each takes ``cfg.batch_gpu`` of
    the global batch, as :func:`training.train_cli.split_batch` derived it for ``world_size``.
    Returns ``dict(cur_nimg, last_snapshot)``.
    Raises :class:`training.loss.NonFiniteLossError` if a loss turns NaN/inf (checked at each tick
    end, before that tick's snapshot).
    """
    device = torch.device(device)
    start_time = time.time()
    writes = rank == 0
    batch_gpu = cfg.batch_gpu   # train_cli.split_batch derived it (and D's group) for this world size
    if batch_gpu * world_size != cfg.batch:
        raise ValueError(f'the config splits batch {cfg.batch} as {batch_gpu} per process, not over {world_size}; '
                         f'derive it with training.train_cli.split_batch')
    seed_everything(cfg.seed * world_size + rank)
    torch.backends.cudnn.benchmark = not cfg.nobench
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(cfg.allow_tf32)
    training_stats.reset()

    # Data and networks.
    from training.dataset import open_dataset
    dataset = open_dataset(**cfg.dataset_kwargs)
    dataset.cache_samples(TRAINING_CACHE_BYTES)
    nets = build_networks(cfg, device)
    G, G_ema, D = nets.G, nets.G_ema, nets.D
    D_params = list(D.parameters()) + (list(nets.estimators.parameters()) if nets.estimators is not None else [])
    optimizers = build_optimizers(nets, cfg)
    loss, loss_reg = phase_losses(nets, cfg)
    ada = None
    if cfg.aug == 'ada':
        from training.augment import AdaptiveAugment
        ada = AdaptiveAugment(target=cfg.target, interval=cfg.ada_interval, ada_kimg=cfg.ada_kimg, batch_size=cfg.batch)
    progress = dict(cur_nimg=0, cur_tick=0, batch_idx=0)
    if cfg.resume:
        snapshot = find_resume_snapshot(cfg.resume)
        progress = resume_from(snapshot, nets, optimizers, ada, rank, world_size)
        if writes:
            print(f'Resuming from {snapshot} at kimg {progress["cur_nimg"] / 1000:.3f}', flush=True)
    cur_nimg, cur_tick, batch_idx = progress['cur_nimg'], progress['cur_tick'], progress['batch_idx']

    # Outputs: reals and the initial grids (fixed latents, constant noise).
    grid_z = torch.randn([cfg.grid_rows * cfg.grid_cols, G.z_dim], generator=torch.Generator().manual_seed(cfg.seed))
    grid_z = grid_z.to(device)
    writer = open_tensorboard(run_dir) if writes else None
    if writes and not cfg.resume:
        save_reals(run_dir, dataset, cfg)
        save_grids(run_dir, 'init', G_ema, grid_z, cfg, batch_gpu)
    reals = data_stream(dataset, cfg, rank, world_size, batch_gpu, batch_idx, device)
    last_snapshot = None
    finite_check = FiniteCheck()
    tick_start_nimg, tick_start_time = cur_nimg, time.time()
    maintenance_time = 0.0
    if writes:
        print(f'Training for {cfg.kimg} kimg on {world_size} process(es), batch {cfg.batch} '
              f'({batch_gpu} per process), {device}...', flush=True)

    while True:
        sigma = ils_sigma(cur_nimg // 1000, cfg.initial_sigma, cfg.sigma, cfg.anti_kimg)
        real_img = next(reals)
        losses: dict[str, torch.Tensor] = {}

        # G-main: adversarial + mask losses on the shifted layers, σ·ILS on the unshifted ones.
        # Fresh z and eps for every phase, as each phase of the original draws its own slice.
        G.requires_grad_(True)
        optimizers['G'].zero_grad(set_to_none=True)
        z, eps = torch.randn([batch_gpu, G.z_dim], device=device), sample_eps(batch_gpu, nets.composition.eps_dim, device)
        losses.update(loss.generator_main(z, eps, sigma))
        G.requires_grad_(False)
        optimizer_step(optimizers['G'], list(G.parameters()))

        # G-reg (every G_reg_interval): ILSGAN has no path-length term (pl_weight 0), so this phase
        # computes and steps nothing; its only trace is the lr/β rescaling of G's Adam in lazy_adam().
        # With --pl-weight > 0: StyleGAN2's path-length penalty on a batch shrunk by pl_batch_shrink.
        if cfg.pl_weight > 0 and batch_idx % cfg.G_reg_interval == 0:
            G.requires_grad_(True)
            optimizers['G'].zero_grad(set_to_none=True)
            z = torch.randn([max(batch_gpu // cfg.pl_batch_shrink, 1), G.z_dim], device=device)
            losses.update(loss_reg.generator_reg(z, gain=cfg.G_reg_interval))
            G.requires_grad_(False)
            optimizer_step(optimizers['G'], list(G.parameters()))

        # D-main: fakes from the frozen G, reals; the learned estimators fit their NLL here too.
        D.requires_grad_(True)
        if nets.estimators is not None:
            nets.estimators.requires_grad_(True)
        optimizers['D'].zero_grad(set_to_none=True)
        z, eps = torch.randn([batch_gpu, G.z_dim], device=device), sample_eps(batch_gpu, nets.composition.eps_dim, device)
        d_losses, real_logits = loss.discriminator_main(real_img, z, eps)
        losses.update(d_losses)
        if ada is not None:
            ada.observe(real_logits)
        if nets.estimators is not None:
            nets.estimators.requires_grad_(False)
        optimizer_step(optimizers['D'], D_params)

        # D-reg (every D_reg_interval): lazy R1 on reals, scaled by the interval.
        if batch_idx % cfg.D_reg_interval == 0:
            optimizers['D'].zero_grad(set_to_none=True)
            r1_losses, real_logits = loss_reg.discriminator_reg(real_img, gain=cfg.D_reg_interval)
            losses.update(r1_losses)
            if ada is not None:
                ada.observe(real_logits)
            optimizer_step(optimizers['D'], D_params)
        D.requires_grad_(False)
        finite_check.observe(losses, cur_nimg)

        # EMA of G, ADA adjustment, counters.
        update_ema(G_ema, G, cur_nimg, cfg.batch, cfg.ema_kimg, cfg.ema_ramp)
        cur_nimg += cfg.batch
        batch_idx += 1
        if ada is not None and ada.due(batch_idx):  # counted first: after iterations 4, 8, …, as the original
            ada.update(nets.augment_pipe, ada.mean_sign(lambda t: sum_over_ranks(t, device)))

        # Tick end? The first tick closes after one iteration, as in StyleGAN2-ADA.
        done = cur_nimg >= cfg.kimg * 1000
        if not done and cur_tick != 0 and cur_nimg < tick_start_nimg + cfg.kimg_per_tick * 1000:
            continue
        finite_check.check(last_snapshot)  # once per tick (a host sync), before any snapshot of this tick
        tick_end_time = time.time()
        rng_at_tick = rng_state()  # maintenance draws random numbers; the training stream must not see it
        tick_kimg = (cur_nimg - tick_start_nimg) / 1000
        training_stats.report('Progress/tick', cur_tick)
        training_stats.report('Progress/kimg', cur_nimg / 1000)
        training_stats.report('Progress/sigma', sigma)
        training_stats.report('Progress/augment', float(nets.augment_pipe.p) if nets.augment_pipe is not None else 0.0)
        training_stats.report('Timing/total_sec', tick_end_time - start_time)
        training_stats.report('Timing/sec_per_tick', tick_end_time - tick_start_time)
        training_stats.report('Timing/sec_per_kimg', (tick_end_time - tick_start_time) / max(tick_kimg, 1e-8))
        training_stats.report('Timing/maintenance_sec', maintenance_time)
        training_stats.report('Resources/peak_mem_gb', misc.peak_memory_gb(device))

        # Snapshot: grids, network file (rank 0), metrics (all ranks). A failed write (disk full,
        # permissions) stops the run with the snapshot it can resume from; the atomic writes leave
        # every earlier file whole.
        try:
            metric_values: dict[str, float] = {}
            progress = dict(cur_nimg=cur_nimg, cur_tick=cur_tick + 1, batch_idx=batch_idx)
            if done or cur_tick % cfg.snap == 0:
                rng_states = distributed.all_gather_object(rng_at_tick)  # every rank's stream, for --resume
                # Named by the images seen: every snapshot keeps its own file, and none is ever replaced.
                snapshot_path = os.path.join(run_dir, checkpoint.snapshot_name(cur_nimg))
                if writes:
                    save_grids(run_dir, checkpoint.snapshot_tag(cur_nimg), G_ema, grid_z, cfg, batch_gpu)
                    modules = dict(G=G, G_ema=G_ema, D=D, augment_pipe=nets.augment_pipe, estimators=nets.estimators)
                    checkpoint.save_snapshot(snapshot_path, modules, snapshot_data(cfg, progress, sigma, optimizers,
                                                                                  ada, rng_states), overwrite=False)
                last_snapshot = snapshot_path
                if cfg.metrics:
                    metric_values = evaluate_metrics(cfg, G_ema, run_dir, snapshot_path, sigma, device, rank, world_size)

            # Statistics: reduce over ranks, status line, stats.jsonl, TensorBoard.
            stats = training_stats.collect(device if device.type == 'cuda' else 'cpu')
            if writes:
                print(status_line(stats) + ''.join(f'  {k} {v:.4g}' for k, v in metric_values.items()), flush=True)
                write_stats(run_dir, stats, writer, cur_nimg / 1000, metric_values)
        except OSError as err:
            raise write_failed(err, last_snapshot) from err
        set_rng_state(rng_at_tick)
        cur_tick += 1
        tick_start_nimg, tick_start_time = cur_nimg, time.time()
        maintenance_time = tick_start_time - tick_end_time
        if done:
            break

    if writer is not None:
        writer.close()
    if writes:
        print(f'Done: {cur_nimg / 1000:.3f} kimg in {dnnlib.format_time(time.time() - start_time)}.', flush=True)
    return dict(cur_nimg=cur_nimg, last_snapshot=last_snapshot)

