"""Draw layers from a trained generator in Python: two functions.

    from training.generator_api import load_generator, draw_layers
    G = load_generator('runs/00000-photos-cpu-batch16')          # a run dir, a .pt snapshot or an original .pkl
    layers = draw_layers(G, seeds=[0, 1, 2], truncation_psi=0.7)  # dict(img=, fg=, bg=, mask=) of tensors
    masks = layers['mask']                                        # [3, 1, R, R] float32 in [0, 1]

Seed ``s`` draws the latent of sample ``s`` of a generated set with ``--seed=0`` (the file
``{s+1:06d}.png`` of ``generate_segmentation_samples.py`` and of the auto test's set, which
composes it with the training shift when the preset says so): a sample is a function of its
seed alone, whatever the other seeds or their order. The snapshot choice and loading are
:mod:`training.snapshots`'s, the latents :mod:`training.sample_set`'s, as for generation; nothing
a snapshot holds runs as code.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

import dnnlib
from training import sample_set, snapshots

BATCH = 32   # seeds per forward pass of draw_layers

def snapshot_for(path_or_run_dir: str) -> str:
    """The snapshot file ``path_or_run_dir`` names: a file as it is; in a run directory the one with
    the lowest ``fid10k_full`` when the run measured it, else the newest (as the auto test chooses).
    UserError when there is none."""
    return snapshots.choose_snapshot(str(path_or_run_dir), latest=True).path


def load_generator(path_or_run_dir: str, device: str = 'cpu') -> torch.nn.Module:
    """G_ema of a snapshot, in eval mode without gradients, on ``device`` ('cpu', 'cuda', 'cuda:N').

    ``path_or_run_dir``: a snapshot of this project (``network-snapshot-*.pt``), a snapshot of the
    original code (``.pkl``, converted in memory through the allow-list reader) or a run directory
    (:func:`snapshot_for`). The module maps z [N, G.z_dim] to the layers (see :func:`draw_layers`);
    ``G.img_resolution`` is R.
    """
    device = dnnlib.parse_device(device)
    snapshot = snapshots.load_any_snapshot(snapshot_for(path_or_run_dir), device)
    return snapshot['G_ema'].to(device).eval().requires_grad_(False)


def seed_latents(seeds: int | Iterable[int], z_dim: int) -> np.ndarray:
    """z of each seed: float32 [len(seeds), z_dim], standard normal; seed ``s`` gives the latent of
    sample ``s`` of a set generated with ``--seed=0``. UserError for a seed that is not an integer
    in 0..2^32-1."""
    seeds = [seeds] if isinstance(seeds, (int, np.integer)) else list(seeds)
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
            raise dnnlib.UserError(f'seed {seed!r} is not an integer in 0..{2 ** 32 - 1}')
    if not seeds:
        raise dnnlib.UserError('no seeds given; pass at least one')
    return sample_set.sample_latents(0, [int(seed) for seed in seeds], z_dim)


@torch.no_grad()
def draw_layers(G: torch.nn.Module, seeds: int | Iterable[int], truncation_psi: float = 1.0,
                noise_mode: str = 'const') -> dict[str, torch.Tensor]:
    """The layers of G for ``seeds`` (N of them, in the order given), as float32 tensors on the CPU:

    * ``bg``, ``fg``: [N, 3, R, R], about [-1, 1] where they are seen (not clipped: fg can reach
      tens where the mask hides it, since nothing trains it there; ``torch_utils.misc.to_uint8``
      clips to uint8 pixels);
    * ``mask``: [N, 1, R, R] in [0, 1], the foreground's opacity;
    * ``img``: [N, 3, R, R], the composite ``mask · fg + (1 − mask) · bg``.

    ``truncation_psi`` < 1 pulls each w toward the mean w (1 = none); ``noise_mode`` 'const' (the
    generated sets'), 'random' or 'none'. The same seed gives the same layers in any call.
    """
    if noise_mode not in ('const', 'random', 'none'):
        raise dnnlib.UserError(f'noise_mode must be const, random or none, got {noise_mode!r}')
    device = next(G.parameters()).device
    z = torch.from_numpy(seed_latents(seeds, G.z_dim))
    drawn = [G(batch.to(device), truncation_psi=truncation_psi, noise_mode=noise_mode)
             for batch in z.split(BATCH)]   # in batches: memory stays bounded for many seeds
    return {name: torch.cat([layers[name].float().cpu() for layers in drawn]) for name in ('img', 'fg', 'bg', 'mask')}
