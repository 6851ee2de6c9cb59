"""The on-disk format of a sample set: generated layers, or exported ground-truth pairs.

A set is a folder holding one subfolder per layer (:data:`LAYER_FOLDERS`, or ``img``/``mask``
for exported pairs) with one PNG per sample named by :func:`sample_file` (``000001.png``, …),
and a ``meta.json`` giving at least ``n`` (the sample count) and ``layers``. Generation
(metrics/generate.py) and ``python -m training.dataset --export`` write it; the segmentation and
MI evaluations read it back through :func:`complete_samples`. A folder without a usable
meta.json is a user's own pairs, read as they are.

Every PNG is written through a temporary file (``.tmp-*``), so a killed writer leaves no
half-written sample under its final name; :func:`remove_temp_files` clears what it left.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import torch

import dnnlib
from torch_utils import misc

LAYER_FOLDERS = ('img', 'mask', 'fg', 'bg', 'fg_masked')


def sample_file(index: int) -> str:
    """1-based, 6-digit file name of the sample with 0-based ``index``."""
    return f'{index + 1:06d}.png'


def sample_latents(seed: int, indices: list[int], z_dim: int) -> np.ndarray:
    """z for samples ``indices`` [len, z_dim] float32: sample i depends on (seed, i) only."""
    return np.stack([np.random.default_rng([seed, i]).standard_normal(z_dim) for i in indices]).astype(np.float32)


def encode_mask(mask: torch.Tensor) -> np.ndarray:
    """Masks [N, 1, H, W] float in [0, 1] → [N, H, W, 3] uint8 grey, round(255·m): the mask files
    of generated sets and exported pairs alike."""
    return misc.to_uint8(mask, low=0.0, high=1.0)


def write_png(path: str, array: np.ndarray) -> None:
    """Write uint8 [H, W] or [H, W, 3] as a PNG (fast compression), atomically."""
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format='PNG', compress_level=1)
    # Temporary file + rename: a killed run never leaves a half-written PNG under the final name;
    # a failed write removes its temporary file. No fsync: a lost sample is written again on resume.
    dnnlib.write_bytes_atomic(path, buffer.getvalue(), fsync=False)


def layer_files(outdir: str, layer: str) -> set[str]:
    """Names of the finished sample files of one layer folder (no temporary files)."""
    folder = os.path.join(outdir, layer)
    return {name for name in os.listdir(folder) if not dnnlib.is_temp_file(name)} if os.path.isdir(folder) else set()


def missing_indices(outdir: str, n: int, layers: tuple[str, ...] = LAYER_FOLDERS) -> list[int]:
    """Indices of samples with at least one of ``layers`` missing."""
    present = set.intersection(*(layer_files(outdir, layer) for layer in layers))
    return [i for i in range(n) if sample_file(i) not in present]


def remove_temp_files(outdir: str) -> None:
    """Delete what a killed generation left half-written: ``.tmp-*`` files (and the older ``latents.npy.tmp``)."""
    for folder in (outdir, *(os.path.join(outdir, layer) for layer in LAYER_FOLDERS)):
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if dnnlib.is_temp_file(name) or name == 'latents.npy.tmp':
                    os.remove(os.path.join(folder, name))


def read_meta(path: str) -> dict | None:
    """The ``meta.json`` of a sample folder (None when there is none)."""
    meta_path = os.path.join(path, 'meta.json')
    if not dnnlib.check_regular_file(meta_path):
        return None
    try:
        with open(meta_path, encoding='utf-8') as f:
            meta = json.load(f)
    except dnnlib.JSON_READ_ERRORS:
        raise dnnlib.UserError(f'{meta_path} is not valid JSON; restore it, or remove it to read the folder '
                               f'as it is') from None
    if not isinstance(meta, dict):
        raise dnnlib.UserError(f'{meta_path} is not a JSON object; restore it, or remove it to read the folder '
                               f'as it is')
    return meta


def resume_command(path: str, meta: dict) -> str:
    """The generation command that completes the set at ``path`` (from its meta.json)."""
    options = [f'--network={meta.get("snapshot", "SNAPSHOT")}', f'--n={meta["n"]}', f'--outdir={path}']
    if meta.get('seed', 0) != 0:
        options.append(f'--seed={meta["seed"]}')
    if meta.get('truncation_psi', 1.0) != 1.0:
        options.append(f'--trunc={meta["truncation_psi"]}')
    if meta.get('noise_mode', 'const') != 'const':
        options.append(f'--noise-mode={meta["noise_mode"]}')
    return 'python generate_segmentation_samples.py ' + ' '.join(options) + ' --resume'


def complete_samples(path: str, layers: tuple[str, ...], allow_partial: bool = False,
                     warn: bool = False) -> list[str] | None:
    """File names (``000001.png``, …) of the samples of a generated set present in every folder of
    ``layers``; None for a folder that is not one (no meta.json with ``n`` and ``layers``, as
    generation and ``training.dataset --export`` write it: a user's own pairs, read as they are).

    A set holding fewer than its meta.json's ``n`` is refused with a UserError saying how many
    are there and how to complete it, unless ``allow_partial`` (then, with ``warn``, one warning
    line on stderr gives the count).
    """
    meta = read_meta(path)
    if meta is None or type(meta.get('n')) is not int or not isinstance(meta.get('layers'), list):
        return None
    if not 1 <= meta['n'] <= dnnlib.MAX_COUNT:
        raise dnnlib.UserError(f'{os.path.join(path, "meta.json")} gives n={meta["n"]}, not a sample count in '
                               f'1..{dnnlib.MAX_COUNT}; restore it, or remove it to read the folder as it is')
    n = meta['n']
    missing = set(missing_indices(path, n, layers))
    names = [sample_file(i) for i in range(n) if i not in missing]
    if len(names) < n:
        if not allow_partial:
            how = ('export it again into an empty folder' if meta.get('ground_truth') else
                   f'{resume_command(path, meta)} completes it')
            raise dnnlib.UserError(f'{path} holds {len(names)} of the {n} samples of its meta.json '
                                   f'(in {", ".join(f"{layer}/" for layer in layers)}): an interrupted set; '
                                   f'{how}, or pass --allow-partial to use the {len(names)}')
        if warn:
            dnnlib.warn(f'{path} holds {len(names)} of the {n} samples of its meta.json; using those '
                        f'{len(names)} (--allow-partial)')
    extra = samples_beyond(path, layers[0], n)
    if extra:   # meta.json's n disagrees with the folder: said, never used quietly
        dnnlib.warn(f'{path} holds {len(extra)} sample(s) beyond the n={n} of its meta.json (e.g. {layers[0]}/'
                    f'{extra[0]}); only the first {n} are read: fix n in meta.json, or remove the others')
    return names


def samples_beyond(path: str, layer: str, n: int) -> list[str]:
    """Sample files (``NNNNNN.png``) of ``path/layer`` whose index is ``n`` or more, sorted."""
    try:
        files = os.listdir(os.path.join(path, layer))
    except OSError:
        return []
    return sorted(f for f in files if len(f) == 10 and f.endswith('.png') and f[:6].isdecimal() and int(f[:6]) > n)
