"""The snapshots of a training run: which one to use, and loading it (METHOD.md §7).

:func:`choose_snapshot` reads ``metric-fid10k_full.jsonl`` of a run directory and picks the
snapshot with the lowest FID among those at or below ``topk`` kimg (``--topk`` is a kimg bound,
not a sample count), optionally with a given ILS sigma, or the one named by ``pkl_idx``. A run
directory of the original code (``network-snapshot-KKKKKK.pkl`` and its metric file) is read the
same way; :func:`load_any_snapshot` converts its pickle in memory when it is used. Generation
(metrics/generate.py), the auto test and the Python API (training/generator_api.py) choose here.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import dnnlib
from torch_utils import checkpoint


def read_metric_lines(path: str) -> list[dict]:
    """Parse a ``metric-*.jsonl`` file; a malformed line is a user-facing error naming the line."""
    lines = []
    try:
        with open(path, encoding='utf-8') as f:
            texts = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise dnnlib.UserError(f'cannot read {path} ({type(err).__name__}); the file is damaged: remove it and '
                               f'measure the snapshots again, or pass --latest / --pkl_idx') from None
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
            value = entry['results'][entry['metric']]
            valid = (isinstance(entry['snapshot_pkl'], str) and (value is None or _is_number(value))
                     and (entry.get('sigma') is None or _is_number(entry['sigma'])))
        except (*dnnlib.JSON_READ_ERRORS, KeyError, TypeError):
            valid = False
        if not valid:
            raise dnnlib.UserError(f'{path}, line {number}: not a metric line of this project; '
                                   f'fix or remove the line')
        try:
            checkpoint.snapshot_nimg(entry['snapshot_pkl'])
        except dnnlib.UserError:
            raise dnnlib.UserError(f'{path}, line {number}: its snapshot_pkl {entry["snapshot_pkl"]!r} is not named '
                                   f'network-snapshot-KKKKKK.pt (or …_III.pt); fix or remove the line') from None
        lines.append(entry)
    return lines


def _is_number(value) -> bool:
    """A JSON number (not a boolean). NaN and ±inf (older files; now written as null) are read, and
    never chosen: :func:`choose_snapshot` takes finite values only."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class SnapshotChoice:
    """The snapshot chosen for generation and why."""
    path: str
    kimg: float  # images seen / 1000, from the file name (0.272 for network-snapshot-000000_272.pt)
    metric_value: float | None  # FID of the snapshot, None when chosen without a metric file
    sigma: float | None
    reason: str


def metric_lines_by_snapshot(entries: list[dict]) -> dict[int, dict]:
    """The last line of each snapshot, keyed by its images seen (:func:`checkpoint.snapshot_nimg`).

    In runs made before snapshots had distinct names, several lines name one file, which each
    later snapshot overwrote: only the last line measured the weights the file holds now.
    """
    return {checkpoint.snapshot_nimg(entry['snapshot_pkl']): entry for entry in entries}


ORIGINAL_SNAPSHOT_GLOB = 'network-snapshot-*.pkl'  # the original code's snapshots (pickles)


def run_snapshots(run_dir: str) -> dict[int, str]:
    """The snapshot files of a run directory by images seen: this project's ``.pt`` and the original
    code's ``.pkl`` (converted in memory by :func:`load_any_snapshot` when used). Where both exist
    for one kimg, the ``.pt`` is taken: it is the converted copy, read without unpickling."""
    found = {checkpoint.snapshot_nimg(p): p for p in checkpoint.list_snapshots(run_dir, ORIGINAL_SNAPSHOT_GLOB)}
    found.update((checkpoint.snapshot_nimg(p), p) for p in checkpoint.list_snapshots(run_dir))
    return found


def choose_snapshot(network: str, topk: float | None = None, pkl_idx: float | None = None,
                    sigma: float | None = None, latest: bool = False,
                    metric: str = 'fid10k_full') -> SnapshotChoice:
    """Pick the snapshot to generate from (METHOD.md §7).

    ``network`` is a snapshot file (used as is; an original ``.pkl`` too) or a run directory, of
    this project or of the original code (:func:`run_snapshots`). In a run directory: ``pkl_idx``
    selects the snapshot of exactly that kimg (0.272 names ``…000000_272.pt``); otherwise the
    lowest ``metric`` among the lines of ``metric-<metric>.jsonl`` with kimg ≤ ``topk`` (if given)
    and σ = ``sigma`` (if given). Without a metric file only ``latest=True`` (the newest snapshot)
    is accepted, so that nobody evaluates an arbitrary snapshot by accident. ``pkl_idx`` and
    ``topk`` exclude each other, as in the original.
    """
    if pkl_idx is not None and topk is not None:
        raise dnnlib.UserError(f'--pkl_idx {pkl_idx:g} names one snapshot and --topk {topk:g} bounds the choice by '
                               f'{metric}; give one of them (the original refuses both too)')
    if os.path.isfile(network):
        return SnapshotChoice(network, checkpoint.snapshot_kimg(network), None, None, 'snapshot file given')
    if not os.path.isdir(network):
        raise dnnlib.UserError(f'--network {network} is neither a snapshot file nor a run directory')
    run_dir = network
    snapshots = run_snapshots(run_dir)
    if not snapshots:
        raise dnnlib.UserError(f'no {checkpoint.SNAPSHOT_GLOB} (nor the original code\'s {ORIGINAL_SNAPSHOT_GLOB}) '
                               f'in {run_dir}; is it a training run directory?')

    metric_file = os.path.join(run_dir, f'metric-{metric}.jsonl')
    entries = metric_lines_by_snapshot(read_metric_lines(metric_file) if dnnlib.check_regular_file(metric_file) else [])

    if pkl_idx is not None:
        nimg = round(pkl_idx * 1000)
        if nimg not in snapshots or abs(pkl_idx * 1000 - nimg) > 1e-6:   # 0.0161 names no snapshot, not 0.016
            raise dnnlib.UserError(f'--pkl_idx {pkl_idx:g}: no {checkpoint.snapshot_name(nimg)} in {run_dir}; '
                                   f'available: {", ".join(checkpoint.format_kimg(k) for k in sorted(snapshots))}')
        entry = entries.get(nimg)
        return SnapshotChoice(snapshots[nimg], nimg / 1000, entry['results'][metric] if entry else None,
                              entry.get('sigma') if entry else None, f'--pkl_idx {pkl_idx:g}')

    if not entries:
        if latest:
            nimg = max(snapshots)
            return SnapshotChoice(snapshots[nimg], nimg / 1000, None, None, 'latest snapshot (--latest)')
        raise dnnlib.UserError(f'no {metric} results in {metric_file}; pass --latest to use the newest '
                               f'snapshot, or --pkl_idx to name one')

    candidates = []
    for nimg, entry in entries.items():
        if topk is not None and nimg > round(topk * 1000):
            continue
        stored_sigma = entry.get('sigma')
        if sigma is not None and not math.isclose(math.nan if stored_sigma is None else stored_sigma, sigma,
                                                  rel_tol=1e-6):
            continue
        candidates.append((entry['results'][metric], nimg, entry))
    if not candidates:
        raise dnnlib.UserError(f'no line of {metric_file} matches --topk {topk} / --sigma {sigma}; '
                               f'relax the filters')
    # A NaN, ±inf or null FID (a diverged network, a failed measurement) is no measurement: min()
    # would keep a NaN that comes first, so such lines are never candidates.
    candidates = [(float(value), nimg, entry) for value, nimg, entry in candidates
                  if value is not None and math.isfinite(value)]
    if not candidates:
        raise dnnlib.UserError(f'every {metric} of {metric_file} that matches --topk {topk} / --sigma {sigma} is '
                               f'NaN, infinite or missing (did the training diverge?); pass --pkl_idx to name a '
                               f'snapshot, or --latest')
    value, nimg, entry = min(candidates, key=lambda c: (c[0], c[1]))
    if nimg not in snapshots:
        raise dnnlib.UserError(f'{metric_file} names {entry["snapshot_pkl"]}, which is missing from {run_dir}')
    filters = [f'kimg <= {topk:g}' if topk is not None else None, f'sigma = {sigma}' if sigma is not None else None]
    where = ', '.join(f for f in filters if f) or 'all snapshots'
    return SnapshotChoice(snapshots[nimg], nimg / 1000, value, entry.get('sigma'), f'lowest {metric} ({where})')


def load_any_snapshot(path: str, device: str) -> dict:
    """A snapshot of this project (``.pt``) or of the original code (``.pkl``, converted in memory)."""
    if path.endswith('.pkl'):
        from training import legacy_convert
        return legacy_convert.load_original_snapshot(path, device=device)
    return checkpoint.load_snapshot(path, device=device)
