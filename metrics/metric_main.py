"""Registry of the GAN metrics computed at network snapshots, and their JSON-lines report.

Names follow the StyleGAN2-ADA convention ``<metric><N>k_full``: N thousand generated composites
against the full real training set without x-flips (METHOD.md §10). ``--metrics`` options are
validated against :data:`METRICS`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import torch

import dnnlib
from metrics import frechet

MetricFn = Callable[[dnnlib.EasyDict], float]


def _frechet_metric(compute: Callable[..., float], num_gen: int, doc: str, **fixed) -> MetricFn:
    """A registry entry: ``compute`` (:func:`frechet.compute_fid` / ``compute_kid``) at ``num_gen``,
    with the ``fixed`` keyword arguments of that metric (KID's subset count)."""
    def metric(opts: dnnlib.EasyDict) -> float:
        return compute(opts.G, opts.dataset_kwargs, opts.detector, opts.device,
                       num_gen=opts.num_gen or num_gen, **fixed, **opts.options)
    metric.__doc__ = doc
    return metric


METRICS: dict[str, MetricFn] = {
    'fid10k_full': _frechet_metric(frechet.compute_fid, 10_000, 'FID, 10k generated vs all real (checkpoint choice).'),
    'kid10k_full': _frechet_metric(frechet.compute_kid, 10_000, 'KID, 10k generated vs all real, 20 subsets of 1000.'),
    'fid50k_full': _frechet_metric(frechet.compute_fid, 50_000, 'FID, 50k generated vs all real.'),
    'kid50k_full': _frechet_metric(frechet.compute_kid, 50_000, 'KID, 50k generated vs all real, 100 subsets of 1000.',
                                   num_subsets=100),  # StyleGAN2-ADA's kid50k_full
}


def is_valid_metric(name: str) -> bool:
    return name in METRICS


def list_valid_metrics() -> list[str]:
    return list(METRICS)


def calc_metric(name: str, G: torch.nn.Module, dataset_kwargs: dict | None, device: torch.device | str,
                num_gpus: int = 1, rank: int = 0, detector: str | None = None, batch_size: int = 64,
                progress: bool = False, num_gen: int | None = None, dataset: Any = None,
                num_workers: int = 3, use_cache: bool = True, detector_runs_code: bool = False) -> dict:
    """Compute metric ``name`` of generator ``G`` (``G(z, noise_mode='random')['img']``, ``G.z_dim``).

    ``dataset_kwargs`` are :func:`training.dataset.open_dataset` kwargs (x-flip is forced off);
    ``dataset`` optionally gives the opened real set. ``detector`` is a path or URL, resolved by
    the caller (:func:`metrics.detector.resolve_detector_path`); ``None`` means the default URL.
    ``detector_runs_code``: the user allows a detector file to run its own code (``--detector-runs-code``).
    ``num_gen`` overrides the registered number of generated images (quick CPU runs); it is then
    recorded in the result so a short run is never mistaken for the full metric.
    Every rank must call this; the value is NaN on ranks other than 0.

    Returns ``dict(results={name: value}, metric, total_time, total_time_str, num_gpus[, num_gen])``.
    """
    if not is_valid_metric(name):
        raise dnnlib.UserError(f'unknown metric "{name}"; choose from {", ".join(list_valid_metrics())}')
    options = dict(dataset=dataset, batch_size=batch_size, num_gpus=num_gpus, rank=rank,
                   num_workers=num_workers, progress=progress, use_cache=use_cache,
                   detector_runs_code=detector_runs_code)
    opts = dnnlib.EasyDict(G=G, dataset_kwargs=dataset_kwargs, detector=detector, device=torch.device(device),
                           num_gen=num_gen, options=options)
    start = time.time()
    value = METRICS[name](opts)
    total_time = time.time() - start
    result = dict(results={name: float(value)}, metric=name, total_time=total_time,
                  total_time_str=dnnlib.format_time(total_time), num_gpus=num_gpus)
    if num_gen is not None:
        result['num_gen'] = int(num_gen)
    return result


def report_metric(result: dict, run_dir: str, snapshot_pkl: str | None, sigma: float | None, rank: int = 0) -> None:
    """Append ``result`` as one JSON line to ``<run_dir>/metric-<name>.jsonl`` (rank 0 only).

    The line carries the snapshot file name (relative to ``run_dir`` when inside it) and the
    ILS weight σ at that snapshot, which checkpoint selection filters on.
    """
    if rank != 0:
        return
    if snapshot_pkl is not None and os.path.dirname(os.path.abspath(snapshot_pkl)) == os.path.abspath(run_dir):
        snapshot_pkl = os.path.basename(snapshot_pkl)
    line = dict(result, snapshot_pkl=snapshot_pkl, timestamp=time.time(),
                sigma=None if sigma is None else float(sigma))
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, f'metric-{result["metric"]}.jsonl')
    with dnnlib.naming_file(path), open(path, 'at') as f:   # a full disk names the file
        f.write(dnnlib.json_text(line) + '\n')
