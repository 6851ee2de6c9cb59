"""Training speed of the presets: images/s and sec/kimg of the G-main, D-main and lazy D-reg phases.

    python bench/bench_training.py                        # cpu preset + ILS_predL/64 + ILS/128, batch 8 and 32
    python bench/bench_training.py --cfg=ILS_predL --batch=32 --iters=20 --device=cuda

It times the loss phases exactly as the training loop runs them (fresh z and shifts per phase,
ADA at p = 0.2 so the augmentation is exercised, R1 counted as 1/16 of an iteration) on random
"real" images, so no dataset is read. Prints one line per configuration and, with --json, the
figures as JSON. A figure, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch_utils import misc  # noqa: E402
from training import train_cli  # noqa: E402
from training.loss import ILSLoss  # noqa: E402
from training.networks import sample_eps  # noqa: E402
from training.training_loop import build_networks, lazy_adam, optimizer_step  # noqa: E402

DEFAULT_CASES = [('cpu', 64, 16), ('ILS_predL', 64, 8), ('ILS_predL', 64, 32), ('ILS', 128, 8), ('ILS', 128, 32)]


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_phases(cfg_name: str, script_resolution: int, batch: int, iters: int, device: torch.device,
                fp32: bool, layout: str = 'preset') -> dict:
    """Seconds per call of each phase (median of ``iters`` after one warm-up) and derived rates."""
    with tempfile.TemporaryDirectory() as outdir:
        cfg = train_cli.build_training_config(outdir=outdir, data='synthetic', resolution=script_resolution,
                                              cfg=cfg_name, batch=batch, metrics='none', fp32=fp32)
    if layout != 'preset':
        cfg.channels_last = layout == 'nhwc'
    nets = build_networks(cfg, device)
    if nets.augment_pipe is not None:
        nets.augment_pipe.p.fill_(0.2)
    G, D = nets.G, nets.D
    loss = ILSLoss(G, D, nets.composition, nets.augment_pipe, nets.estimators, **cfg.loss_kwargs)
    opt_G, opt_D = lazy_adam(list(G.parameters()), cfg, 4), lazy_adam(list(D.parameters()), cfg, 16)
    reals = torch.rand([batch, 3, cfg.resolution, cfg.resolution], device=device) * 2 - 1
    if cfg.channels_last:
        reals = reals.contiguous(memory_format=torch.channels_last)   # as training_loop.data_stream

    def latents():
        return torch.randn([batch, G.z_dim], device=device), sample_eps(batch, nets.composition.eps_dim, device)

    def g_main():
        G.requires_grad_(True)
        opt_G.zero_grad(set_to_none=True)
        loss.generator_main(*latents(), sigma=1.0)
        G.requires_grad_(False)
        optimizer_step(opt_G, list(G.parameters()))

    def d_main():
        D.requires_grad_(True)
        opt_D.zero_grad(set_to_none=True)
        loss.discriminator_main(reals, *latents())
        optimizer_step(opt_D, list(D.parameters()))
        D.requires_grad_(False)

    def d_reg():
        D.requires_grad_(True)
        opt_D.zero_grad(set_to_none=True)
        loss.discriminator_reg(reals, gain=cfg.D_reg_interval)
        optimizer_step(opt_D, list(D.parameters()))
        D.requires_grad_(False)

    seconds = {}
    for name, phase in (('G_main', g_main), ('D_main', d_main), ('D_reg', d_reg)):
        phase()  # warm-up (cuDNN autotuning, allocator)
        times = []
        for _ in range(iters):
            _sync(device)
            start = time.perf_counter()
            phase()
            _sync(device)
            times.append(time.perf_counter() - start)
        seconds[name] = sorted(times)[len(times) // 2]
    per_iter = seconds['G_main'] + seconds['D_main'] + seconds['D_reg'] / cfg.D_reg_interval
    return dict(cfg=cfg_name, resolution=cfg.resolution, batch=batch, device=str(device), fp32=fp32,
                layout='nhwc' if cfg.channels_last else 'nchw',
                threads=torch.get_num_threads(), **{f'sec_{k}': round(v, 4) for k, v in seconds.items()},
                sec_per_iter=round(per_iter, 4), images_per_sec=round(batch / per_iter, 2),
                sec_per_kimg=round(1000 / batch * per_iter, 2), peak_mem_gb=round(misc.peak_memory_gb(device), 3))


@click.command()
@click.option('--cfg', default=None, help='One preset (default: a set of presets and batches).')
@click.option('--resolution', type=click.Choice(['64', '128']), default='64', help='Script of --cfg.')
@click.option('--batch', type=int, default=None, help='Batch of --cfg [default: 8 and 32].')
@click.option('--iters', type=click.IntRange(min=1), default=3, show_default=True, help='Timed calls per phase.')
@click.option('--device', default=None, help='torch device [default: cuda if available, else cpu].')
@click.option('--fp32', is_flag=True, help='Disable fp16 layers (GPU only; the CPU always runs fp32).')
@click.option('--layout', type=click.Choice(['preset', 'nchw', 'nhwc']), default='preset', show_default=True,
              help="Memory layout of G and D: the preset's channels_last field, or forced.")
@click.option('--threads', type=click.IntRange(min=1), default=None, help='torch CPU threads [default: torch\'s].')
@click.option('--json', 'as_json', is_flag=True, help='Print the figures as one JSON list at the end.')
def main(cfg, resolution, batch, iters, device, fp32, layout, threads, as_json):
    """Print training images/s and sec/kimg per preset and batch."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    cases = DEFAULT_CASES if cfg is None else [(cfg, int(resolution), b) for b in ([batch] if batch else [8, 32])]
    rows = []
    for name, script_res, b in cases:
        row = time_phases(name, script_res, b, iters, device, fp32, layout)
        rows.append(row)
        print(f'{name:10s} R={row["resolution"]:<4d} batch {b:<3d} {device.type:4s}  '
              f'{row["images_per_sec"]:8.2f} img/s  {row["sec_per_kimg"]:9.2f} sec/kimg  '
              f'(G {row["sec_G_main"]:.3f}s, D {row["sec_D_main"]:.3f}s, R1 {row["sec_D_reg"]:.3f}s per call; '
              f'{row["threads"]} threads, {row["layout"]})', flush=True)
    if as_json:
        print(json.dumps(rows, indent=2))


if __name__ == '__main__':
    main()
