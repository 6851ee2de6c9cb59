"""From a trained run to a synthetic segmentation set (METHOD.md §7).

Two steps, each a function a test can call:

* :func:`choose_snapshot` reads ``metric-fid10k_full.jsonl`` of a run directory and picks the
  snapshot with the lowest FID among those at or below ``topk`` kimg (``--topk`` is a kimg bound,
  not a sample count), optionally with a given ILS sigma, or the one named by ``pkl_idx``.
* :func:`generate_dataset` draws ``n`` samples from G_ema and writes every layer as PNG.

Every sample is a function of ``(seed, index)`` alone, so a set is the same whatever the batch
size, and an interrupted generation can be resumed file by file.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

import dnnlib
from torch_utils import checkpoint, misc

LAYER_FOLDERS = ('img', 'mask', 'fg', 'bg', 'fg_masked')


# ----------------------------------------------------------------------------------------------
# Choosing the snapshot.

def read_metric_lines(path: str) -> list[dict]:
    """Parse a ``metric-*.jsonl`` file; a malformed line is a user-facing error naming the line."""
    lines = []
    with open(path, encoding='utf-8') as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                entry = json.loads(text)
                entry['results'][entry['metric']]
                entry['snapshot_pkl']
            except (ValueError, KeyError, TypeError):
                raise dnnlib.UserError(f'{path}, line {number}: not a metric line of this project; '
                                       f'fix or remove the line') from None
            lines.append(entry)
    return lines


@dataclass
class SnapshotChoice:
    """The snapshot chosen for generation and why."""
    path: str
    kimg: int
    metric_value: float | None  # FID of the snapshot, None when chosen without a metric file
    sigma: float | None
    reason: str


def choose_snapshot(network: str, topk: int | None = None, pkl_idx: int | None = None,
                    sigma: float | None = None, latest: bool = False,
                    metric: str = 'fid10k_full') -> SnapshotChoice:
    """Pick the snapshot to generate from (METHOD.md §7).

    ``network`` is a snapshot file (used as is; an original ``.pkl`` too) or a run directory. In a run directory:
    ``pkl_idx`` selects the snapshot of that kimg; otherwise the lowest ``metric`` among the
    lines of ``metric-<metric>.jsonl`` with kimg ≤ ``topk`` (if given) and σ = ``sigma`` (if
    given). Without a metric file only ``latest=True`` (the newest snapshot) is accepted, so
    that nobody evaluates an arbitrary snapshot by accident.
    """
    if os.path.isfile(network):
        return SnapshotChoice(network, checkpoint.snapshot_kimg(network), None, None, 'snapshot file given')
    if not os.path.isdir(network):
        raise dnnlib.UserError(f'--network {network} is neither a snapshot file nor a run directory')
    run_dir = network
    snapshots = {checkpoint.snapshot_kimg(p): p for p in checkpoint.list_snapshots(run_dir)}
    if not snapshots:
        raise dnnlib.UserError(f'no {checkpoint.SNAPSHOT_GLOB} in {run_dir}; is it a training run directory?')

    metric_file = os.path.join(run_dir, f'metric-{metric}.jsonl')
    entries = read_metric_lines(metric_file) if os.path.isfile(metric_file) else []

    if pkl_idx is not None:
        if pkl_idx not in snapshots:
            raise dnnlib.UserError(f'--pkl_idx {pkl_idx}: no network-snapshot-{pkl_idx:06d}.pt in {run_dir}; '
                                   f'available: {", ".join(str(k) for k in sorted(snapshots))}')
        entry = next((e for e in entries if checkpoint.snapshot_kimg(e['snapshot_pkl']) == pkl_idx), None)
        return SnapshotChoice(snapshots[pkl_idx], pkl_idx,
                              entry['results'][metric] if entry else None,
                              entry.get('sigma') if entry else None, f'--pkl_idx {pkl_idx}')

    if not entries:
        if latest:
            kimg = max(snapshots)
            return SnapshotChoice(snapshots[kimg], kimg, None, None, 'latest snapshot (--latest)')
        raise dnnlib.UserError(f'no {metric} results in {metric_file}; pass --latest to use the newest '
                               f'snapshot, or --pkl_idx to name one')

    candidates = []
    for entry in entries:
        kimg = checkpoint.snapshot_kimg(entry['snapshot_pkl'])
        if topk is not None and kimg > topk:
            continue
        if sigma is not None and not math.isclose(float(entry.get('sigma', math.nan)), sigma, rel_tol=1e-6):
            continue
        candidates.append((float(entry['results'][metric]), kimg, entry))
    if not candidates:
        raise dnnlib.UserError(f'no line of {metric_file} matches --topk {topk} / --sigma {sigma}; '
                               f'relax the filters')
    value, kimg, entry = min(candidates, key=lambda c: (c[0], c[1]))
    if kimg not in snapshots:
        raise dnnlib.UserError(f'{metric_file} names {entry["snapshot_pkl"]}, which is missing from {run_dir}')
    filters = [f'kimg <= {topk}' if topk is not None else None, f'sigma = {sigma}' if sigma is not None else None]
    where = ', '.join(f for f in filters if f) or 'all snapshots'
    return SnapshotChoice(snapshots[kimg], kimg, value, entry.get('sigma'), f'lowest {metric} ({where})')


# ----------------------------------------------------------------------------------------------
# Encoding and generation.

def encode_layers(layers: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The generator's layers as the uint8 arrays written per folder of :data:`LAYER_FOLDERS`."""
    fg_over_white = layers['mask'] * layers['fg'] + (1 - layers['mask'])  # white = 1 in [-1, 1]
    return {  # encoded as the original: truncated 127.5·x + 128; the mask grey RGB, round(255·m)
        'img': misc.to_uint8(layers['img']),
        'mask': misc.to_uint8(layers['mask'], low=0.0, high=1.0),
        'fg': misc.to_uint8(layers['fg']),
        'bg': misc.to_uint8(layers['bg']),
        'fg_masked': misc.to_uint8(fg_over_white),
    }


def sample_latents(seed: int, indices: list[int], z_dim: int) -> np.ndarray:
    """z for samples ``indices`` [len, z_dim] float32: sample i depends on (seed, i) only."""
    return np.stack([np.random.default_rng([seed, i]).standard_normal(z_dim) for i in indices]).astype(np.float32)


def sample_file(index: int) -> str:
    """1-based, 6-digit file name of the sample with 0-based ``index``."""
    return f'{index + 1:06d}.png'


def _save_png(path: str, array: np.ndarray) -> None:
    from PIL import Image
    tmp = os.path.join(os.path.dirname(path), '.tmp-' + os.path.basename(path))
    Image.fromarray(array).save(tmp, format='PNG', compress_level=1)
    os.replace(tmp, path)  # a killed run never leaves a half-written PNG under the final name


@dataclass
class GenerationOptions:
    """What defines a synthetic set; stored in ``meta.json`` and checked on ``--resume``."""
    snapshot: str
    kimg: int
    n: int
    seed: int = 0
    truncation_psi: float = 1.0
    noise_mode: str = 'const'


def missing_indices(outdir: str, n: int) -> list[int]:
    """Indices of samples with at least one layer file missing."""
    present = None
    for layer in LAYER_FOLDERS:
        names = set(os.listdir(os.path.join(outdir, layer))) if os.path.isdir(os.path.join(outdir, layer)) else set()
        present = names if present is None else present & names
    return [i for i in range(n) if sample_file(i) not in present]


def generate_dataset(G: torch.nn.Module, outdir: str, options: GenerationOptions, batch_size: int = 64,
                     device: torch.device | str = 'cpu', resume: bool = False, progress: bool = True) -> dict:
    """Write ``options.n`` samples of G (G_ema) into ``outdir``/{img,mask,fg,bg,fg_masked}/.

    Refuses an existing ``outdir`` unless ``resume``; with ``resume`` only the missing files
    are generated, after checking that ``meta.json`` describes the same set. Returns the meta.
    """
    meta_path = os.path.join(outdir, 'meta.json')
    meta = dict(asdict(options), layers=list(LAYER_FOLDERS), z_dim=int(G.z_dim),
                resolution=int(G.img_resolution), latents='latents.npy')
    if os.path.exists(outdir) and os.listdir(outdir):
        if not resume:
            raise dnnlib.UserError(f'{outdir} already exists; pass --resume to complete it, or choose '
                                   f'another --outdir (it is never deleted)')
        if not os.path.isfile(meta_path):
            raise dnnlib.UserError(f'{outdir} exists but has no meta.json: it is not a synthetic set to resume')
        with open(meta_path, encoding='utf-8') as f:
            previous = json.load(f)
        for key in ('kimg', 'n', 'seed', 'truncation_psi', 'noise_mode'):
            if previous.get(key) != meta[key]:
                raise dnnlib.UserError(f'cannot resume {outdir}: it was made with {key}={previous.get(key)!r}, '
                                       f'not {meta[key]!r}')
    for layer in LAYER_FOLDERS:
        os.makedirs(os.path.join(outdir, layer), exist_ok=True)
    dnnlib.write_bytes_atomic(meta_path, json.dumps(meta, indent=2).encode('utf-8'))
    latents_path = os.path.join(outdir, 'latents.npy')
    if not os.path.isfile(latents_path):
        with open(latents_path + '.tmp', 'wb') as f:
            np.save(f, sample_latents(options.seed, list(range(options.n)), G.z_dim))
        os.replace(latents_path + '.tmp', latents_path)

    todo = missing_indices(outdir, options.n)
    G = G.to(device).eval()
    bar = dnnlib.progress_bar(None, progress, total=len(todo), unit='img', desc='generating')
    start = time.time()
    # PNG encoding runs in threads (it releases the GIL) while the next batch is generated.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        pending: list[concurrent.futures.Future] = []
        for begin in range(0, len(todo), batch_size):
            indices = todo[begin:begin + batch_size]
            z = torch.from_numpy(sample_latents(options.seed, indices, G.z_dim)).to(device)
            with torch.no_grad():
                layers = G(z, truncation_psi=options.truncation_psi, noise_mode=options.noise_mode)
            arrays = encode_layers(layers)
            for layer, batch in arrays.items():
                for j, index in enumerate(indices):
                    pending.append(pool.submit(_save_png, os.path.join(outdir, layer, sample_file(index)), batch[j]))
            for future in pending:
                future.result()
            pending.clear()
            bar.update(len(indices))
    bar.close()
    meta['seconds'] = round(time.time() - start, 2)
    meta['generated_now'] = len(todo)
    return meta


def default_outdir(snapshot_path: str, kimg: int) -> str:
    """``<folder of the snapshot>/synthetic_data-KKKKKK``."""
    return os.path.join(os.path.dirname(os.path.abspath(snapshot_path)), f'synthetic_data-{kimg:06d}')


def generate_from_network(network: str, n: int, outdir: str | None = None, topk: int | None = None,
                          pkl_idx: int | None = None, sigma: float | None = None, latest: bool = False,
                          seed: int = 0, truncation_psi: float = 1.0, noise_mode: str = 'const',
                          batch_size: int = 64, device: str | None = None, resume: bool = False,
                          progress: bool = True, choice: SnapshotChoice | None = None) -> tuple[str, dict]:
    """Choose a snapshot (unless ``choice`` is given), load its G_ema and write the set.

    Returns ``(outdir, meta)``.
    """
    if n <= 0:
        raise dnnlib.UserError(f'--n must be positive, got {n}')
    if noise_mode not in ('const', 'random', 'none'):
        raise dnnlib.UserError(f'--noise-mode must be const, random or none, got {noise_mode!r}')
    choice = choice or choose_snapshot(network, topk=topk, pkl_idx=pkl_idx, sigma=sigma, latest=latest)
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if choice.path.endswith('.pkl'):  # a snapshot of the original code, converted in memory
        from torch_utils import legacy
        G = legacy.load_original_snapshot(choice.path, device=device)['G_ema']
    else:
        G = checkpoint.load_snapshot(choice.path, device=device)['G_ema']
    outdir = outdir or default_outdir(choice.path, choice.kimg)
    print(f'Snapshot: {choice.path} ({choice.reason}; fid={choice.metric_value}, sigma={choice.sigma})')
    options = GenerationOptions(snapshot=os.path.abspath(choice.path), kimg=choice.kimg, n=n, seed=seed,
                                truncation_psi=truncation_psi, noise_mode=noise_mode)
    meta = generate_dataset(G, outdir, options, batch_size=batch_size, device=device, resume=resume,
                            progress=progress)
    meta.update(fid=choice.metric_value, sigma=choice.sigma, reason=choice.reason)
    dnnlib.write_bytes_atomic(os.path.join(outdir, 'meta.json'), json.dumps(meta, indent=2).encode('utf-8'))
    print(f'Wrote {n} samples ({meta["generated_now"]} new) to {outdir}')
    return outdir, meta
