"""Training speed of the presets: images/s and sec/kimg of the G-main, D-main and lazy D-reg phases.

    python bench/bench_training.py                        # cpu preset + ILS_predL/64 + ILS/128, batch 8 and 32
    python bench/bench_training.py --cfg=ILS_predL --batch=32 --iters=20 --device=cuda
    python bench/bench_training.py --cfg=ILS_predL --batch=8 --ab=layout --iters=3   # NCHW vs NHWC side by side
    python bench/bench_training.py --cfg=ILS_predL --batch=8 --ab=main --loop --json # main's CPU set-up vs now,
                                                                  # phases and the real training loop
    python bench/bench_training.py --cfg=ILS_predL --batch=8 --flops --threads=2  # GFLOP/s against the machine's
    python bench/bench_training.py --cfg=ILS_predL --batch=8 --ab=main --flops --threads=2  # ... of main and now

It times the loss phases exactly as the training loop runs them (fresh z and shifts per phase,
ADA at p = 0.2 so the augmentation is exercised, R1 counted as 1/16 of an iteration) on random
"real" images, so no dataset is read. Prints one line per configuration and, with --json, the
figures as JSON. A figure, not a test: nothing here asserts a speed.

``--ab=NAME`` builds the two variants of :data:`AB_VARIANTS` of one preset in this process and
times their phases interleaved (A B B A A B ...), so that a machine whose speed drifts, or is
shared, slows both alike; it reports each variant's median and the median of the per-round
ratios B/A. Only such ratios are comparable between days on a shared machine. ``--loop`` also
runs the real training loop (synthetic data, ``--aug=fixed --p=0.2``, ticks of two iterations) for
each variant, in A B B A order, and reports its sec/kimg from log.txt next to the phase figures.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Callable

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402
from torch_utils import misc  # noqa: E402
from torch_utils.ops import bias_act, upfirdn2d  # noqa: E402
from training import train_cli  # noqa: E402
from training.networks import sample_eps  # noqa: E402
from training.training_loop import (build_networks, lazy_adam, optimizer_step, phase_losses,  # noqa: E402
                                    uses_channels_last)

DEFAULT_CASES = [('cpu', 64, 16), ('ILS_predL', 64, 8), ('ILS_predL', 64, 32), ('ILS', 128, 8), ('ILS', 128, 32)]
PHASES = ('G_main', 'D_main', 'D_reg', 'estimators')

# --ab: (A, B) keyword arguments of PhaseBench.
AB_VARIANTS: dict[str, tuple[dict, dict]] = {
    # What main ran on a CPU (NCHW, every op its reference) against this branch's defaults. Main's
    # upfirdn2d also padded symmetric borders by a copy, which A does not: A is, if anything, faster.
    'main': (dict(layout='nchw', impl='ref'), dict()),
    'layout': (dict(layout='nchw'), dict(layout='nhwc')),
    'impl': (dict(impl='ref'), dict(impl='cuda')),
    'compile': (dict(compile=False), dict(compile=True)),
}


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def reference_ops():
    """Run bias_act and upfirdn2d (and so conv2d_resample) as their pure-PyTorch references,
    as ``impl='ref'`` would: no CUDA kernels, no in-place CPU path of bias_act."""
    saved = bias_act._plugin, upfirdn2d._plugin, bias_act.fused_cpu
    bias_act._plugin = upfirdn2d._plugin = lambda: None
    bias_act.fused_cpu = False
    try:
        yield
    finally:
        bias_act._plugin, upfirdn2d._plugin, bias_act.fused_cpu = saved


class PhaseBench:
    """One preset's networks, loss and optimisers on ``device``; ``phases`` maps a phase name to a
    call that runs it once as the training loop does (``estimators`` only for learned estimators:
    their NLL fit alone, which D-main also runs).

    layout: 'preset' (the config's own, which follows the device), 'nchw' or 'nhwc'.
    impl: 'cuda' (the CUDA kernels where built; bias_act's in-place path on a CPU) or 'ref' (the
        reference ops throughout).
    compile: G and D through ``torch.compile`` in G-main and D-main (the training option --compile).
    adjust: called on the config before the networks are built (e.g. to shrink them for a smoke run).
    """

    def __init__(self, cfg_name: str, script_resolution: int, batch: int, device: torch.device,
                 fp32: bool = False, layout: str = 'preset', impl: str = 'cuda', compile: bool = False,
                 p: float = 0.2, adjust: Callable | None = None) -> None:
        with tempfile.TemporaryDirectory() as outdir:
            cfg = train_cli.build_training_config(outdir=outdir, data='synthetic', resolution=script_resolution,
                                                  cfg=cfg_name, batch=batch, metrics='none', fp32=fp32)
        if layout != 'preset':
            cfg.channels_last = layout == 'nhwc'
        cfg.compile = compile
        if adjust is not None:
            adjust(cfg)
        self.cfg, self.device, self.batch, self.impl = cfg, device, batch, impl
        self.nets = nets = build_networks(cfg, device)
        if nets.augment_pipe is not None:
            nets.augment_pipe.p.fill_(p)
        self.loss, self.loss_reg = phase_losses(nets, cfg)
        G, D = nets.G, nets.D
        self.opt_G = lazy_adam(list(G.parameters()), cfg, cfg.G_reg_interval)
        D_params = list(D.parameters()) + (list(nets.estimators.parameters()) if nets.estimators is not None else [])
        self.opt_D, self.D_params = lazy_adam(D_params, cfg, cfg.D_reg_interval), D_params
        reals = torch.rand([batch, 3, cfg.resolution, cfg.resolution], device=device) * 2 - 1
        self.reals = reals.contiguous(memory_format=torch.channels_last) if uses_channels_last(cfg, device) else reals
        self.phases: dict[str, Callable[[], dict]] = dict(G_main=self.g_main, D_main=self.d_main, D_reg=self.d_reg)
        if nets.estimators is not None:
            self.phases['estimators'] = self.estimator_fit

    @property
    def layout(self) -> str:
        return 'nhwc' if uses_channels_last(self.cfg, self.device) else 'nchw'

    def ops(self):
        return reference_ops() if self.impl == 'ref' else contextlib.nullcontext()

    def latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn([self.batch, self.nets.G.z_dim], device=self.device),
                sample_eps(self.batch, self.nets.composition.eps_dim, self.device))

    def train(self, modules: list, optimizer: torch.optim.Optimizer, params: list, run: Callable[[], dict]) -> dict:
        """One phase: ``modules`` trainable while ``run`` computes its losses and backward, then the step."""
        with self.ops():
            for module in modules:
                module.requires_grad_(True)
            optimizer.zero_grad(set_to_none=True)
            losses = run()
            for module in modules:
                module.requires_grad_(False)
            optimizer_step(optimizer, params)
        return losses

    def g_main(self) -> dict:
        G = self.nets.G
        return self.train([G], self.opt_G, list(G.parameters()),
                          lambda: self.loss.generator_main(*self.latents(), sigma=1.0))

    def d_main(self) -> dict:
        modules = [m for m in (self.nets.D, self.nets.estimators) if m is not None]
        return self.train(modules, self.opt_D, self.D_params,
                          lambda: self.loss.discriminator_main(self.reals, *self.latents())[0])

    def d_reg(self) -> dict:
        return self.train([self.nets.D], self.opt_D, self.D_params,
                          lambda: self.loss_reg.discriminator_reg(self.reals, gain=self.cfg.D_reg_interval)[0])

    def estimator_fit(self) -> dict:
        def run() -> dict:
            with torch.no_grad():
                layers = self.nets.G(self.latents()[0])
            nll = self.loss.estimator_fit_loss(layers)
            nll.backward()
            return {'Loss/estimator/nll': nll.detach()}

        estimators = self.nets.estimators
        return self.train([estimators], self.opt_D, list(estimators.parameters()), run)

    def iterations(self, count: int, host_sync: bool) -> None:
        """``count`` iterations of G-main + D-main back to back; with ``host_sync`` each one ends by
        reading its losses' finiteness on the host, as the per-iteration NaN check of main did."""
        for _ in range(count):
            losses = dict(self.g_main(), **self.d_main())
            if host_sync:
                bool(torch.isfinite(torch.stack([v.float() for v in losses.values()])).all())


def timed(call: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call, the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    call()
    sync(device)
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], object]], rounds: int, device: torch.device,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call per round, the calls taken in ABBA order (A B, B A, A B, ...) after
    ``warmup`` untimed rounds, so slow drift of the machine weighs on every run alike."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(timed(runs[name], device))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of b/a: robust to a load that changes between rounds."""
    return statistics.median(y / x for x, y in zip(a, b))


def per_iteration(seconds: dict[str, float], reg_interval: int) -> float:
    """G-main + D-main + D-reg / interval (+ nothing for 'estimators': D-main already fits them), of
    seconds per call or of any other per-call figure (FLOPs)."""
    return seconds['G_main'] + seconds['D_main'] + seconds['D_reg'] / reg_interval


def rates(bench: PhaseBench, seconds: dict[str, float]) -> dict:
    per_iter = per_iteration(seconds, bench.cfg.D_reg_interval)
    return dict(sec_per_iter=round(per_iter, 4), images_per_sec=round(bench.batch / per_iter, 2),
                sec_per_kimg=round(1000 / bench.batch * per_iter, 2))


def describe(bench: PhaseBench) -> dict:
    return dict(cfg=bench.cfg.cfg, resolution=bench.cfg.resolution, batch=bench.batch, device=str(bench.device),
                fp32=bool(bench.cfg.fp32), layout=bench.layout, impl=bench.impl, threads=torch.get_num_threads())


def phase_seconds(bench: PhaseBench, iters: int, warmup: int = 1) -> dict[str, float]:
    """Seconds per call of each phase of ``bench``: the median of ``iters`` calls after ``warmup``."""
    return {name: median(interleaved({name: phase}, iters, bench.device, warmup)[name])
            for name, phase in bench.phases.items()}


def time_phases(cfg_name: str, script_resolution: int, batch: int, iters: int, device: torch.device,
                fp32: bool, layout: str = 'preset', impl: str = 'cuda', warmup: int = 1) -> dict:
    """Seconds per call of each phase (median of ``iters`` after ``warmup``) and derived rates."""
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    bench = PhaseBench(cfg_name, script_resolution, batch, device, fp32=fp32, layout=layout, impl=impl)
    seconds = phase_seconds(bench, iters, warmup)
    return dict(describe(bench), **{f'sec_{k}': round(v, 4) for k, v in seconds.items()}, **rates(bench, seconds),
                peak_mem_gb=round(misc.peak_memory_gb(device), 3))


def ab_phases(variant_a: PhaseBench, variant_b: PhaseBench, rounds: int, warmup: int = 1) -> dict:
    """Every phase of two variants of one preset, interleaved; medians, paired ratios B/A per phase
    and per iteration (> 1: B is slower)."""
    device = variant_a.device
    result: dict = dict(A=describe(variant_a), B=describe(variant_b), rounds=rounds, phases={})
    times: dict[str, dict[str, list[float]]] = {}
    for name in variant_a.phases:
        times[name] = phase = interleaved({'A': variant_a.phases[name], 'B': variant_b.phases[name]}, rounds, device,
                                          warmup)
        result['phases'][name] = dict(sec_A=round(median(phase['A']), 4), sec_B=round(median(phase['B']), 4),
                                      ratio_B_over_A=round(paired_ratio(phase['A'], phase['B']), 3))
    # One iteration per round, each variant's phases of that round weighted as in a training iteration.
    per_round = {key: [per_iteration({name: phase[key][r] for name, phase in times.items()},
                                     variant_a.cfg.D_reg_interval) for r in range(rounds)]
                 for key in ('A', 'B')}
    result['sec_per_iter_A'] = round(median(per_round['A']), 4)
    result['sec_per_iter_B'] = round(median(per_round['B']), 4)
    result['ratio_B_over_A'] = round(paired_ratio(per_round['A'], per_round['B']), 3)
    return result


def count_flops(call: Callable[[], object]) -> int:
    """FLOPs of one call as torch's FlopCounterMode counts them: convolutions and matrix products,
    forward and backward, a multiply-add as 2 (elementwise work is not counted)."""
    # torch's FlopCounterMode also tracks modules by backward hooks, which autograd.grad (R1)
    # refuses; its table of FLOPs per aten op serves alone.
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            count = flop_registry.get(func._overloadpacket)
            if count is not None:
                self.total += count(*args, **kwargs, out_val=out)
            return out

    counter = Counter()
    with counter:
        call()
    return counter.total


def machine_rates(device: torch.device, channels: int, resolution: int, batch: int, rounds: int = 10) -> dict:
    """GFLOP/s this machine reaches on the two kinds of work a training iteration is made of:
    a square fp32 matrix product (the GEMM peak) and one 3×3 convolution of ``channels`` channels
    at ``resolution``² in the training layout, forward and backward (the rate of the widest layer
    as oneDNN or cuDNN runs it). Each the fastest of ``rounds`` after one warm-up: a peak, and a
    shared machine only ever slows a round down."""
    size = 2048
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    gemm = min(interleaved({'gemm': lambda: a @ b}, rounds, device)['gemm'])
    memory_format = torch.channels_last if device.type == 'cpu' else torch.contiguous_format
    x = torch.randn(batch, channels, resolution, resolution, device=device).contiguous(memory_format=memory_format)
    x.requires_grad_(True)
    weight = torch.randn(channels, channels, 3, 3, device=device, requires_grad=True)

    def conv() -> None:
        torch.nn.functional.conv2d(x, weight, padding=1).sum().backward()

    conv_flops = count_flops(conv)
    conv_seconds = min(interleaved({'conv': conv}, rounds, device)['conv'])
    return dict(gemm_gflops=round(2 * size ** 3 / gemm / 1e9, 1),
                conv=f'3x3 {channels}->{channels} at {resolution}^2, batch {batch}, forward + backward',
                conv_gflops=round(conv_flops / conv_seconds / 1e9, 1))


def phase_flops(bench: PhaseBench) -> dict[str, int]:
    return {name: count_flops(phase) for name, phase in bench.phases.items()}


def bench_machine_rates(bench: PhaseBench) -> dict:
    return machine_rates(bench.device, max(bench.cfg.channel_max, 1), bench.cfg.resolution, bench.batch)


def flop_rates(bench: PhaseBench, iters: int) -> dict:
    """GFLOP per call and achieved GFLOP/s of each phase, per iteration, against this machine's
    GEMM and widest-convolution rates. ``headroom`` is how much faster the iteration would be if
    all of it ran at the widest convolution's own rate: a yardstick for what layout or kernel
    choices could give at the same arithmetic, not a bound (a phase whose convolutions suit the
    machine better can beat it)."""
    flops = phase_flops(bench)
    seconds = phase_seconds(bench, iters)
    interval = bench.cfg.D_reg_interval
    iter_flops, iter_seconds = per_iteration(flops, interval), per_iteration(seconds, interval)
    machine = bench_machine_rates(bench)
    achieved = iter_flops / iter_seconds / 1e9
    return dict(describe(bench), phases={n: dict(gflop=round(flops[n] / 1e9, 2), sec=round(seconds[n], 4),
                                                 gflops=round(flops[n] / seconds[n] / 1e9, 1)) for n in flops},
                gflop_per_iter=round(iter_flops / 1e9, 2), sec_per_iter=round(iter_seconds, 4),
                achieved_gflops=round(achieved, 1), **machine,
                headroom=round(machine['conv_gflops'] / achieved, 2),
                headroom_gemm=round(machine['gemm_gflops'] / achieved, 2))


def ab_flop_rates(variant_a: PhaseBench, variant_b: PhaseBench, result: dict) -> dict:
    """FLOPs per iteration of both variants (equal when B changes no arithmetic) and the GFLOP/s of
    each from ``result``'s interleaved timings, against the machine's rates measured right after;
    ``gflops_for_2x_A``: the rate an iteration would need to run at twice A's speed."""
    per_iter = {key: per_iteration(phase_flops(bench), bench.cfg.D_reg_interval)
                for key, bench in (('A', variant_a), ('B', variant_b))}
    achieved = {key: per_iter[key] / result[f'sec_per_iter_{key}'] / 1e9 for key in per_iter}
    return dict(gflop_per_iter_A=round(per_iter['A'] / 1e9, 2), gflop_per_iter_B=round(per_iter['B'] / 1e9, 2),
                gflops_A=round(achieved['A'], 1), gflops_B=round(achieved['B'], 1),
                gflops_for_2x_A=round(2 * achieved['A'], 1), **bench_machine_rates(variant_b))


def print_flops(row: dict) -> None:
    print(f'{row["cfg"]} R={row["resolution"]} batch {row["batch"]} {row["device"]} '
          f'({row["threads"]} threads, {row["layout"]}, {row["impl"]}): FLOPs counted by torch')
    for name, phase in row['phases'].items():
        print(f'  {name:10s} {phase["gflop"]:9.2f} GFLOP  {phase["sec"]:8.3f} s  {phase["gflops"]:7.1f} GFLOP/s')
    print(f'  iteration  {row["gflop_per_iter"]:9.2f} GFLOP  {row["sec_per_iter"]:8.3f} s  '
          f'{row["achieved_gflops"]:7.1f} GFLOP/s')
    print(f'  machine: GEMM 2048² {row["gemm_gflops"]} GFLOP/s; {row["conv"]} {row["conv_gflops"]} GFLOP/s')
    print(f'  headroom at the same arithmetic: x{row["headroom"]} at the widest convolution\'s rate, '
          f'x{row["headroom_gemm"]} at the GEMM peak', flush=True)


STATUS_LINE = re.compile(r'^tick (\d+)\s+kimg ([\d.]+)\s+time .*?sec/kimg ([\d.]+).*?mem ([\d.]+)GB', re.M)


def parse_training_log(text: str) -> dict:
    """sec/kimg per tick of a training log.txt; ``sec_per_kimg`` is the median after tick 0 (the
    warm-up: one iteration, cuDNN autotuning, the first kernel builds)."""
    ticks = [dict(tick=int(t), kimg=float(k), sec_per_kimg=float(s), mem_gb=float(m))
             for t, k, s, m in STATUS_LINE.findall(text)]
    steady = sorted(t['sec_per_kimg'] for t in ticks[1:])
    return dict(ticks=ticks, sec_per_kimg=steady[len(steady) // 2] if steady else None,
                peak_mem_gb=max((t['mem_gb'] for t in ticks), default=None))


def run_loop(cfg_name: str, script_resolution: int, batch: int, ticks: int = 2, layout: str = 'preset',
             impl: str = 'cuda', fp32: bool = False, workers: int | None = None) -> dict:
    """The real training loop (on the GPU when there is one) on the synthetic data with ADA at
    p = 0.2 (--aug=fixed): tick 0 (one iteration) and ``ticks`` ticks of two iterations; its
    log.txt's sec/kimg per tick. The image grids (maintenance, not in sec/kimg) are shrunk to 2×2."""
    with tempfile.TemporaryDirectory(prefix='bench_loop-') as outdir:
        c = train_cli.build_training_config(outdir=outdir, data='synthetic', resolution=script_resolution,
                                            cfg=cfg_name, batch=batch, kimg=batch * (1 + 2 * ticks) / 1000,
                                            tick=2 * batch / 1000, snap=10 ** 6, metrics='none', aug='fixed', p=0.2,
                                            fp32=fp32, workers=workers)
        c.update(grid_rows=2, grid_cols=2, layer_rows=2, layer_groups=1)
        if layout != 'preset':
            c.channels_last = layout == 'nhwc'
        with reference_ops() if impl == 'ref' else contextlib.nullcontext(), \
                contextlib.redirect_stdout(io.StringIO()):
            run_dir = train_cli.launch(c)
        with open(os.path.join(run_dir, 'log.txt'), encoding='utf-8') as f:
            return parse_training_log(f.read())


def ab_loops(cfg_name: str, script_resolution: int, batch: int, a: dict, b: dict, runs: int = 2) -> dict:
    """Real-loop sec/kimg of variants a and b, runs taken A B B A ...; medians and paired ratio B/A."""
    seconds: dict[str, list[float]] = {'A': [], 'B': []}
    for r in range(runs):
        for key in ('AB' if r % 2 == 0 else 'BA'):
            seconds[key].append(run_loop(cfg_name, script_resolution, batch, **(a if key == 'A' else b))
                                ['sec_per_kimg'])
    return dict(runs=runs, sec_per_kimg_A=[round(v, 2) for v in seconds['A']],
                sec_per_kimg_B=[round(v, 2) for v in seconds['B']],
                ratio_B_over_A=round(paired_ratio(seconds['A'], seconds['B']), 3))


def print_ab(result: dict, label: str) -> None:
    a, b = result['A'], result['B']
    print(f'{a["cfg"]} R={a["resolution"]} batch {a["batch"]} {a["device"]}: A/B {label} '
          f'(A={a["layout"]}/{a["impl"]}, B={b["layout"]}/{b["impl"]}, {result["rounds"]} interleaved rounds)')
    for name, row in result['phases'].items():
        print(f'  {name:10s} A {row["sec_A"]:9.4f} s  B {row["sec_B"]:9.4f} s  B/A {row["ratio_B_over_A"]:.3f}')
    print(f'  iteration  A {result["sec_per_iter_A"]:9.4f} s  B {result["sec_per_iter_B"]:9.4f} s  '
          f'B/A {result["ratio_B_over_A"]:.3f}  (phase bench: {1000 / a["batch"] * result["sec_per_iter_A"]:.1f} vs '
          f'{1000 / a["batch"] * result["sec_per_iter_B"]:.1f} sec/kimg)', flush=True)
    flops = result.get('flops')
    if flops:
        print(f'  GFLOP per iteration A {flops["gflop_per_iter_A"]}  B {flops["gflop_per_iter_B"]}; GFLOP/s A '
              f'{flops["gflops_A"]}  B {flops["gflops_B"]}; twice A needs {flops["gflops_for_2x_A"]}; machine: GEMM '
              f'{flops["gemm_gflops"]}, {flops["conv"]} {flops["conv_gflops"]} GFLOP/s', flush=True)
    loop = result.get('loop')
    if loop:
        print(f'  real loop  sec/kimg A {loop["sec_per_kimg_A"]}  B {loop["sec_per_kimg_B"]}  '
              f'B/A {loop["ratio_B_over_A"]:.3f}', flush=True)


@click.command()
@click.option('--cfg', default=None, help='One preset (default: a set of presets and batches).')
@click.option('--resolution', type=click.Choice(['64', '128']), default='64', help='Script of --cfg.')
@click.option('--batch', type=click.IntRange(1, dnnlib.MAX_BATCH), default=None, help='Batch of --cfg [default: 8 and 32].')
@click.option('--iters', type=click.IntRange(1, dnnlib.MAX_COUNT), default=3, show_default=True,
              help='Timed calls per phase (with --ab: interleaved rounds).')
@click.option('--device', default=None, help='torch device [default: cuda if available, else cpu].')
@click.option('--fp32', is_flag=True, help='Disable fp16 layers (GPU only; the CPU always runs fp32).')
@click.option('--layout', type=click.Choice(['preset', 'nchw', 'nhwc']), default='preset', show_default=True,
              help="Memory layout of G and D: the preset's channels_last field (auto: NHWC on a CPU), or forced.")
@click.option('--impl', type=click.Choice(['cuda', 'ref']), default='cuda', show_default=True,
              help="CUDA kernels where built (on a CPU: bias_act's in-place path) or the reference ops.")
@click.option('--ab', type=click.Choice(list(AB_VARIANTS)), default=None,
              help='Time two variants of --cfg side by side in this process (needs --cfg and --batch).')
@click.option('--loop', is_flag=True, help='With --ab: also the real training loop of each variant (A B B A).')
@click.option('--flops', is_flag=True,
              help='Count each phase\'s FLOPs and report GFLOP/s against this machine\'s GEMM and widest-convolution '
                   'rates (needs --cfg and --batch; with --ab: both variants\' rates from the interleaved timings).')
@click.option('--threads', type=click.IntRange(1, dnnlib.MAX_WORKERS), default=None, help='torch CPU threads [default: torch\'s].')
@click.option('--json', 'as_json', is_flag=True, help='Print the figures as one JSON list at the end.')
def main(cfg, resolution, batch, iters, device, fp32, layout, impl, ab, loop, flops, threads, as_json):
    """Print training images/s and sec/kimg per preset and batch."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # as the training loop (unless --nobench)
    if flops and ab is None:
        if cfg is None or batch is None:
            raise click.UsageError('--flops needs --cfg and --batch')
        row = flop_rates(PhaseBench(cfg, int(resolution), batch, device, fp32=fp32, layout=layout, impl=impl), iters)
        print_flops(row)
        if as_json:
            print(json.dumps(row, indent=2))
        return
    if ab is not None:
        if cfg is None or batch is None:
            raise click.UsageError('--ab needs --cfg and --batch')
        kwargs = dict(fp32=fp32, layout=layout, impl=impl)
        a, b = ({**kwargs, **variant} for variant in AB_VARIANTS[ab])
        variant_a, variant_b = (PhaseBench(cfg, int(resolution), batch, device, **v) for v in (a, b))
        result = ab_phases(variant_a, variant_b, iters)
        if flops:
            result['flops'] = ab_flop_rates(variant_a, variant_b, result)
        if loop:
            result['loop'] = ab_loops(cfg, int(resolution), batch, a, b)
        print_ab(result, ab)
        if as_json:
            print(json.dumps(result, indent=2))
        return
    cases = DEFAULT_CASES if cfg is None else [(cfg, int(resolution), b) for b in ([batch] if batch else [8, 32])]
    rows = []
    for name, script_res, b in cases:
        row = time_phases(name, script_res, b, iters, device, fp32, layout, impl)
        rows.append(row)
        print(f'{name:10s} R={row["resolution"]:<4d} batch {b:<3d} {device.type:4s}  '
              f'{row["images_per_sec"]:8.2f} img/s  {row["sec_per_kimg"]:9.2f} sec/kimg  '
              f'(G {row["sec_G_main"]:.3f}s, D {row["sec_D_main"]:.3f}s, R1 {row["sec_D_reg"]:.3f}s per call; '
              f'{row["threads"]} threads, {row["layout"]}, {row["impl"]})', flush=True)
    if as_json:
        print(json.dumps(rows, indent=2))


if __name__ == '__main__':
    main()
