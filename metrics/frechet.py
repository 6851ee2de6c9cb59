"""FID and KID from Inception features (METHOD.md §10, StyleGAN2-ADA protocol).

Pipeline: images (uint8, 0..255) -> detector features [N, D] -> either running statistics
(count, sum, sum of outer products, float64) for FID, or the features themselves for KID.
Statistics of the real set are cached on disk; generated sets are always recomputed.

With ``num_gpus > 1`` every rank processes a shard (real items by index striding, generated
samples likewise) and the shards are combined with ``torch.distributed`` collectives, so the
result equals the single-process one up to float summation order.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, Sequence

import numpy as np
import scipy.linalg
import torch

import dnnlib
from torch_utils import distributed, misc
from metrics import detector as detector_lib

KID_NUM_SUBSETS = 20       # as the original (metric_main.py: kid10k_full); METHOD.md §10 said 100
KID_MAX_SUBSET_SIZE = 1000


# ----------------------------------------------------------------------------------------------
# The two distances.

def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): mu [D], sigma [D, D].

    ``|mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2))``. The product of two PSD
    matrices has a real square root in exact arithmetic; round-off (and rank-deficient
    covariances, e.g. fewer samples than features) gives tiny imaginary parts, which we drop.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    mean_term = np.square(mu1 - mu2).sum()
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.real(mean_term + np.trace(sigma1 + sigma2 - 2 * covmean)))


def mmd2_unbiased_polynomial(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 between samples x [m, D] and y [n, D] with k(a, b) = (a.b / D + 1)^3.

    The within-set sums leave out the diagonal k(x_i, x_i), which is what makes it unbiased
    (and lets it go slightly negative when both sets come from one distribution).
    """
    x, y = x.to(torch.float64), y.to(torch.float64)
    m, n, dim = x.shape[0], y.shape[0], x.shape[1]
    k_xx = (x @ x.T / dim + 1) ** 3
    k_yy = (y @ y.T / dim + 1) ** 3
    k_xy = (x @ y.T / dim + 1) ** 3
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.sum() / (m * n))


def kid_subset_indices(num_real: int, num_gen: int, num_subsets: int = KID_NUM_SUBSETS,
                       max_subset_size: int = KID_MAX_SUBSET_SIZE, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Row indices (real, generated) of each KID subset: equal sizes, drawn without replacement."""
    size = min(num_real, num_gen, max_subset_size)
    if size < 2:
        raise ValueError(f'KID needs at least 2 samples per set (got {num_real} real, {num_gen} generated)')
    rng = np.random.RandomState(seed)
    return [(rng.choice(num_real, size, replace=False), rng.choice(num_gen, size, replace=False))
            for _ in range(num_subsets)]


def kid_from_features(real_features: np.ndarray, gen_features: np.ndarray, num_subsets: int = KID_NUM_SUBSETS,
                      max_subset_size: int = KID_MAX_SUBSET_SIZE, seed: int = 0,
                      device: torch.device | str = 'cpu') -> float:
    """Kernel Inception Distance: unbiased polynomial MMD^2 averaged over random subsets.

    real_features [N, D], gen_features [M, D]; subsets of min(N, M, max_subset_size) rows.
    ``device`` only chooses where the float64 kernel matrices are computed.
    """
    real = torch.as_tensor(np.asarray(real_features), device=device)
    gen = torch.as_tensor(np.asarray(gen_features), device=device)
    subsets = kid_subset_indices(len(real), len(gen), num_subsets, max_subset_size, seed)
    values = [mmd2_unbiased_polynomial(real[torch.as_tensor(ri, device=device)], gen[torch.as_tensor(gi, device=device)])
              for ri, gi in subsets]
    return float(np.mean(values))


# ----------------------------------------------------------------------------------------------
# Running feature statistics.

class FeatureStats:
    """Detector features seen so far: count, sum [D] and sum of outer products [D, D] in float64.

    The sums give mean and covariance without keeping the features; with ``keep_features`` the
    rows are also kept (KID needs them). Sums stay on the device the features arrive on.
    """

    def __init__(self, keep_features: bool = False):
        self.keep_features = keep_features
        self.count = 0
        self.feature_sum: torch.Tensor | None = None
        self.outer_sum: torch.Tensor | None = None
        self.rows: list[np.ndarray] = []

    def append(self, features: torch.Tensor) -> None:
        """Add features [N, D]."""
        f64 = features.detach().to(torch.float64)
        if self.feature_sum is None:
            self.feature_sum = torch.zeros(f64.shape[1], dtype=torch.float64, device=f64.device)
            self.outer_sum = torch.zeros(f64.shape[1], f64.shape[1], dtype=torch.float64, device=f64.device)
        self.feature_sum += f64.sum(dim=0)
        self.outer_sum += f64.T @ f64
        self.count += f64.shape[0]
        if self.keep_features:
            self.rows.append(features.detach().to(torch.float32).cpu().numpy())

    def features(self) -> np.ndarray:
        """All kept features [count, D] float32."""
        if not self.keep_features:
            raise ValueError('these statistics were gathered without keep_features')
        dim = 0 if self.feature_sum is None else self.feature_sum.shape[0]
        return np.concatenate(self.rows) if self.rows else np.zeros([0, dim], np.float32)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and covariance [D, D] (float64, normalised by the count, as in StyleGAN2-ADA)."""
        if self.count < 1:
            raise ValueError('no features were gathered')
        mean = self.feature_sum.cpu().numpy() / self.count
        cov = self.outer_sum.cpu().numpy() / self.count - np.outer(mean, mean)
        return mean, cov

    def reduce_across_ranks(self, num_gpus: int, rank: int, device: torch.device | str) -> None:
        """Sum the shards of all ranks into every rank (no-op for one process)."""
        if num_gpus <= 1:
            return
        # A rank whose shard was empty has seen no features: give it zero sums of the right size.
        dim = 0 if self.feature_sum is None else self.feature_sum.shape[0]
        dim = int(distributed.all_reduce_max_(torch.tensor([dim], dtype=torch.int64, device=device)).item())
        if self.feature_sum is None:
            self.feature_sum = torch.zeros(dim, dtype=torch.float64, device=device)
            self.outer_sum = torch.zeros(dim, dim, dtype=torch.float64, device=device)
            self.rows = [np.zeros([0, dim], np.float32)]
        count = torch.tensor([self.count], dtype=torch.float64, device=device)
        self.count = int(distributed.all_reduce_sum_(count).item())
        self.feature_sum = distributed.all_reduce_sum_(self.feature_sum.to(device))
        self.outer_sum = distributed.all_reduce_sum_(self.outer_sum.to(device))
        if self.keep_features:
            local = torch.from_numpy(self.features()).to(device)
            self.rows = [distributed.all_gather_rows(local).cpu().numpy()]

    def to_npz_bytes(self) -> bytes:
        arrays = dict(count=np.int64(self.count), feature_sum=self.feature_sum.cpu().numpy(),
                      outer_sum=self.outer_sum.cpu().numpy(), keep_features=np.bool_(self.keep_features))
        if self.keep_features:
            arrays['features'] = self.features()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, path: str, device: torch.device | str = 'cpu') -> 'FeatureStats':
        with np.load(path) as data:
            stats = cls(keep_features=bool(data['keep_features']))
            stats.count = int(data['count'])
            stats.feature_sum = torch.from_numpy(data['feature_sum']).to(device)
            stats.outer_sum = torch.from_numpy(data['outer_sum']).to(device)
            if stats.keep_features:
                stats.rows = [data['features']]
        return stats


# ----------------------------------------------------------------------------------------------
# Images -> features.

def latents_for_indices(indices: Sequence[int], z_dim: int, device: torch.device | str = 'cpu') -> torch.Tensor:
    """z [len(indices), z_dim] ~ N(0, I), row i drawn from seed ``indices[i]``.

    One generator per sample makes the generated set independent of batch size and GPU count.
    """
    rows = [torch.randn(z_dim, generator=torch.Generator().manual_seed(int(i))) for i in indices]
    return torch.stack(rows).to(device)


def run_detector(detector: torch.nn.Module, images_uint8: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 images [N, C, H, W] (C = 1 or 3) -> features [N, D]; the detector resizes internally."""
    images = images_uint8.to(device)
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return detector(images, return_features=True)


def _stack_images(batch: list[tuple[Any, Any]]) -> torch.Tensor:
    """DataLoader collate: keep the uint8 images [N, 3, R, R], drop labels/masks."""
    return torch.from_numpy(np.stack([np.asarray(item[0]) for item in batch]))


def _progress(iterable, total: int, desc: str, enabled: bool):
    return dnnlib.progress_bar(iterable, enabled, total=total, desc=desc, unit='batch', leave=False)


@torch.no_grad()
def compute_dataset_features(dataset: Any, detector: torch.nn.Module, device: torch.device | str, *,
                             max_items: int | None = None, keep_features: bool = False, batch_size: int = 64,
                             num_gpus: int = 1, rank: int = 0, num_workers: int = 3,
                             progress: bool = False) -> FeatureStats:
    """Features of the first ``max_items`` (default all) items of ``dataset``, reduced over ranks.

    ``dataset[i]`` -> (uint8 [3, R, R], label or mask); this rank takes items rank, rank + num_gpus, ...
    """
    num_items = len(dataset) if max_items is None else min(len(dataset), max_items)
    shard = list(range(rank, num_items, num_gpus))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, shard), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=_stack_images,
                                         pin_memory=torch.device(device).type == 'cuda')
    stats = FeatureStats(keep_features=keep_features)
    total = (len(shard) + batch_size - 1) // batch_size
    for images in _progress(loader, total, 'real features', progress and rank == 0):
        stats.append(run_detector(detector, images, device))
    stats.reduce_across_ranks(num_gpus, rank, device)
    return stats


@torch.no_grad()
def compute_generator_features(G: torch.nn.Module, detector: torch.nn.Module, device: torch.device | str, *,
                               num_gen: int, keep_features: bool = False, batch_size: int = 64,
                               num_gpus: int = 1, rank: int = 0, progress: bool = False) -> FeatureStats:
    """Features of ``num_gen`` composites ``G(z, noise_mode='random')['img']``, z from seeds 0..num_gen-1."""
    shard = list(range(rank, num_gen, num_gpus))
    stats = FeatureStats(keep_features=keep_features)
    batches = [shard[start:start + batch_size] for start in range(0, len(shard), batch_size)]
    was_training = G.training
    G.eval()  # a generator in training mode would update its w_avg from the metric's latents
    try:
        for indices in _progress(batches, len(batches), 'generated features', progress and rank == 0):
            z = latents_for_indices(indices, G.z_dim, device)
            img = G(z, noise_mode='random')['img']
            stats.append(run_detector(detector, misc.encode_uint8(img), device))
    finally:
        G.train(was_training)
    stats.reduce_across_ranks(num_gpus, rank, device)
    return stats


# ----------------------------------------------------------------------------------------------
# Real set: opening and caching.

def open_real_dataset(dataset_kwargs: dict) -> Any:
    """The real training set of the metrics: ``open_dataset(**dataset_kwargs)`` without x-flips."""
    from training.dataset import open_dataset  # imported late: the metric maths needs no dataset code
    return open_dataset(**{**dataset_kwargs, 'xflip': False})


def _normalised_dataset_kwargs(dataset_kwargs: dict) -> dict:
    """Dataset kwargs as they name the data: x-flip off, existing paths absolute."""
    kwargs = {**dataset_kwargs, 'xflip': False}
    for key in ('data', 'data_root'):
        value = kwargs.get(key)
        if isinstance(value, str) and os.path.exists(value):
            kwargs[key] = os.path.abspath(value)
    return kwargs


def real_stats_cache_path(dataset_kwargs: dict, detector_path: str | None, max_items: int | None,
                          keep_features: bool) -> str:
    """``<cache>/gan-metrics/<md5 of dataset kwargs, detector id, max_items, kind>.npz``."""
    key = dict(dataset_kwargs=_normalised_dataset_kwargs(dataset_kwargs),
               detector=detector_lib.detector_id(detector_path), max_items=max_items,
               keep_features=keep_features)
    digest = hashlib.md5(json.dumps(key, sort_keys=True, default=str).encode('utf-8')).hexdigest()
    return os.path.join(dnnlib.cache_dir(), 'gan-metrics', f'{digest}.npz')


def _all_ranks_agree(flag: bool, num_gpus: int, device: torch.device | str) -> bool:
    if num_gpus <= 1:
        return flag
    votes = distributed.all_reduce_sum_(torch.tensor([float(flag)], device=device))
    return int(votes.item()) == num_gpus


def real_features(dataset_kwargs: dict | None, detector_path: str | None, device: torch.device | str, *,
                  dataset: Any = None, max_items: int | None = None, keep_features: bool = False,
                  batch_size: int = 64, num_gpus: int = 1, rank: int = 0, num_workers: int = 3,
                  progress: bool = False, use_cache: bool = True, detector_runs_code: bool = False) -> FeatureStats:
    """Feature statistics of the real set, read from the on-disk cache when present.

    ``dataset`` (optional) is an already opened real set; ``dataset_kwargs`` then still names it
    in the cache key (pass ``None`` to skip the cache). Only rank 0 writes the cache, atomically.
    ``detector_runs_code``: the user allows a detector file to run its own code
    (:func:`metrics.detector.load_detector`).
    """
    detector = detector_lib.load_detector(detector_path, device, runs_code=detector_runs_code)
    cache_path = None
    if use_cache and dataset_kwargs is not None:
        cache_path = real_stats_cache_path(dataset_kwargs, detector_path, max_items, keep_features)
        cached = dnnlib.read_cache(cache_path, lambda path: FeatureStats.from_npz(path, device))
        if _all_ranks_agree(cached is not None, num_gpus, device):
            return cached
    if dataset is None:
        dataset = open_real_dataset(dataset_kwargs)
    stats = compute_dataset_features(dataset, detector, device, max_items=max_items, keep_features=keep_features,
                                     batch_size=batch_size, num_gpus=num_gpus, rank=rank,
                                     num_workers=num_workers, progress=progress)
    if cache_path is not None and rank == 0:
        with dnnlib.writing_cache(cache_path):
            os.makedirs(os.path.dirname(cache_path), exist_ok=True)
            dnnlib.write_bytes_atomic(cache_path, stats.to_npz_bytes())
    return stats


# ----------------------------------------------------------------------------------------------
# The metrics.

def _real_and_generated_features(G: torch.nn.Module, dataset_kwargs: dict | None, detector_path: str | None,
                                 device: torch.device | str, num_gen: int, keep_features: bool,
                                 options: dict) -> tuple[FeatureStats, FeatureStats]:
    """Detector statistics of all real images (cached) and of ``num_gen`` generated composites."""
    real = real_features(dataset_kwargs, detector_path, device, keep_features=keep_features, **options)
    gen_options = {k: options[k] for k in ('batch_size', 'num_gpus', 'rank', 'progress') if k in options}
    detector = detector_lib.load_detector(detector_path, device, runs_code=options.get('detector_runs_code', False))
    gen = compute_generator_features(G, detector, device,
                                     num_gen=num_gen, keep_features=keep_features, **gen_options)
    return real, gen


def compute_fid(G: torch.nn.Module, dataset_kwargs: dict | None, detector_path: str | None,
                device: torch.device | str, *, num_gen: int, **options: Any) -> float:
    """FID between all real images and ``num_gen`` generated composites (NaN on ranks other than 0).

    ``options``: dataset, batch_size, num_gpus, rank, num_workers, progress, use_cache, detector_runs_code.
    """
    real, gen = _real_and_generated_features(G, dataset_kwargs, detector_path, device, num_gen, False, options)
    if options.get('rank', 0) != 0:
        return float('nan')
    return fid_from_stats(*real.mean_cov(), *gen.mean_cov())


def compute_kid(G: torch.nn.Module, dataset_kwargs: dict | None, detector_path: str | None,
                device: torch.device | str, *, num_gen: int, num_subsets: int = KID_NUM_SUBSETS,
                max_subset_size: int = KID_MAX_SUBSET_SIZE, **options: Any) -> float:
    """KID between all real images and ``num_gen`` generated composites (NaN on ranks other than 0)."""
    real, gen = _real_and_generated_features(G, dataset_kwargs, detector_path, device, num_gen, True, options)
    if options.get('rank', 0) != 0:
        return float('nan')
    return kid_from_features(real.features(), gen.features(), num_subsets, max_subset_size, device=device)
