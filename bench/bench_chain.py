"""Speed of the post-training stages: generation img/s, UNet iterations/s, MINE steps/s, wall times, peak memory.

    python bench/bench_chain.py                                   # the auto test's (paper) sizes, ILS_predL at 64
    python bench/bench_chain.py --preset-sizes=cpu --cfg=cpu      # the cpu preset's auto test sizes
    python bench/bench_chain.py --network=RUN/network-snapshot-000030.pt --stages=gen,seg
    python bench/bench_chain.py --preset-sizes=cpu --cfg=cpu --n=64 --seg-iters=4 --mine-steps=4   # smoke

It runs the library functions the auto test runs (metrics/auto_test.py), in a temporary folder:
``generate_from_network`` (a snapshot given with --network, else a freshly initialised generator
of --cfg built as bench_training.py builds it and saved as a snapshot), ``run_segmentation_eval``
(tested on the test split of --real-data) and ``estimate_layer_mi`` (both modes). Their own
output is silenced; one line per stage is printed and, with --json, the figures as JSON.

What each figure covers:

* generation img/s: ``n`` / the generation's own clock (5 PNG layers per sample written; the
  snapshot load is excluded, and a small warm-up run first builds the CUDA kernels);
* UNet it/s: iterations between the first and last validation (they exclude set loading and
  cuDNN tuning, include the validations between); with one validation, iters / the whole run;
* MINE steps/s: per mode, the same from the evaluation timestamps of ``metric-mine-<mode>.jsonl``;
* wall: the whole call (loading, validation, test evaluation included);
* peak memory: ``torch_utils.misc.peak_memory_gb`` after the stage (CUDA: reset before each
  stage; CPU: the process's resident peak so far, so it only grows).

A figure, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Callable

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402
from metrics import generate, mine, segmentation  # noqa: E402
from metrics.auto_test import AutoTestSizes  # noqa: E402
from torch_utils import checkpoint, misc  # noqa: E402
from training import presets, train_cli  # noqa: E402
from training.training_loop import build_networks  # noqa: E402

STAGES = ('gen', 'seg', 'mine')
WARMUP_SAMPLES = 64


def fresh_snapshot(cfg_name: str, script_resolution: int, device: torch.device, fp32: bool, outdir: str) -> str:
    """Save a freshly initialised G/G_ema of a preset as ``outdir/network-snapshot-000000.pt``."""
    cfg = train_cli.build_training_config(outdir=outdir, data='synthetic', resolution=script_resolution,
                                          cfg=cfg_name, metrics='none', fp32=fp32)
    nets = build_networks(cfg, device)
    path = os.path.join(outdir, 'network-snapshot-000000.pt')
    checkpoint.save_snapshot(path, {'G': nets.G, 'G_ema': nets.G_ema}, data=dict(kimg=0, resolution=cfg.resolution))
    return path


def chain_sizes(preset_sizes: str | None, **overrides: int | None) -> AutoTestSizes:
    """The auto test's sizes (the paper's, or a 64 px preset's ``auto_test_sizes``) with overrides."""
    values = presets.resolve_preset(preset_sizes, 64).auto_test_sizes if preset_sizes else {}
    sizes = asdict(AutoTestSizes.from_dict(values))
    sizes.update({k: v for k, v in overrides.items() if v is not None})
    return AutoTestSizes(**sizes)


def rate(entries: list[dict], steps: int, seconds: float) -> float:
    """Iterations per second between the first and last logged evaluation, else ``steps / seconds``."""
    if len(entries) >= 2 and entries[-1]['timestamp'] > entries[0]['timestamp']:
        first, last = entries[0], entries[-1]
        return (last['iteration'] - first['iteration']) / (last['timestamp'] - first['timestamp'])
    return steps / seconds


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def stage(name: str, device: torch.device):
    """Silence the library's own lines; reset the CUDA peak; yield the stage's figures (wall and peak added)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    figures: dict = {'stage': name, 'device': str(device), 'threads': torch.get_num_threads()}
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        yield figures
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    figures.update(wall_s=round(time.perf_counter() - start, 2), peak_mem_gb=round(misc.peak_memory_gb(device), 3))


def print_row(head: str, figures: dict) -> None:
    print(f'{head}  {figures["wall_s"]:8.2f} s wall  peak {figures["peak_mem_gb"]:.3f} GB', flush=True)


def run_chain(sizes: AutoTestSizes, device: torch.device, network: str | None = None, cfg: str = 'ILS_predL',
              resolution: int = 64, fp32: bool = False, scale: int | None = None, real_data: str | None = 'synthetic',
              stages: tuple[str, ...] = STAGES, workers: int = 3, echo: bool = True,
              on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Run generation (always) and the wanted post-training stages at ``sizes`` in a temporary
    folder; one row of figures per wanted stage (printed when ``echo``, passed to ``on_row`` as
    soon as it is measured). ``real_data=None`` tests
    the UNet on the generated samples themselves (a smoke run with nothing else to read)."""
    rows: list[dict] = []

    def add(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    with tempfile.TemporaryDirectory(prefix='bench_chain-') as tmp:
        snapshot = network or fresh_snapshot(cfg, resolution, device, fp32, tmp)
        syn_dir = os.path.join(tmp, 'synthetic_data')
        with contextlib.redirect_stdout(io.StringIO()):
            generate.generate_from_network(snapshot, n=min(WARMUP_SAMPLES, sizes.n),
                                           outdir=os.path.join(tmp, 'warm-up'), latest=True, device=str(device),
                                           progress=False)
        with stage('gen', device) as gen:
            _, meta = generate.generate_from_network(snapshot, n=sizes.n, outdir=syn_dir, latest=True,
                                                     device=str(device), progress=False)
        scale = scale or meta['resolution']
        if 'gen' in stages:
            gen.update(n=sizes.n, resolution=meta['resolution'],
                       images_per_sec=round(sizes.n / max(meta['seconds'], 0.01), 2))
            add(gen)
            if echo:
                print_row(f'generate  R={gen["resolution"]:<4d} n {sizes.n:<6d} {device.type:4s} '
                          f'{gen["images_per_sec"]:10.2f} img/s', gen)

        if 'seg' in stages:
            seg_cfg = segmentation.SegmentationConfig(
                syn_data=syn_dir, real_data=real_data or syn_dir, aug='color', protocol='scale', scale=scale,
                iters=sizes.seg_iters, batch=sizes.seg_batch, base_width=sizes.seg_base_width,
                val_interval=min(sizes.seg_val_interval, sizes.seg_iters), num_workers=workers,
                outdir=os.path.join(tmp, 'seg'), device=str(device), progress=False)
            with stage('seg', device) as seg:
                result = segmentation.run_segmentation_eval(seg_cfg)
            vals = read_jsonl(os.path.join(result['run_dir'], 'metric-val.jsonl'))
            seg.update(iters=sizes.seg_iters, batch=sizes.seg_batch, base_width=sizes.seg_base_width,
                       scale=scale, iters_per_sec=round(rate(vals, sizes.seg_iters, result['total_time']), 2),
                       IoU=round(result['results']['IoU'], 4))
            add(seg)
            if echo:
                print_row(f'UNet      R={scale:<4d} iters {sizes.seg_iters} batch {sizes.seg_batch} '
                          f'width {sizes.seg_base_width}  {seg["iters_per_sec"]:8.2f} it/s', seg)

        if 'mine' in stages:
            mine_cfg = mine.MineConfig(steps=sizes.mine_steps, hidden=sizes.mine_hidden, batch=sizes.mine_batch,
                                       eval_every=min(sizes.mine_eval_every, sizes.mine_steps), device=str(device),
                                       progress=False)
            with stage('mine', device) as mi:
                result = mine.estimate_layer_mi(syn_dir, mine_cfg, mode='both', num_workers=workers,
                                                outdir=os.path.join(tmp, 'mine'))
            per_mode = {mode: round(rate(read_jsonl(os.path.join(result['run_dir'], f'metric-mine-{mode}.jsonl')),
                                         sizes.mine_steps, result['total_time'] / 2), 2)
                        for mode in ('separate', 'single')}
            mi.update(steps=sizes.mine_steps, hidden=sizes.mine_hidden, batch=sizes.mine_batch,
                      steps_per_sec=per_mode)
            add(mi)
            if echo:
                print_row(f'MINE      steps {sizes.mine_steps} hidden {sizes.mine_hidden} batch {sizes.mine_batch}  '
                          f'{per_mode["separate"]:8.2f} steps/s (separate, 2 critics)  '
                          f'{per_mode["single"]:8.2f} steps/s (single)', mi)
    return rows


@click.command()
@click.option('--network', default=None,
              help='Snapshot file or run directory [default: a fresh generator of --cfg].')
@click.option('--cfg', default='ILS_predL', show_default=True, help='Preset of the fresh generator.')
@click.option('--resolution', type=click.Choice(['64', '128']), default='64', show_default=True,
              help='Script of --cfg.')
@click.option('--preset-sizes', default=None, metavar='PRESET',
              help="Stage sizes from this 64 px preset's auto_test_sizes (e.g. cpu) [default: the paper's].")
@click.option('--n', type=click.IntRange(1, dnnlib.MAX_COUNT), default=None, help='Generated samples [default: of the sizes].')
@click.option('--seg-iters', type=click.IntRange(1, dnnlib.MAX_COUNT), default=None, help='UNet iterations [default: of the sizes].')
@click.option('--seg-batch', type=click.IntRange(1, dnnlib.MAX_BATCH), default=None, help='UNet batch [default: of the sizes].')
@click.option('--seg-base-width', type=click.IntRange(1, dnnlib.MAX_SIDE), default=None, help='UNet width [default: of the sizes].')
@click.option('--scale', type=click.IntRange(16, dnnlib.MAX_SIDE), default=None, help="UNet resolution [default: the generator's].")
@click.option('--mine-steps', type=click.IntRange(1, dnnlib.MAX_COUNT), default=None,
              help='MINE steps per mode [default: of the sizes].')
@click.option('--mine-hidden', type=click.IntRange(1, dnnlib.MAX_SIDE * 256), default=None, help='MINE width [default: of the sizes].')
@click.option('--real-data', default='synthetic', show_default=True, help='Test split the UNet is scored on.')
@click.option('--stages', default=','.join(STAGES), show_default=True,
              help='Stages to report (generation always runs: seg and mine read its samples).')
@click.option('--workers', type=click.IntRange(0, dnnlib.MAX_WORKERS), default=3, show_default=True, help='PNG decoding processes.')
@click.option('--device', default=None, help='torch device [default: cuda if available, else cpu].')
@click.option('--fp32', is_flag=True, help='Fresh generator without fp16 layers (GPU only).')
@click.option('--json', 'as_json', is_flag=True, help='Print the figures as one JSON list at the end.')
@dnnlib.report_user_errors
def main(network, cfg, resolution, preset_sizes, n, seg_iters, seg_batch, seg_base_width, scale, mine_steps,
         mine_hidden, real_data, stages, workers, device, fp32, as_json):
    """Print generation img/s, UNet it/s and MINE steps/s with wall times and peak memory."""
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    wanted = [s.strip() for s in stages.split(',') if s.strip()]
    if not wanted or any(s not in STAGES for s in wanted):
        raise click.BadParameter(f'choose among {", ".join(STAGES)}', param_hint='--stages')
    sizes = chain_sizes(preset_sizes, n=n, seg_iters=seg_iters, seg_batch=seg_batch, seg_base_width=seg_base_width,
                        mine_steps=mine_steps, mine_hidden=mine_hidden)
    rows = run_chain(sizes, device, network=network, cfg=cfg, resolution=int(resolution), fp32=fp32, scale=scale,
                     real_data=real_data, stages=tuple(wanted), workers=workers)
    if as_json:
        print(json.dumps(rows, indent=2))


if __name__ == '__main__':
    main()
