"""A latent walk as a video: background | foreground | mask | composite, side by side.

    python -m metrics.video --network=RUN_DIR --seeds=0-7 --out=walk.mp4

The walk visits the seeds in order and returns to the first, so the video loops: between two
seeds it moves linearly through both mapping networks' w (the StyleGAN way to interpolate, where
the layers change smoothly), eased with a cosine so that it rests a moment on each seed. Frame
``k · F`` (F = ``--frames-per-seed``) shows seed k exactly as :func:`training.generator_api.draw_layers`
draws it. The panels are G's layers as they are: the foreground over the whole frame (also where
the mask hides it), the mask in grey (white = foreground). H.264 through imageio-ffmpeg's own
ffmpeg; the file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from typing import Iterator

import click
import numpy as np
import torch

import dnnlib
from torch_utils import misc
from training import generator_api

PANELS = ('bg', 'fg', 'mask', 'img')   # left to right
GAP = 4                                # white pixels between two panels (even: H.264 wants even sides)
MIN_PANEL = 256                        # the default scale enlarges each panel to at least this side
MAX_SEEDS = 10_000
MAX_FRAMES = 1_000_000


def parse_seeds(text: str) -> list[int]:
    """``'0-7'`` → [0, …, 7]; ``'3,1,4-5'`` → [3, 1, 4, 5]. UserError for anything else."""
    seeds = []
    for part in str(text).split(','):
        match = re.fullmatch(r'(\d+)(?:-(\d+))?', part.strip())
        if match is None:
            raise dnnlib.UserError(f'--seeds={text}: {part.strip()!r} is not a seed or a range A-B; '
                                   f'e.g. --seeds=0-7 or --seeds=3,1,4')
        low, high = int(match[1]), int(match[2] or match[1])
        if not 0 <= low <= high < 2 ** 32 or len(seeds) + high - low + 1 > MAX_SEEDS:
            raise dnnlib.UserError(f'--seeds={text}: {part.strip()} is not a range A-B with 0 <= A <= B < 2^32 '
                                   f'(at most {MAX_SEEDS} seeds in all)')
        seeds += range(low, high + 1)
    return seeds


def default_scale(resolution: int) -> int:
    """The integer enlargement that makes a panel of side ``resolution`` at least :data:`MIN_PANEL`."""
    return max(1, math.ceil(MIN_PANEL / resolution))


def frame_size(resolution: int, scale: int) -> tuple[int, int]:
    """(width, height) of a frame: four panels of side ``resolution · scale`` and three gaps."""
    side = resolution * scale
    return len(PANELS) * side + (len(PANELS) - 1) * GAP, side


def compose_frames(layers: dict[str, torch.Tensor], scale: int) -> np.ndarray:
    """Layers (as :func:`training.generator_api.draw_layers` returns them, N samples) → frames
    [N, H, W, 3] uint8: the panels of :data:`PANELS`, each enlarged ``scale`` times (nearest)."""
    panels = [misc.to_uint8(layers[name], low=0.0, high=1.0) if name == 'mask' else misc.to_uint8(layers[name])
              for name in PANELS]
    panels = [p.repeat(scale, axis=1).repeat(scale, axis=2) for p in panels]
    count, side = panels[0].shape[0], panels[0].shape[1]
    gap = np.full((count, side, GAP, 3), 255, np.uint8)
    return np.concatenate([piece for p in panels for piece in (p, gap)][:-1], axis=2)


def walk_weights(num_seeds: int, frames_per_seed: int) -> list[tuple[int, int, float]]:
    """For each frame: (seed index a, seed index b, t in [0, 1)), the frame lying at t between a and
    b = a + 1 (the last seed walks back to the first); t eased as (1 − cos πs)/2, s = step / F."""
    return [(i, (i + 1) % num_seeds, (1 - math.cos(math.pi * step / frames_per_seed)) / 2)
            for i in range(num_seeds) for step in range(frames_per_seed)]


@torch.no_grad()
def walk_frames(G: torch.nn.Module, seeds: list[int], frames_per_seed: int, truncation_psi: float = 1.0,
                scale: int | None = None, batch: int = 16) -> Iterator[np.ndarray]:
    """The frames of the walk, [H, W, 3] uint8 each, ``len(seeds) · frames_per_seed`` of them."""
    if len(seeds) < 2:
        raise dnnlib.UserError(f'a walk needs at least two seeds, got {len(seeds)}; e.g. --seeds=0-7')
    device = next(G.parameters()).device
    z = torch.from_numpy(generator_api.seed_latents(seeds, G.z_dim)).to(device)
    ws_bg, ws_fg = G.mapping(z, truncation_psi, update_w_avg=False)   # [S, num_ws, w_dim] each
    scale = scale or default_scale(G.img_resolution)
    steps = walk_weights(len(seeds), frames_per_seed)
    for begin in range(0, len(steps), batch):
        chunk = steps[begin:begin + batch]
        a = torch.tensor([s[0] for s in chunk], device=device)
        b = torch.tensor([s[1] for s in chunk], device=device)
        t = torch.tensor([s[2] for s in chunk], device=device, dtype=ws_bg.dtype)[:, None, None]
        layers = G.synthesis(torch.lerp(ws_bg[a], ws_bg[b], t), torch.lerp(ws_fg[a], ws_fg[b], t),
                             noise_mode='const')
        yield from compose_frames({name: layers[name].float().cpu() for name in PANELS}, scale)


def write_video(frames: Iterator[np.ndarray], path: str, size: tuple[int, int], fps: int, total: int,
                progress: bool = True) -> None:
    """Encode ``frames`` ([H, W, 3] uint8 of ``size`` = (W, H)) as H.264 into ``path``, through a
    temporary file in the same folder and a rename: ``path`` is complete or untouched."""
    import imageio_ffmpeg
    # ffmpeg creates the temporary file itself, so the video gets the umask's permissions.
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f'{dnnlib.TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{os.path.basename(path)}')
    bar = dnnlib.progress_bar(None, progress, total=total, unit='frame', desc='video')
    try:
        writer = imageio_ffmpeg.write_frames(tmp, size, fps=fps, quality=8, macro_block_size=2,
                                             ffmpeg_log_level='error')
        writer.send(None)   # starts ffmpeg
        try:
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
                bar.update(1)
        finally:
            writer.close()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        bar.close()


def make_video(network: str, seeds: list[int], out: str, frames_per_seed: int = 30, fps: int = 30,
               truncation_psi: float = 1.0, scale: int | None = None, device: str | None = None,
               progress: bool = True) -> dict:
    """Load G from ``network`` (:func:`training.generator_api.load_generator`), walk through
    ``seeds`` and write the video to ``out``; returns dict(path, snapshot, frames, size, fps).
    Every input is checked before anything is written."""
    if not out.lower().endswith('.mp4'):
        raise dnnlib.UserError(f'--out={out}: the video is written as H.264 in an .mp4 file; name it *.mp4')
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise dnnlib.UserError(f'--out={out}: the folder {os.path.dirname(os.path.abspath(out))} does not exist')
    if len(seeds) < 2:
        raise dnnlib.UserError(f'a walk needs at least two seeds, got {len(seeds)}; e.g. --seeds=0-7')
    total = len(seeds) * frames_per_seed
    if total > MAX_FRAMES:
        raise dnnlib.UserError(f'{len(seeds)} seeds x --frames-per-seed={frames_per_seed} make {total} frames, '
                               f'more than {MAX_FRAMES}; fewer seeds or frames')
    snapshot = generator_api.snapshot_for(network)
    G = generator_api.load_generator(snapshot, device=dnnlib.parse_device(device))
    scale = scale or default_scale(G.img_resolution)
    size = frame_size(G.img_resolution, scale)
    print(f'Snapshot: {snapshot}; {len(seeds)} seeds, {total} frames of {size[0]}x{size[1]} at {fps} fps', flush=True)
    write_video(walk_frames(G, seeds, frames_per_seed, truncation_psi, scale), out, size, fps, total, progress)
    print(f'Wrote {out}', flush=True)
    return dict(path=out, snapshot=snapshot, frames=total, size=size, fps=fps)


@click.command()
@click.option('--network', required=True, metavar='PATH',
              help='Run directory (its lowest-FID snapshot, else its newest), snapshot .pt, or original .pkl.')
@click.option('--seeds', required=True, metavar='LIST', help='Seeds visited in order, e.g. 0-7 or 3,1,4 (at least two).')
@click.option('--out', required=True, metavar='FILE.mp4', help='The video file (replaced if it exists).')
@click.option('--frames-per-seed', type=click.IntRange(1, 10_000), default=30, metavar='F', show_default=True,
              help='Frames from one seed to the next.')
@click.option('--fps', type=click.IntRange(1, 240), default=30, show_default=True, metavar='N', help='Frames per second.')
@click.option('--trunc', 'truncation_psi', type=dnnlib.FiniteFloat(-10, 10), default=1.0, show_default=True,
              metavar='PSI',
              help='Truncation psi (1 = none).')
@click.option('--scale', type=click.IntRange(1, 64), default=None, metavar='K',
              help=f'Enlarge each panel this many times [default: to at least {MIN_PANEL} px].')
@click.option('--device', type=dnnlib.Device(), default=None, help='torch device [default: cuda if available, else cpu].')
@click.option('--quiet', is_flag=True, help='No progress bar.')
@dnnlib.report_user_errors
def main(network: str, seeds: str, out: str, frames_per_seed: int, fps: int, truncation_psi: float,
         scale: int | None, device: str | None, quiet: bool) -> None:
    """A looping latent walk through the seeds: background | foreground | mask | composite."""
    make_video(network, parse_seeds(seeds), out, frames_per_seed=frames_per_seed, fps=fps,
               truncation_psi=truncation_psi, scale=scale, device=device, progress=not quiet)


if __name__ == '__main__':
    main()
