"""Small generic helpers of the training loop: sampling, gradients, images, logs, memory."""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from typing import Iterator, TextIO

import numpy as np
import PIL.Image
import torch

import dnnlib
from torch_utils import distributed


class InfiniteSampler(torch.utils.data.Sampler):
    """An endless, seeded stream of dataset indices, split between ranks.

    Global item g of the stream is ``permutation_e[g mod n]`` with e = g div n and
    ``permutation_e`` drawn from ``seed + e``; rank r takes the items g ≡ r (mod world_size).
    ``start`` skips this rank's first items, so a resumed run continues the same stream.
    """

    def __init__(self, dataset_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0) -> None:
        if dataset_size <= 0:
            raise ValueError('the dataset is empty')
        self.size, self.rank, self.world_size, self.seed, self.start = dataset_size, rank, world_size, seed, start

    def __iter__(self) -> Iterator[int]:
        position = self.start * self.world_size + self.rank
        epoch, permutation = -1, None
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                permutation = np.random.RandomState((self.seed + epoch) % (1 << 31)).permutation(self.size)
            yield int(permutation[position % self.size])
            position += self.world_size


def average_and_sanitize_gradients_(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients over ranks, then NaN → 0 and ±inf → ±1e5 (METHOD §3).

    ``params`` are the parameters whose ``.grad`` is set; they must be the same list on every
    rank (they are: every rank runs the same phases).
    """
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    distributed.all_reduce_mean_(flat)
    torch.nan_to_num(flat, nan=0.0, posinf=1e5, neginf=-1e5, out=flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def image_grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Tile images [rows·cols, H, W, C] uint8 (row-major) into one [rows·H, cols·W, C] image."""
    count, height, width, channels = images.shape
    if count != rows * cols:
        raise ValueError(f'{count} images do not fill a {rows}×{cols} grid')
    return images.reshape(rows, cols, height, width, channels).transpose(0, 2, 1, 3, 4).reshape(
        rows * height, cols * width, channels)


def encode_uint8(images: torch.Tensor, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """Float images in [low, high] → uint8 0..255 of the same shape and device: the one encoder.

    The original writes [-1, 1] images as uint8(clamp(127.5·x + 128, 0, 255)): adding 128 rather
    than 127.5, then truncating, rounds 127.5·(x + 1) half up, so x = 0 → 128, x = −1 → 0, x = 1 →
    255 and decoding with /127.5 − 1 is unbiased. A [0, 1] mask, which the original writes as the
    image 2m − 1, comes out the same way as round-half-up(255·m).
    """
    scale = 255 / (high - low)
    return (images.detach().float() * scale + (0.5 - low * scale)).clamp(0, 255).to(torch.uint8)


def to_uint8(images: torch.Tensor, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """[N, C, H, W] float in [low, high] → [N, H, W, 3] uint8 on the host by :func:`encode_uint8`
    (a 1-channel mask becomes grey)."""
    images = encode_uint8(images, low, high).cpu()
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images.permute(0, 2, 3, 1).numpy()


def save_image_grid(images: np.ndarray, path: str, rows: int, cols: int) -> None:
    """Write uint8 tiles [rows·cols, H, W, 3] as one PNG."""
    with dnnlib.naming_file(path):
        PIL.Image.fromarray(image_grid(images, rows, cols), 'RGB').save(path)


class Tee:
    """Copy everything written to stdout into a log file as well (rank 0 of a run)."""

    def __init__(self, path: str, stream: TextIO | None = None) -> None:
        self.path = path
        self.file = open(path, 'at', buffering=1)
        self.stream = stream or sys.stdout

    def write(self, text: str) -> int:
        written = self.stream.write(text)  # the console first: a full disk must not hide the output
        with dnnlib.naming_file(self.path):
            self.file.write(text)
        return written

    def flush(self) -> None:
        self.stream.flush()
        with dnnlib.naming_file(self.path):
            self.file.flush()

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # a failed log write was already raised by write() and reported


@contextlib.contextmanager
def cpu_threads(count: int | None):
    """Run the block with ``count`` torch CPU threads (None: leave them), then restore the old count.

    A CPU run repeats exactly only at a fixed thread count, so the CPU presets name theirs.
    """
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, the resident set on a CPU."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KiB
    return kilobytes / 2 ** 20 if sys.platform != 'darwin' else kilobytes / 2 ** 30


def ensure_writable_dir(path: str) -> None:
    """Raise OSError unless ``path`` exists as a writable folder or can be created."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise OSError(f'{probe} is not a writable folder')
