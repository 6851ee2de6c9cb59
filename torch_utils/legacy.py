"""Reading the original code's snapshots (StyleGAN2-ADA "persistence" pickles) without running them.

The original saves a pickle of ``{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}`` in
StyleGAN2-ADA's "persistence" format: each network travels as a record of its class name, the
Python source of its module, and its ``__dict__`` (parameters, buffers, submodules, attributes),
and unpickling normally *executes that source*. Here the pickle is read with an allow-list
(:mod:`torch_utils.safe_pickle`): tensors are rebuilt (storages through
``torch.load(weights_only=True)``), the persistence reconstructor is replaced by
:class:`OriginalModule`, which keeps the record as plain data (the source stays a string, never
run), and every other callable is refused. :func:`flat_state`, :func:`attribute` and
:func:`rename_state` walk and rename those records.

This module knows no network of this project: the ILSGAN converter that builds them is
:mod:`training.legacy_convert`. The user command

    python -m torch_utils.legacy convert network-snapshot-008000.pkl network-snapshot-008000.pt

is kept under this name (the docs and error messages give it) and hands over to that converter
when run as a script only: importing this module never loads ``training``.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import re
import warnings
from typing import Any, Callable

import numpy as np
import torch

import dnnlib
from torch_utils import safe_pickle

MISSING = object()  # what attribute() returns for an attribute the record does not hold


@dataclasses.dataclass
class OriginalModule:
    """One network object of the original pickle, as plain data; its code is never run."""
    class_name: str
    module_src: str   # the original's Python source of the class's module, kept as text only
    state: dict       # the object's __dict__: _parameters, _buffers, _modules, attributes


def _persistent_record(meta: Any) -> OriginalModule:
    """Stands in for the persistence reconstructor, which would execute ``meta['module_src']``."""
    if not (isinstance(meta, dict) and meta.get('type') == 'class' and isinstance(meta.get('class_name'), str)
            and isinstance(meta.get('module_src'), str) and isinstance(meta.get('state'), dict)):
        raise ValueError('a persistence record without class_name, module_src and state')
    return OriginalModule(meta['class_name'], meta['module_src'], meta['state'])


class _PickledEasyDict(dict):
    """Takes the place of the original's ``dnnlib.EasyDict`` (a dict subclass) while unpickling."""


def _load_storage(data: Any) -> Any:
    """Tensor storages travel as bytes of a legacy ``torch.save``; read them weights-only."""
    if not isinstance(data, bytes):
        raise ValueError('a tensor storage that is not bytes')
    return torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, requires_grad: bool,
                    backward_hooks: Any, metadata: Any = None) -> torch.Tensor:
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)) or backward_hooks or metadata:
        raise ValueError('a tensor with hooks, metadata or a foreign storage')
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, collections.OrderedDict())


def _rebuild_parameter(data: Any, requires_grad: bool, backward_hooks: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or backward_hooks:
        raise ValueError('a parameter with hooks or without data')
    return data


# Everything an original snapshot needs, and nothing else.
ALLOWED_GLOBALS: dict[str, Any] = {
    **safe_pickle.NUMPY_GLOBALS,  # float attributes such as weight_gain are NumPy scalars
    'torch_utils.persistence._reconstruct_persistent_obj': _persistent_record,
    'torch._utils._rebuild_tensor_v2': _rebuild_tensor,
    'torch._utils._rebuild_parameter': _rebuild_parameter,
    'torch.storage._load_from_bytes': _load_storage,
    'torch.Size': torch.Size,
    'collections.OrderedDict': collections.OrderedDict,
    'builtins.set': set,  # a module's _non_persistent_buffers_set, with pickle protocols < 4
    'dnnlib.util.EasyDict': _PickledEasyDict,
    'torch.device': torch.device,
    **{f'torch.{name}': getattr(torch, name) for name in ('float16', 'float32', 'float64', 'bfloat16', 'uint8',
                                                         'int8', 'int16', 'int32', 'int64', 'bool')},
}


def read_original_pickle(path: str) -> dict:
    """The top-level dict of an original snapshot, with :class:`OriginalModule` for each network."""
    if not os.path.isfile(path):
        raise dnnlib.UserError(f'snapshot not found: {path}')
    try:
        with open(path, 'rb') as f, warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)  # torch's TypedStorage deprecation notes
            payload = safe_pickle.load(f, ALLOWED_GLOBALS)
    except safe_pickle.RefusedGlobal as err:
        raise dnnlib.UserError(f'{path}: refusing to unpickle {err.name}: a snapshot of the original code holds only '
                               f'networks, tensors and plain data, so this file is not one (or was altered); '
                               f'obtain it again from its source') from None
    except Exception as err:
        if 'Weights only load failed' in str(err):   # a tensor storage holding more than tensors: never loaded
            raise dnnlib.UserError(f'{path}: refusing to read a tensor storage that holds code or objects, not '
                                   f'tensors; this file is not a snapshot of the original code (or was altered): '
                                   f'obtain it again from its source') from None
        raise dnnlib.UserError(f'cannot read {path} as a snapshot of the original code ({type(err).__name__}: '
                               f'{str(err).strip().splitlines()[0] if str(err).strip() else ""}); the file is '
                               f'truncated or damaged: obtain it again from its source') from None
    if not isinstance(payload, dict) or not isinstance(payload.get('G_ema'), OriginalModule):
        raise dnnlib.UserError(f'{path} is not a snapshot of the original code (no G_ema network in it)')
    return payload


# ----------------------------------------------------------------------------------------------
# Walking the records.

def flat_state(module: OriginalModule, prefix: str = '', where: str = 'the snapshot') -> dict[str, torch.Tensor]:
    """``state_dict()`` of an original network: persistent parameters and buffers, dotted names.

    A record of the wrong shape (a damaged or altered file: ``_parameters`` a list, a submodule a
    plain dict) is a :class:`dnnlib.UserError` naming ``where`` and the record."""
    def damaged(problem: str) -> dnnlib.UserError:
        return dnnlib.UserError(f'{where}: {problem}, not what the original code writes; the file is damaged or was '
                                f'altered: obtain it again from its source')

    state = module.state
    if not isinstance(state, dict):
        raise damaged(f'the record {prefix or "of the network"} is a {type(state).__name__}')
    parts = {}
    for part in ('_parameters', '_buffers', '_modules'):
        parts[part] = state.get(part) or {}
        if not isinstance(parts[part], dict):
            raise damaged(f'{prefix}{part} is a {type(parts[part]).__name__}')
    transient = state.get('_non_persistent_buffers_set') or set()
    if not isinstance(transient, (set, frozenset, list, tuple)):
        raise damaged(f'{prefix}_non_persistent_buffers_set is a {type(transient).__name__}')
    tensors = {**parts['_parameters'], **{k: v for k, v in parts['_buffers'].items() if k not in transient}}
    result = {}
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise damaged(f'{prefix}{name} is a {type(tensor).__name__}, not a tensor')
        result[f'{prefix}{name}'] = tensor
    for name, sub in parts['_modules'].items():
        if sub is None:
            continue
        if not isinstance(sub, OriginalModule):
            raise damaged(f'the submodule {prefix}{name} is a {type(sub).__name__}, not a network record')
        result.update(flat_state(sub, f'{prefix}{name}.', where))
    return result


def rename_state(state: dict[str, torch.Tensor], rules: tuple, block_index: Callable[[int], int],
                 ours: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Our state dict from the original's ``state`` by ``rules``; ``ours`` gives the names expected.
    Only the fixed FIR filter buffers (``resample_filter``) may be absent: ours are the same."""
    renamed = {}
    for name, tensor in state.items():
        for pattern, template in rules:
            match = re.fullmatch(pattern, name)
            if match:
                break
        else:
            raise dnnlib.UserError(f'{where}: no rule for the parameter {name!r}; only ILSGAN snapshots of the '
                                   f'paper\'s architecture convert')
        if template is None:
            continue
        fields = match.groupdict()
        if fields.get('res') is not None:
            fields['block'] = block_index(int(fields['res']))
        target = template.format(**fields)
        if target not in ours:
            raise dnnlib.UserError(f'{where}: the parameter {name!r} has no counterpart {target!r} in this '
                                   f'project\'s network; only ILSGAN snapshots of the paper\'s architecture convert')
        renamed[target] = tensor
    missing = [key for key in ours if key not in renamed and not key.endswith('resample_filter')]
    if missing:
        raise dnnlib.UserError(f'{where}: no value for {missing[0]!r}' +
                               (f' (and {len(missing) - 1} more)' if len(missing) > 1 else '') +
                               '; the snapshot is incomplete or of another architecture')
    return renamed


def child(module: OriginalModule, dotted: str) -> OriginalModule | None:
    """The record of the submodule at ``dotted`` (``'b4.conv1'``; ``''``: ``module`` itself), or None."""
    for name in filter(None, dotted.split('.')):
        module = (module.state.get('_modules') or {}).get(name) if module is not None else None
    return module if isinstance(module, OriginalModule) else None


def attribute(module: OriginalModule, dotted: str, name: str) -> Any:
    """An attribute of a submodule's record, or the constructor argument of that name it kept."""
    record = child(module, dotted)
    if record is None:
        return MISSING
    if name in record.state:
        return record.state[name]
    return (record.state.get('_init_kwargs') or {}).get(name, MISSING)


def plain(value: Any) -> Any:
    """A NumPy scalar attribute as the Python number it holds; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def setting(where: str, what: str, *candidates: Any) -> Any:
    """The first candidate that is not missing; the last one may be a default."""
    for value in candidates:
        if value is not MISSING:
            return plain(value)
    raise dnnlib.UserError(f'{where}: cannot tell {what} from the snapshot')


def plain_data(value: Any) -> Any:
    """Plain data for the converted snapshot's ``data`` (dicts, lists, numbers, strings), else TypeError."""
    value = plain(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    raise TypeError(type(value).__name__)


if __name__ == '__main__':
    # The command's real home is training/legacy_convert.py (it builds this project's networks).
    # It is looked up by name here, at run time only, so the import graph stays one-way:
    # ``import torch_utils.legacy`` never imports training.
    import importlib
    importlib.import_module('training.legacy_convert').main(prog_name='python -m torch_utils.legacy')
