"""From a trained run to a synthetic segmentation set (METHOD.md §7).

Two steps, each a function a test can call:

* :func:`training.snapshots.choose_snapshot` picks the snapshot of a run directory (the lowest
  FID at or below ``--topk`` kimg, or the one ``--pkl_idx`` names; original run directories too);
* :func:`generate_dataset` draws ``n`` samples from G_ema and writes every layer as PNG.

Every sample is a function of ``(seed, index)`` alone, so a set is the same whatever the batch
size, and an interrupted generation can be resumed file by file.

With ``perturb`` (``--perturb``; off in the original and by default) every sample is composed
with the run's own training perturbation (:class:`training.networks.PerturbedComposition`, read
from the snapshot): fg and mask move together over the unchanged bg, as the discriminator saw
them, so the set holds the object at the positions (and, with an affine perturbation, the
scales and angles) that training judged realistic, not only where G draws it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

import dnnlib
from metrics import roles as layer_roles
from torch_utils import checkpoint, misc
from training.sample_set import (LAYER_FOLDERS, encode_mask, missing_indices, read_meta, remove_temp_files,
                                 sample_file, sample_latents, write_png)
from training.snapshots import SnapshotChoice, choose_snapshot, load_any_snapshot


# ----------------------------------------------------------------------------------------------
# Encoding and generation.

def encode_layers(layers: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The generator's layers as the uint8 arrays written per folder of :data:`LAYER_FOLDERS`."""
    fg_over_white = layers['mask'] * layers['fg'] + (1 - layers['mask'])  # white = 1 in [-1, 1]
    return {  # encoded as the original: truncated 127.5·x + 128; the mask grey RGB, round(255·m)
        'img': misc.to_uint8(layers['img']),
        'mask': encode_mask(layers['mask']),
        'fg': misc.to_uint8(layers['fg']),
        'bg': misc.to_uint8(layers['bg']),
        'fg_masked': misc.to_uint8(fg_over_white),
    }


@dataclass
class GenerationOptions:
    """What defines a synthetic set; stored in ``meta.json`` and checked on ``--resume``."""
    snapshot: str
    kimg: float
    n: int
    seed: int = 0
    truncation_psi: float = 1.0
    noise_mode: str = 'const'
    snapshot_sha256: str | None = None  # the snapshot's content: its path may hold other weights later
    perturb: dict | None = None         # PerturbedComposition arguments applied to every sample, or None
    roles: str = 'as_drawn'             # metrics.roles rule: which layer is the object, chosen per sample


# The meta.json fields that change the samples: a set is resumed only if all of them agree.
RESUME_KEYS = ('snapshot_sha256', 'generator', 'z_dim', 'resolution', 'layers', 'n', 'seed', 'truncation_psi',
               'noise_mode', 'perturb', 'roles')
# A key an older meta.json lacks reads as this value (the behaviour before the key existed).
RESUME_DEFAULTS = {'roles': 'as_drawn'}

# The arguments of PerturbedComposition a snapshot's training options may give (all magnitudes >= 0).
PERTURB_FIELDS = ('xint_max', 'bg_contrast', 'xfrac_max', 'rotate_max', 'scale_max')


def training_perturbation(data: dict, path: str) -> dict:
    """The perturbation a snapshot was trained with: PerturbedComposition's arguments, read from
    ``data['training_options']['composition_kwargs']`` as plain numbers (never a class by name).

    UserError naming ``path`` when the snapshot records none or records something else.
    """
    options = data.get('training_options') if isinstance(data, dict) else None
    kwargs = options.get('composition_kwargs') if isinstance(options, dict) else None
    if not isinstance(kwargs, dict):
        raise dnnlib.UserError(f'{path} records no training perturbation (training_options.composition_kwargs); '
                               f'generate without --perturb')
    if kwargs.get('class_name', 'training.networks.PerturbedComposition') != 'training.networks.PerturbedComposition':
        raise dnnlib.UserError(f'{path}: its training perturbation is {kwargs.get("class_name")!r}, not '
                               f'PerturbedComposition; generate without --perturb')
    values = {name: value for name, value in kwargs.items() if name != 'class_name'}
    return checked_perturbation({}, values, f'{path}: training perturbation', '; generate without --perturb')


def checked_perturbation(base: dict, values: dict, where: str, advice: str = '') -> dict:
    """``base`` (PerturbedComposition's arguments) with ``values`` put in, as floats; UserError
    starting with ``where`` (and ending with ``advice``) for a field not in :data:`PERTURB_FIELDS`, a
    value that is not a finite number >= 0, or a combination PerturbedComposition refuses."""
    perturb = dict(base)
    for name, value in values.items():
        if name not in PERTURB_FIELDS or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise dnnlib.UserError(f'{where} {name}={value!r} is not one of '
                                   f'{", ".join(PERTURB_FIELDS)} with a finite value >= 0{advice}')
        perturb[name] = float(value)
    try:
        from training.networks import PerturbedComposition
        PerturbedComposition(**perturb)
    except ValueError as err:
        raise dnnlib.UserError(f'{where} {perturb} is invalid ({err}){advice}') from None
    return perturb


def widened_perturbation(trained: dict | None, overrides: dict) -> dict:
    """The training perturbation with some of its magnitudes replaced (``auto_test_perturb`` given as
    a dict in a preset): PerturbedComposition's arguments (:func:`checked_perturbation`)."""
    return checked_perturbation(trained or {}, overrides, 'auto_test_perturb:')


def sample_perturbations(seed: int, indices: list[int], eps_dim: int) -> np.ndarray:
    """Perturbation draws for samples ``indices`` [len, eps_dim] float32, uniform in [-1, 1]: sample i
    depends on (seed, i) only, from a stream apart from its latent's."""
    return np.stack([np.random.default_rng([seed, i, 1]).uniform(-1, 1, eps_dim) for i in indices]
                    ).astype(np.float32).reshape(len(indices), eps_dim)



def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (read in 16 MB chunks)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 24), b''):
            digest.update(chunk)
    return digest.hexdigest()


def generator_settings(G: torch.nn.Module) -> dict | None:
    """The generator's class and constructor arguments as JSON data (None for an unrecorded module)."""
    if not hasattr(G, 'init_kwargs'):
        return None
    return json.loads(json.dumps({'class': G.init_class, 'kwargs': G.init_kwargs}))


def check_resumable(outdir: str, previous: dict, meta: dict) -> None:
    """UserError naming the first field of :data:`RESUME_KEYS` in which ``previous`` (the set's
    meta.json) differs from ``meta`` (this run's): resuming would mix two kinds of samples."""
    for key in RESUME_KEYS:
        old, new = previous.get(key, RESUME_DEFAULTS.get(key)), meta.get(key)
        if old == new:
            continue
        if key == 'snapshot_sha256' and old is None:
            raise dnnlib.UserError(f'cannot resume {outdir}: its meta.json records no snapshot_sha256 (an older '
                                   f'version made it), so its snapshot cannot be checked; choose another --outdir')
        if key == 'snapshot_sha256':
            raise dnnlib.UserError(f'cannot resume {outdir}: it was made from another snapshot '
                                   f'({previous.get("snapshot")}, snapshot_sha256 {str(old)[:12]}…), not from '
                                   f'{meta["snapshot"]} ({new[:12]}…); pass that snapshot, or choose another '
                                   f'--outdir')
        raise dnnlib.UserError(f'cannot resume {outdir}: it was made with {key}={old!r}, not {new!r}')


def generate_dataset(G: torch.nn.Module, outdir: str, options: GenerationOptions, batch_size: int = 64,
                     device: torch.device | str = 'cpu', resume: bool = False, progress: bool = True) -> dict:
    """Write ``options.n`` samples of G (G_ema) into ``outdir``/{img,mask,fg,bg,fg_masked}/.

    Refuses an existing ``outdir`` unless ``resume``; with ``resume`` only the missing files
    are generated, after checking that ``meta.json`` describes the same set (:data:`RESUME_KEYS`).
    Every file is written through a temporary file; on any failure none is left. Returns the meta.
    """
    meta_path = os.path.join(outdir, 'meta.json')
    meta = dict(asdict(options), layers=list(LAYER_FOLDERS), z_dim=int(G.z_dim),
                resolution=int(G.img_resolution), generator=generator_settings(G), latents='latents.npy')
    if os.path.exists(outdir) and os.listdir(outdir):
        if not resume:
            raise dnnlib.UserError(f'{outdir} already exists; pass --resume to complete it, or choose '
                                   f'another --outdir (it is never deleted)')
        previous = read_meta(outdir)
        if previous is None:
            raise dnnlib.UserError(f'{outdir} exists but has no meta.json: it is not a synthetic set to resume')
        check_resumable(outdir, previous, meta)
        remove_temp_files(outdir)
    for layer in LAYER_FOLDERS:
        os.makedirs(os.path.join(outdir, layer), exist_ok=True)
    dnnlib.write_bytes_atomic(meta_path, dnnlib.json_text(meta, indent=2).encode('utf-8'))
    latents_path = os.path.join(outdir, 'latents.npy')
    if not os.path.isfile(latents_path):
        buffer = io.BytesIO()
        np.save(buffer, sample_latents(options.seed, list(range(options.n)), G.z_dim))
        dnnlib.write_bytes_atomic(latents_path, buffer.getvalue())

    todo = missing_indices(outdir, options.n)
    G = G.to(device).eval()
    composition = None
    if options.perturb is not None:
        from training.networks import PerturbedComposition
        composition = PerturbedComposition(**options.perturb)
    bar = dnnlib.progress_bar(None, progress, total=len(todo), unit='img', desc='generating')
    start = time.time()
    # PNG encoding runs in threads (it releases the GIL) while the next batch is generated: batch k
    # is generated while batch k - 1 is written, and k is submitted once k - 1 is on disk, so at most
    # two batches are held. On a failure (a full disk, Ctrl-C) the writes not yet started are
    # cancelled and the running ones finish or remove their temporary file before the error goes on.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)

    def finish(writes: list[concurrent.futures.Future]) -> None:
        for future in writes:
            future.result()
        bar.update(len(writes) // len(LAYER_FOLDERS))

    try:
        pending: list[concurrent.futures.Future] = []
        for begin in range(0, len(todo), batch_size):
            indices = todo[begin:begin + batch_size]
            z = torch.from_numpy(sample_latents(options.seed, indices, G.z_dim)).to(device)
            with torch.no_grad():
                layers = G(z, truncation_psi=options.truncation_psi, noise_mode=options.noise_mode)
                layers, _ = layer_roles.apply_roles(options.roles, layers)
                if composition is not None:
                    eps = torch.from_numpy(sample_perturbations(options.seed, indices, composition.eps_dim))
                    layers = composition(layers, eps.to(device))
            arrays = encode_layers(layers)
            finish(pending)
            pending = [pool.submit(write_png, os.path.join(outdir, layer, sample_file(index)), batch[j])
                       for layer, batch in arrays.items() for j, index in enumerate(indices)]
        finish(pending)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    meta['seconds'] = round(time.time() - start, 2)
    meta['generated_now'] = len(todo)
    return meta


def default_outdir(snapshot_path: str, perturb: bool = False) -> str:
    """``<folder of the snapshot>/synthetic_data-<tag>[-perturbed]`` (:func:`synthetic_folder_name`)."""
    return os.path.join(os.path.dirname(os.path.abspath(snapshot_path)), synthetic_folder_name(snapshot_path, perturb))


def synthetic_folder_name(snapshot_path: str, perturb: bool = False) -> str:
    """``synthetic_data-000200`` for ``network-snapshot-000200.pt`` (its tag: one folder per snapshot),
    ``synthetic_data-000200-perturbed`` for a set composed with the training perturbation."""
    tag = checkpoint.snapshot_tag(checkpoint.snapshot_nimg(snapshot_path))
    return f'synthetic_data-{tag}' + ('-perturbed' if perturb else '')


def generator_masks(snapshot_path: str, n: int, seed: int = 0, truncation_psi: float = 1.0,
                    noise_mode: str = 'const', batch_size: int = 64, device: str | None = None,
                    roles: str = 'as_drawn') -> np.ndarray:
    """G_ema's own masks for samples 0 … n−1 of ``seed``, before any perturbation: float32
    [n, R, R] in [0, 1].

    The latents are a generated set's (:func:`sample_latents`), so for a set made with
    ``--perturb`` these are its masks as G drew them, before the training shift moved them: the
    layout G itself has learnt.
    """
    device = dnnlib.parse_device(device)
    G = load_any_snapshot(snapshot_path, device)['G_ema'].to(device).eval()
    masks = []
    for begin in range(0, n, batch_size):
        z = torch.from_numpy(sample_latents(seed, list(range(begin, min(n, begin + batch_size))), G.z_dim))
        with torch.no_grad():
            layers = G(z.to(device), truncation_psi=truncation_psi, noise_mode=noise_mode)
            layers, _ = layer_roles.apply_roles(roles, layers)
        masks.append(layers['mask'][:, 0].float().cpu().numpy())
    return np.concatenate(masks)


# Bytes per latent float while sample_latents draws them: float64 rows, their stack, the float32 copy.
LATENT_BYTES_PER_FLOAT = 20


def check_generation_memory(G: torch.nn.Module, batch: int, device: str, n: int = 0) -> None:
    """UserError naming --n when the latents of ``n`` samples (drawn at once, in RAM) or --batch
    when one batch of G's feature maps (both synthesis networks, no gradients) cannot fit in
    the free memory."""
    from torch_utils import memory
    from training import networks
    z_dim = getattr(G, 'z_dim', None)
    if isinstance(z_dim, int) and n:
        memory.check_fits(n * z_dim * LATENT_BYTES_PER_FLOAT, f'drawing the latents of --n={n} samples (z_dim {z_dim})',
                          'cpu', advice='choose a smaller --n')
    kwargs = {'img_resolution': 64, 'channel_base': 16384, 'channel_max': 256, **(getattr(G, 'init_kwargs', None) or {})}
    try:
        floats = networks.activation_floats(**kwargs)
    except (TypeError, ValueError, OverflowError):
        return   # not a LayeredGenerator record: nothing to size it by
    memory.check_fits(2 * memory.FLOAT_BYTES * floats * batch,
                      f'generation with --batch={batch} at {kwargs["img_resolution"]} px', device,
                      advice='choose a smaller --batch')


def generate_from_network(network: str, n: int, outdir: str | None = None, topk: float | None = None,
                          pkl_idx: float | None = None, sigma: float | None = None, latest: bool = False,
                          seed: int = 0, truncation_psi: float = 1.0, noise_mode: str = 'const',
                          batch_size: int = 64, device: str | None = None, resume: bool = False,
                          progress: bool = True, choice: SnapshotChoice | None = None,
                          perturb: bool | dict = False, roles: str = 'as_drawn') -> tuple[str, dict]:
    """Choose a snapshot (unless ``choice`` is given), load its G_ema and write the set; with
    ``perturb``, every sample composed with the snapshot's training perturbation.

    ``perturb`` may also be a dict of PerturbedComposition magnitudes that replace the training
    ones (:func:`widened_perturbation`). ``roles`` names a :mod:`metrics.roles` rule applied to G's
    layers before any perturbation ('as_drawn' keeps them). Returns ``(outdir, meta)``.
    """
    if n <= 0:
        raise dnnlib.UserError(f'--n must be positive, got {n}')
    if noise_mode not in ('const', 'random', 'none'):
        raise dnnlib.UserError(f'--noise-mode must be const, random or none, got {noise_mode!r}')
    choice = choice or choose_snapshot(network, topk=topk, pkl_idx=pkl_idx, sigma=sigma, latest=latest)
    device = dnnlib.parse_device(device)
    snapshot = load_any_snapshot(choice.path, device)
    G = snapshot['G_ema']
    check_generation_memory(G, min(batch_size, n), device, n)
    perturbation = training_perturbation(snapshot.get('data') or {}, choice.path) if perturb else None
    if isinstance(perturb, dict):
        perturbation = widened_perturbation(perturbation, perturb)
    outdir = outdir or default_outdir(choice.path, perturb)
    print(f'Snapshot: {choice.path} ({choice.reason}; fid={choice.metric_value}, sigma={choice.sigma})')
    options = GenerationOptions(snapshot=os.path.abspath(choice.path), kimg=choice.kimg, n=n, seed=seed,
                                truncation_psi=truncation_psi, noise_mode=noise_mode,
                                snapshot_sha256=file_sha256(choice.path), perturb=perturbation, roles=roles)
    meta = generate_dataset(G, outdir, options, batch_size=batch_size, device=device, resume=resume,
                            progress=progress)
    meta.update(fid=choice.metric_value, sigma=choice.sigma, reason=choice.reason)
    dnnlib.write_bytes_atomic(os.path.join(outdir, 'meta.json'), dnnlib.json_text(meta, indent=2).encode('utf-8'))
    print(f'Wrote {n} samples ({meta["generated_now"]} new) to {outdir}')
    return outdir, meta
