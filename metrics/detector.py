"""The Inception feature detector behind FID and KID (METHOD.md §10), read as data where it can be.

The detector is the TorchScript Inception-v3 of the StyleGAN2-ADA protocol. Its call convention is
``detector(images, return_features=True) -> [N, 2048]`` for ``images`` [N, 3, H, W] with values in
0..255 (uint8 or float); it resizes internally, so callers never resize.

A detector file is a TorchScript archive: a zip of the module's tensors (``data.pkl`` and
``data/``) and of its code (``code/``), which ``torch.jit.load`` compiles and runs, on load
(``__setstate__``) and on every call. A file someone hands over is therefore a program, and
:func:`load_detector`, the one loader, decides what to do with it in this order:

1. **Rebuilt from data.** The archive's tensors are read without its code (:func:`read_archive_tensors`:
   ``data.pkl`` through an allow-list, no ``torch.load``). When their names, shapes and dtypes are
   exactly those of an architecture in :data:`ARCHITECTURES`, they are loaded into that module of
   ours and the archive's code is never run.
2. **Known file.** A file whose SHA-256 is a known detector's is loaded with ``torch.jit.load``:
   :data:`KNOWN_DETECTOR_SHA256`, or the digest that :func:`dnnlib.open_url` recorded when this
   project itself downloaded :data:`DETECTOR_URL` (a copy put into the cache by hand has none).
3. **Anything else is refused** in one line naming its SHA-256, unless the user opts in with
   ``--detector-runs-code`` / ``$ILSGAN_DETECTOR_RUNS_CODE=1`` (``runs_code=True``).

The published Inception network is not in :data:`ARCHITECTURES`: its exact layers and parameter
names are not recorded in this project's design notes and the file cannot be fetched here to check
them, so it is never guessed at; it takes path 2. Its SHA-256 is not pinned in
:data:`KNOWN_DETECTOR_SHA256` for the same reason: a digest goes there only once computed from the
published file itself.
"""

from __future__ import annotations

import collections
import collections.abc
import hashlib
import io
import os
import re
import sys
import warnings
import zipfile
import zlib
from typing import Any, Callable, Iterator

import torch

import dnnlib
from torch_utils import safe_pickle

DETECTOR_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt'
DETECTOR_ENV = 'ILSGAN_DETECTOR'
RUNS_CODE_ENV = 'ILSGAN_DETECTOR_RUNS_CODE'
RUNS_CODE_OPTION = '--detector-runs-code'

# SHA-256 (hex) of detector files known to be the published one. Empty until computed from that
# file: the project's own download is known through its recorded digest instead (path 2 above).
KNOWN_DETECTOR_SHA256: frozenset[str] = frozenset()

# Architectures rebuilt as our own modules: name -> constructor of a module with the detector's
# call convention whose state_dict the archive's tensors must match exactly (names, shapes, dtypes).
# None ships yet (see the module docstring); the tests register their tiny detector here.
ARCHITECTURES: dict[str, Callable[[], torch.nn.Module]] = {}

MAX_DETECTOR_BYTES = 1 << 30   # the published detector is about 100 MB

_loaded: dict[tuple[str, str, bool], torch.nn.Module] = {}
_file_digests: dict[tuple[str, int, int], str] = {}


def resolve_detector_path(explicit: str | None = None) -> str:
    """The detector to use: ``explicit`` (``--detector``), else ``$ILSGAN_DETECTOR``, else the URL.

    This and :func:`resolve_runs_code` are the only places that read the environment; entry
    scripts call them once and pass the result down, so library code never depends on the
    caller's environment.
    """
    if explicit:
        return str(explicit)
    return os.environ.get(DETECTOR_ENV) or DETECTOR_URL


def resolve_runs_code(explicit: bool = False) -> bool:
    """Whether the user allows a detector file to run its own code: ``--detector-runs-code``, else
    ``$ILSGAN_DETECTOR_RUNS_CODE`` (1/true/yes/on or 0/false/no/off/empty; anything else is an error)."""
    if explicit:
        return True
    value = os.environ.get(RUNS_CODE_ENV, '').strip().lower()
    if value in ('', '0', 'false', 'no', 'off'):
        return False
    if value in ('1', 'true', 'yes', 'on'):
        return True
    raise dnnlib.UserError(f'${RUNS_CODE_ENV}={value[:40]!r} is neither 1 nor 0')


# ----------------------------------------------------------------------------------------------
# Reading a TorchScript archive's tensors without its code.

class NotTorchScript(ValueError):
    """The file is not a whole TorchScript archive (not a zip, no data.pkl/constants.pkl, damaged)."""


class NotData(ValueError):
    """A TorchScript archive whose ``data.pkl`` holds more than modules, tensors and plain values."""


_STORAGE_DTYPES = {'Float': torch.float32, 'Double': torch.float64, 'Half': torch.float16,
                   'BFloat16': torch.bfloat16, 'Long': torch.int64, 'Int': torch.int32, 'Short': torch.int16,
                   'Char': torch.int8, 'Byte': torch.uint8, 'Bool': torch.bool}


class _StorageType:
    """Stands in for ``torch.<Name>Storage`` in a persistent id: only its dtype is used."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Storage:
    """One ``data/<key>`` record of the archive as a flat tensor [numel]."""

    def __init__(self, flat: torch.Tensor) -> None:
        self.flat = flat


class _ScriptObject:
    """An object of the archive (``__torch__.<class>``) kept as plain data. Pickle's BUILD hands
    its state to this ``__setstate__``; the archive's own ``__setstate__`` is code and never runs."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any,
                    metadata: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` for plain tensors: a strided view of a storage of ours."""
    if not isinstance(storage, _Storage) or hooks or metadata:
        raise NotData('a tensor with hooks, metadata or a storage not in the archive')
    if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))):
        raise NotData('a tensor with a malformed offset, size or stride')
    if any(size) and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.flat.numel():
        raise NotData('a tensor reaching past the end of its storage')
    return storage.flat.as_strided(size, stride, offset)


class _ArchiveGlobals(collections.abc.Mapping):
    """The allow-list of one ``data.pkl``: the tensor rebuilder, ``OrderedDict`` (a tensor's empty
    hooks), the storage types, and every TorchScript class name (``__torch__.*``), each of which
    becomes a :class:`_ScriptObject` whatever the name says. Made afresh for each archive: a pickle
    can set attributes on an object it names (BUILD), and must not reach the next archive's."""

    def __init__(self) -> None:
        def rebuild_tensor(*args: Any) -> torch.Tensor:
            return _rebuild_tensor(*args)

        self._script_object = type('_ScriptObject', (_ScriptObject,), {})
        self._table: dict[str, Any] = {
            'torch._utils._rebuild_tensor_v2': rebuild_tensor,
            'collections.OrderedDict': collections.OrderedDict,   # a built-in type: its attributes are read-only
            **{f'torch.{name}Storage': _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
        }

    def __getitem__(self, name: str) -> Any:
        if name.startswith('__torch__.'):
            return self._script_object
        return self._table[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as err:
        raise NotTorchScript(f'damaged archive: {name}: {type(err).__name__}') from None


def _flat_tensors(obj: Any, prefix: str = '') -> dict[str, torch.Tensor]:
    """The tensors of an object tree of ``data.pkl`` under dotted names (``inner.lin.weight``)."""
    if not isinstance(obj, _ScriptObject) or not isinstance(obj.state, dict):
        raise NotData(f'{prefix or "the module"} keeps its own state (__getstate__/__setstate__)')
    tensors = {}
    for name, value in obj.state.items():
        if not isinstance(name, str):
            raise NotData('an attribute whose name is not a string')
        if isinstance(value, torch.Tensor):
            tensors[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            tensors.update(_flat_tensors(value, f'{prefix}{name}.'))
        elif not isinstance(value, (bool, int, float, str, type(None))):
            raise NotData(f'attribute {prefix}{name} is a {type(value).__name__}')
    return tensors


def read_archive_tensors(data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of TorchScript archive ``data`` (its bytes), under their dotted attribute names.

    No code of the archive is compiled or run, and no torch loader is used: ``data.pkl`` goes
    through :func:`torch_utils.safe_pickle.load` with storage records read from ``data/<key>``.
    Raises :class:`NotTorchScript` for a file that is not a whole archive, :class:`NotData` for an
    archive whose ``data.pkl`` holds more than modules, tensors and plain values.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as err:
        raise NotTorchScript(f'not a zip archive ({type(err).__name__})') from None
    pickles = [name for name in infos if re.fullmatch(r'[^/]+/data\.pkl', name)]
    if len(pickles) != 1:
        raise NotTorchScript('no data.pkl in the archive' if not pickles else 'more than one data.pkl')
    prefix = pickles[0][:-len('data.pkl')]
    if prefix + 'constants.pkl' not in infos:
        raise NotTorchScript('no constants.pkl: a torch.save file, not TorchScript')
    if sum(info.file_size for info in infos.values()) > MAX_DETECTOR_BYTES:
        raise NotTorchScript(f'its members unpack to more than {MAX_DETECTOR_BYTES >> 20} MB')
    stored_order = _read_member(archive, prefix + 'byteorder').strip() if prefix + 'byteorder' in infos else b'little'
    if stored_order != b'little' or sys.byteorder != 'little':
        raise NotData('tensors not stored in this machine\'s byte order')

    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage' and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and re.fullmatch(r'\w+', pid[2]) and isinstance(pid[4], int)):
            raise NotData('a persistent id that is not a tensor storage')
        _, storage_type, key, _location, numel = pid
        if key not in storages:
            name = f'{prefix}data/{key}'
            itemsize = torch.empty(0, dtype=storage_type.dtype).element_size()
            if name not in infos or infos[name].file_size != numel * itemsize:
                raise NotTorchScript(f'damaged archive: {name} is missing or not {numel} values')
            raw = _read_member(archive, name)
            flat = torch.frombuffer(bytearray(raw), dtype=storage_type.dtype) if raw else \
                torch.empty(0, dtype=storage_type.dtype)
            storages[key] = _Storage(flat)
        return storages[key]

    try:
        root = safe_pickle.load(_read_member(archive, pickles[0]), _ArchiveGlobals(), persistent_load)
        return _flat_tensors(root)
    except (NotTorchScript, NotData):
        raise
    except safe_pickle.RefusedGlobal as err:
        raise NotData(f'data.pkl names {err.name}') from None
    except Exception as err:  # a malformed pickle: nothing of it ran, and jit.load may still judge it
        raise NotData(f'data.pkl is not plain data ({type(err).__name__})') from None


def rebuild(tensors: dict[str, torch.Tensor]) -> torch.nn.Module | None:
    """The module of :data:`ARCHITECTURES` whose state_dict ``tensors`` match exactly, loaded
    with them (eval mode, no gradients); None when no architecture matches."""
    signature = {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()}
    for build in ARCHITECTURES.values():
        module = build()
        if {name: (tuple(t.shape), t.dtype) for name, t in module.state_dict().items()} == signature:
            module.load_state_dict(tensors)
            return module.eval().requires_grad_(False)
    return None


# ----------------------------------------------------------------------------------------------
# The one loader.

def _read_detector_file(path_or_url: str, timeout: float, verbose: bool) -> bytes:
    try:
        with dnnlib.open_url(path_or_url, timeout=timeout, verbose=verbose) as f:
            # A file larger than any detector is refused before it is read into memory.
            data = f.read(MAX_DETECTOR_BYTES + 1) if os.fstat(f.fileno()).st_size <= MAX_DETECTOR_BYTES else None
    except dnnlib.UserError as err:
        raise dnnlib.UserError(f'the Inception detector for FID/KID is unavailable: {err}; or point '
                               f'--detector / ${DETECTOR_ENV} at a local copy of {DETECTOR_URL}') from None
    if data is None or len(data) > MAX_DETECTOR_BYTES:
        raise dnnlib.UserError(f'{path_or_url} is not a TorchScript detector (larger than '
                               f'{MAX_DETECTOR_BYTES >> 20} MB); use the file {DETECTOR_URL}')
    return data


def is_known_digest(sha256: str) -> bool:
    """Whether a file with this SHA-256 (hex) is a known detector (path 2 of the module docstring)."""
    return sha256 in KNOWN_DETECTOR_SHA256 or sha256 == dnnlib.util.download_sha256(DETECTOR_URL)


def _refusal(path_or_url: str, sha256: str, reason: str) -> dnnlib.UserError:
    if path_or_url == DETECTOR_URL:
        hint = (f'; the copy in the cache ({dnnlib.util.cached_url_path(DETECTOR_URL)}) was not downloaded by '
                f'this project: delete it to download it again, or')
    else:
        hint = '; if you trust it,'
    return dnnlib.UserError(f'refusing the detector {path_or_url}: {reason}, its SHA-256 {sha256} is not a known '
                            f'detector\'s, and a TorchScript file runs its own code when loaded{hint} pass '
                            f'{RUNS_CODE_OPTION} (or set ${RUNS_CODE_ENV}=1)')


def load_detector(path_or_url: str | None, device: torch.device | str, runs_code: bool = False,
                  timeout: float = 30.0, verbose: bool = True) -> torch.nn.Module:
    """The detector of a local path or a URL (``None``: :data:`DETECTOR_URL`), once per path,
    device and ``runs_code``.

    Rebuilt from its tensors when an architecture of ours matches; else loaded with
    ``torch.jit.load`` when its SHA-256 is a known detector's, or when ``runs_code`` (the user's
    ``--detector-runs-code``) allows a file to run its own code. URLs go through
    :func:`dnnlib.open_url`, which downloads into the cache once. Raises :class:`dnnlib.UserError`
    (one line) when the file cannot be had (offline, no cached copy), is not a TorchScript archive,
    or would run code it was not allowed to.
    """
    path_or_url = str(path_or_url or DETECTOR_URL)
    device = torch.device(device)
    key = (path_or_url, str(device), bool(runs_code))
    if key in _loaded:
        return _loaded[key]
    data = _read_detector_file(path_or_url, timeout, verbose)
    sha256 = hashlib.sha256(data).hexdigest()
    known = is_known_digest(sha256)
    try:
        detector = rebuild(read_archive_tensors(data))
        reason = 'no architecture of this project matches its tensors'
    except NotTorchScript as err:
        if not known:
            raise dnnlib.UserError(f'{path_or_url} is not a TorchScript detector ({err}); '
                                   f'use the file {DETECTOR_URL}') from None
        detector, reason = None, str(err)  # the published file: torch reads it as it always has
    except NotData as err:
        detector, reason = None, f'its tensors cannot be read as data alone ({err})'
    if detector is not None:
        detector = detector.to(device)
    else:
        if not (known or runs_code):
            raise _refusal(path_or_url, sha256, reason)
        if not known and verbose:
            dnnlib.warn(f'running the code of the detector {path_or_url} (SHA-256 {sha256}), '
                        f'as {RUNS_CODE_OPTION} allows')
        try:
            with warnings.catch_warnings():
                # TorchScript is the file format of the protocol's detector, deprecated or not.
                warnings.simplefilter('ignore', DeprecationWarning)
                detector = torch.jit.load(io.BytesIO(data), map_location=device)
        except (RuntimeError, ValueError) as err:
            raise dnnlib.UserError(f'{path_or_url} is not a TorchScript detector ({type(err).__name__}); '
                                   f'use the file {DETECTOR_URL}') from None
        detector.eval()
    _loaded[key] = detector
    return detector


def check_detector(path_or_url: str | None, runs_code: bool = False) -> None:
    """Load the detector now when that needs no download (a local file, or a URL already in the
    cache), so that a wrong or refused file stops a run before it starts; an uncached URL is
    downloaded when the first metric needs it."""
    path_or_url = str(path_or_url or DETECTOR_URL)
    if dnnlib.is_url(path_or_url) and not os.path.isfile(dnnlib.util.cached_url_path(path_or_url)):
        return
    load_detector(path_or_url, 'cpu', runs_code=runs_code, verbose=False)


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
