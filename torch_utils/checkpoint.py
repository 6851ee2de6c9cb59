"""Safe snapshots: tensors plus a plain-data description of how to rebuild each network.

A snapshot file is ``torch.save`` of::

    {'format': 'ilsgan-snapshot-v1',
     'modules': {name: {'class': 'training.networks.LayeredGenerator', 'kwargs': {...}, 'state': state_dict}},
     'data': {...plain data: kimg, sigma, optimiser states, augment p, dataset options...}}

so it loads with ``torch.load(path, weights_only=True)``: no pickled code. Networks opt in with
the :func:`rebuildable` class decorator, which records the keyword arguments of their
constructor and enters the class in the registry of classes a snapshot may construct: a class
name read from a file is looked up there by its exact name, and nothing else can be reached
(no module attribute is walked, no import is named by the file). Files are written through a
temporary file and a rename, so a killed process never leaves a half-written snapshot under the
final name.
"""

from __future__ import annotations

import copy
import glob
import functools
import importlib
import inspect
import io
import os
import pickle
import re
import warnings
from typing import Any

import torch

import dnnlib

FORMAT = 'ilsgan-snapshot-v1'

# Exact class name → class, for every @rebuildable class: the only classes a snapshot may construct.
_REGISTRY: dict[str, type] = {}
# The modules that define them; imported before a lookup so that the registry is complete.
NETWORK_MODULES = ('training.networks', 'training.augment', 'training.mi_estimators', 'metrics.segmentation',
                   'metrics.mine')

_PLAIN_TYPES = (type(None), bool, int, float, str)


def _check_plain(value: Any, where: str, allow_tensors: bool) -> None:
    if isinstance(value, _PLAIN_TYPES):
        return
    if allow_tensors and isinstance(value, torch.Tensor):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f'{where}[{i}]', allow_tensors)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f'{where}: key {key!r} is not a str or int')
            _check_plain(item, f'{where}[{key!r}]', allow_tensors)
        return
    raise TypeError(f'{where} is a {type(value).__name__}; snapshots hold only plain data and tensors')


def rebuildable(cls: type) -> type:
    """Class decorator: remember the constructor's keyword arguments in ``self.init_kwargs``.

    The arguments must be plain data (None, bool, int, float, str, lists, tuples, dicts), so
    that :func:`load_snapshot` can rebuild the module from the snapshot alone. Positional
    arguments are bound to their names.
    """
    original_init = cls.__init__
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(signature.parameters)))  # self
        for name, param in signature.parameters.items():
            if param.kind == inspect.Parameter.VAR_KEYWORD and name in arguments:
                arguments.update(arguments.pop(name))
            elif param.kind == inspect.Parameter.VAR_POSITIONAL and name in arguments:
                raise TypeError(f'{cls.__name__}: *{name} cannot be recorded for a snapshot')
        _check_plain(arguments, f'{cls.__name__} arguments', allow_tensors=False)
        original_init(self, *args, **kwargs)
        # Set after __init__ so that the outermost rebuildable class of a hierarchy wins.
        self.init_kwargs = copy.deepcopy(arguments)
        self.init_class = dnnlib.full_name(cls)

    cls.__init__ = __init__
    _REGISTRY[dnnlib.full_name(cls)] = cls
    return cls


def registered_class(name: str) -> type | None:
    """The @rebuildable class called exactly ``name``, or None."""
    if name not in _REGISTRY:
        for module in NETWORK_MODULES:
            importlib.import_module(module)
    return _REGISTRY.get(name)


def module_record(module: torch.nn.Module) -> dict:
    """The plain-data description of one module: class, constructor kwargs, CPU state dict."""
    if not hasattr(module, 'init_kwargs'):
        raise TypeError(f'{type(module).__name__} is not @rebuildable; it cannot be saved in a snapshot')
    state = {key: value.detach().to('cpu', copy=True) for key, value in module.state_dict().items()}
    return {'class': module.init_class, 'kwargs': copy.deepcopy(module.init_kwargs), 'state': state}


def _snapshot_error(where: str, problem: str) -> dnnlib.UserError:
    return dnnlib.UserError(f'{where}: {problem}; use a snapshot written by this project')


def check_record(record: Any, where: str) -> None:
    """Raise :class:`dnnlib.UserError` (naming ``where``) unless ``record`` is exactly what
    :func:`module_record` writes: ``{'class': a registered class name, 'kwargs': plain data with
    str keys, 'state': {str: tensor}}``. A snapshot is untrusted input."""
    if not isinstance(record, dict) or set(record) != {'class', 'kwargs', 'state'}:
        raise _snapshot_error(where, 'not a module record (a dict of class, kwargs and state)')
    class_name, kwargs, state = record['class'], record['kwargs'], record['state']
    if not isinstance(class_name, str) or registered_class(class_name) is None:
        raise _snapshot_error(where, f'refusing to construct {class_name!r}: not a network class of this project')
    try:
        if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
            raise TypeError('kwargs is not a dict with str keys')
        _check_plain(kwargs, 'kwargs', allow_tensors=False)
    except TypeError as err:
        raise _snapshot_error(where, f'bad constructor arguments ({err})') from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise _snapshot_error(where, 'its state is not a dict of named tensors')


def check_payload(payload: Any, path: str) -> None:
    """Raise :class:`dnnlib.UserError` naming ``path`` unless ``payload`` is a well-formed snapshot:
    exactly the keys format/modules/data, every module a valid record, data plain."""
    if not isinstance(payload, dict) or payload.get('format') != FORMAT:
        raise dnnlib.UserError(f'{path} is not an ILSGAN snapshot (expected format {FORMAT}); for a snapshot '
                               f'of the original code (.pkl) run python -m torch_utils.legacy convert')
    if set(payload) != {'format', 'modules', 'data'} or not isinstance(payload['modules'], dict):
        raise _snapshot_error(f'snapshot {path}', 'expected exactly the entries format, modules and data')
    try:
        _check_plain(payload['data'], 'data', allow_tensors=True)
        if not isinstance(payload['data'], dict):
            raise TypeError('data is not a dict')
    except (TypeError, RecursionError) as err:   # RecursionError: nested deeper than any snapshot we write
        raise _snapshot_error(f'snapshot {path}', str(err)) from None
    for name, record in payload['modules'].items():
        check_record(record, f'snapshot {path}, module {name!r}')


def build_module(record: dict, device: torch.device | str = 'cpu', where: str = 'snapshot record') -> torch.nn.Module:
    """Rebuild a module from :func:`module_record`'s output and load its weights.

    Only registered classes are constructed (:func:`check_record`); a record whose arguments or
    weights do not fit its class is a :class:`dnnlib.UserError` naming ``where``.
    """
    check_record(record, where)
    cls = registered_class(record['class'])
    _check_size(cls, record, where, device)
    from torch_utils import memory
    stored = sum(t.numel() * t.element_size() for t in record['state'].values() if isinstance(t, torch.Tensor))
    try:   # built within a budget of its weights: arguments describing far more are refused, for any class
        module = memory.bounded_build(lambda: cls(**record['kwargs']), 3 * stored + memory.BUILD_MARGIN_BYTES)
    except memory.BuildTooLarge:
        raise _snapshot_error(where, f'its arguments describe a {record["class"]} far larger than the {stored:,} bytes '
                                     f'of weights it holds (building it took more than '
                                     f'{memory.format_bytes(3 * stored + memory.BUILD_MARGIN_BYTES)}): they do not fit') from None
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError,
            RuntimeError, MemoryError) as err:   # e.g. a negative or enormous width: torch's RuntimeError
        reason = str(err).strip().splitlines()[-1].strip() if str(err).strip() else type(err).__name__
        raise _snapshot_error(where, f'cannot build {record["class"]} from its arguments ({reason})') from None
    try:
        module.load_state_dict(record['state'], strict=True)
    except RuntimeError as err:
        raise _snapshot_error(where, f'its weights do not fit {record["class"]} '
                                     f'({str(err).strip().splitlines()[-1].strip()})') from None
    return module.to(device)


def _check_size(cls: type, record: dict, where: str, device: torch.device | str) -> None:
    """Before a network is built from a record: a class that can count its numbers from its
    arguments (``parameter_count``) is refused when they describe more numbers than the record's
    weights hold (a 1.7 KB file naming a 4 GB network), or more than ``device`` has free."""
    count_from = getattr(cls, 'parameter_count', None)
    if count_from is None:
        return
    try:
        count = int(count_from(**record['kwargs']))
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return   # arguments the class itself will refuse, in build_module's own words
    stored = sum(t.numel() for t in record['state'].values() if isinstance(t, torch.Tensor))
    if count > stored:
        raise _snapshot_error(where, f'its arguments describe a {record["class"]} of {count:,} numbers but its '
                                     f'weights hold {stored:,}: they do not fit')
    from torch_utils import memory
    memory.check_fits(count * memory.FLOAT_BYTES, f'{where}: {record["class"]}', device,
                      advice='use a snapshot written by this project, on a machine with more memory')


def save_snapshot(path: str, modules: dict[str, torch.nn.Module | None], data: dict | None = None,
                  overwrite: bool = True) -> None:
    """Write the modules (``None`` entries are skipped) and plain ``data`` to ``path`` atomically
    (never replacing an existing file when ``overwrite`` is False: FileExistsError)."""
    payload = {
        'format': FORMAT,
        'modules': {name: module_record(module) for name, module in modules.items() if module is not None},
        'data': copy.deepcopy(data or {}),
    }
    _check_plain(payload['data'], 'snapshot data', allow_tensors=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    dnnlib.write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite)


def read_snapshot(path: str) -> dict:
    """``torch.load(path, weights_only=True)``, checked by :func:`check_payload`, with
    user-facing errors for missing, corrupt or malformed files."""
    if not dnnlib.check_regular_file(path):
        raise dnnlib.UserError(f'snapshot not found: {path}')
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.simplefilter('ignore', UserWarning)
            payload = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        if 'Weights only load failed' not in str(err):
            raise dnnlib.UserError(f'snapshot {path} is truncated or corrupt (UnpicklingError); '
                                   f'use an earlier snapshot of the run') from None
        found = re.search(r'GLOBAL ([\w.]+)', str(err))
        problem = f'refusing to load it: it holds code or objects that a snapshot never contains' + \
            (f' ({found.group(1)})' if found else '')
        if path.endswith('.pkl'):
            problem += '; a snapshot of the original code converts with python -m torch_utils.legacy convert'
        raise _snapshot_error(f'snapshot {path}', problem) from None
    except Exception as err:
        raise dnnlib.UserError(f'snapshot {path} is truncated or corrupt, or in a format this project does not read '
                               f'({type(err).__name__}); use an earlier snapshot of the run') from None
    check_payload(payload, path)
    return payload


def load_snapshot(path: str, device: torch.device | str = 'cpu') -> dict:
    """Rebuild every network of a snapshot with one call.

    Returns ``{'G': module, 'G_ema': module, 'D': module, ..., 'data': dict}``: each module on
    ``device``, in eval mode, with ``requires_grad=False``.
    """
    payload = read_snapshot(path)
    result: dict[str, Any] = {'data': payload['data']}
    for name, record in payload['modules'].items():
        module = build_module(record, device, where=f'snapshot {path}, module {name!r}')
        result[name] = module.eval().requires_grad_(False)
    return result


# ----------------------------------------------------------------------------------------------
# Snapshot names in a run directory.
#
# A snapshot is named by the images seen when it was written, so no two snapshots of a run share
# a name: ``network-snapshot-000200.pt`` at exactly 200 kimg (200 000 images), and
# ``network-snapshot-000000_272.pt`` at 272 images (kimg 0 plus 272 images: 0.272 kimg), which a
# tick shorter than 1 kimg produces. The tag sorts as the images do (``_`` sorts after ``.``), so
# ``ls`` lists a run's snapshots oldest first. Names of older runs (KKKKKK only) read the same way.

SNAPSHOT_GLOB = 'network-snapshot-*.pt'
SNAPSHOT_PATTERN = re.compile(r'network-snapshot-(\d+)(?:_(\d{3}))?\.\w+')  # a whole file name


def snapshot_tag(nimg: int) -> str:
    """``'000200'`` for 200 000 images seen, ``'000000_272'`` for 272: kimg, then the images past it."""
    kimg, rest = divmod(int(nimg), 1000)
    return f'{kimg:06d}' if rest == 0 else f'{kimg:06d}_{rest:03d}'


def snapshot_name(nimg: int) -> str:
    """The file name of the snapshot written after ``nimg`` images: ``network-snapshot-<tag>.pt``."""
    return f'network-snapshot-{snapshot_tag(nimg)}.pt'


def snapshot_nimg(path: str) -> int:
    """The images seen in a snapshot file name: ``network-snapshot-000200.pt`` → 200 000,
    ``network-snapshot-000000_272.pt`` → 272."""
    match = SNAPSHOT_PATTERN.fullmatch(os.path.basename(path))
    if match is None:
        raise dnnlib.UserError(f'{path} is not named network-snapshot-KKKKKK.pt (or network-snapshot-KKKKKK_III.pt); '
                               f'pass a snapshot of a run')
    return int(match.group(1)) * 1000 + int(match.group(2) or 0)


def snapshot_kimg(path: str) -> float:
    """The kimg of a snapshot file name: ``network-snapshot-000200.pt`` → 200.0, ``…000000_272.pt`` → 0.272."""
    return snapshot_nimg(path) / 1000


def format_kimg(nimg: int) -> str:
    """``'200'`` for 200 000 images, ``'0.272'`` for 272: the kimg a user types for ``--pkl_idx``."""
    return str(nimg // 1000) if nimg % 1000 == 0 else f'{nimg / 1000:.3f}'


def list_snapshots(run_dir: str, pattern: str = SNAPSHOT_GLOB) -> list[str]:
    """Snapshot files of a run directory, oldest (fewest images seen) first; other names are ignored.
    ``pattern`` picks the kind (``network-snapshot-*.pkl``: the original code's)."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), pattern)):
        try:
            found.append((snapshot_nimg(path), path))
        except dnnlib.UserError:
            continue  # e.g. network-snapshot-best.pt copied by hand: not a snapshot of the schedule
    return [path for _, path in sorted(found)]
