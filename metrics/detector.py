"""The Inception feature detector behind FID and KID (METHOD.md §10).

The detector is the TorchScript Inception-v3 of the StyleGAN2-ADA protocol. Its call convention is
``detector(images, return_features=True) -> [N, 2048]`` for ``images`` [N, 3, H, W] with values in
0..255 (uint8 or float); it resizes internally, so callers never resize. Any TorchScript module
with the same call works, which is how the tests run without the 100 MB download.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import torch

import dnnlib

DETECTOR_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt'
DETECTOR_ENV = 'ILSGAN_DETECTOR'

_loaded: dict[tuple[str, str], torch.jit.ScriptModule] = {}
_file_digests: dict[tuple[str, int, int], str] = {}


def resolve_detector_path(explicit: str | None = None) -> str:
    """The detector to use: ``explicit`` (``--detector``), else ``$ILSGAN_DETECTOR``, else the URL.

    This is the only place that reads the environment; entry scripts call it once and pass the
    result down, so library code never depends on the caller's environment.
    """
    if explicit:
        return str(explicit)
    return os.environ.get(DETECTOR_ENV) or DETECTOR_URL


def load_detector(path_or_url: str | None, device: torch.device | str, timeout: float = 30.0,
                  verbose: bool = True) -> torch.jit.ScriptModule:
    """Load (once per path and device) the TorchScript detector from a local path or a URL.

    ``None`` means :data:`DETECTOR_URL`. URLs go through :func:`dnnlib.open_url`, which downloads
    into the cache once. Raises :class:`dnnlib.UserError` when the file cannot be had (offline, no
    cached copy) or is not a TorchScript module; the message says how to give a local copy.
    """
    path_or_url = str(path_or_url or DETECTOR_URL)
    device = torch.device(device)
    key = (path_or_url, str(device))
    if key in _loaded:
        return _loaded[key]
    try:
        with dnnlib.open_url(path_or_url, timeout=timeout, verbose=verbose) as f, warnings.catch_warnings():
            # TorchScript is the file format of the protocol's detector, deprecated or not.
            warnings.simplefilter('ignore', DeprecationWarning)
            detector = torch.jit.load(f, map_location=device)
    except dnnlib.UserError as err:
        raise dnnlib.UserError(f'the Inception detector for FID/KID is unavailable: {err}; or point '
                               f'--detector / ${DETECTOR_ENV} at a local copy of {DETECTOR_URL}') from None
    except (RuntimeError, ValueError) as err:
        raise dnnlib.UserError(f'{path_or_url} is not a TorchScript detector ({type(err).__name__}); '
                               f'use the file {DETECTOR_URL}') from None
    detector.eval()
    _loaded[key] = detector
    return detector


def check_detector(path_or_url: str | None) -> None:
    """Load the detector now when that needs no download (a local file, or a URL already in the
    cache), so that a wrong file stops a run before it starts; an uncached URL is downloaded
    when the first metric needs it."""
    path_or_url = str(path_or_url or DETECTOR_URL)
    if dnnlib.is_url(path_or_url) and not os.path.isfile(dnnlib.util.cached_url_path(path_or_url)):
        return
    load_detector(path_or_url, 'cpu', verbose=False)


def detector_id(path_or_url: str | None) -> str:
    """A string that names the detector in cache keys of real-image statistics.

    A URL names itself. A local file is named by the MD5 of its contents, so the same detector at
    two paths shares cached statistics and a replaced file at the same path does not.
    """
    path_or_url = str(path_or_url or DETECTOR_URL)
    if dnnlib.is_url(path_or_url):
        return path_or_url
    st = os.stat(path_or_url)
    key = (os.path.abspath(path_or_url), st.st_size, st.st_mtime_ns)
    if key not in _file_digests:
        digest = hashlib.md5()
        with open(path_or_url, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                digest.update(chunk)
        _file_digests[key] = f'md5:{digest.hexdigest()}'
    return _file_digests[key]
