"""Snapshots of the original code (``network-snapshot-KKKKKK.pkl``) → this project's safe snapshots.

    python -m torch_utils.legacy convert network-snapshot-008000.pkl network-snapshot-008000.pt

The original saves a pickle of ``{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}`` in
StyleGAN2-ADA's "persistence" format: each network travels as a record of its class name, the
Python source of its module, and its ``__dict__`` (parameters, buffers, submodules, attributes),
and unpickling normally *executes that source*. Here the pickle is read with an allow-list
(:mod:`torch_utils.safe_pickle`): tensors are rebuilt (storages through
``torch.load(weights_only=True)``), the persistence reconstructor is replaced by
:class:`OriginalModule`, which keeps the record as plain data (the source stays a string, never
run), and every other callable is refused.

The records' parameters are then renamed onto :class:`training.networks.LayeredGenerator` and
:class:`training.networks.Discriminator` by the rule tables below; the hyper-parameters come
from tensor shapes and the records' attributes (``conv_clamp``, ``use_fp16``, ...), falling back
to the constructor arguments each record keeps (``_init_kwargs``). Any name without a rule, and
any parameter of ours left without a value, is an error naming it.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import re
import warnings
from typing import Any, Callable

import click
import numpy as np
import torch

import dnnlib
from torch_utils import checkpoint, safe_pickle

_MISSING = object()


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
        raise dnnlib.UserError(f'cannot read {path} as a snapshot of the original code ({type(err).__name__}: '
                               f'{str(err).strip().splitlines()[0] if str(err).strip() else ""}); is it truncated?') from None
    if not isinstance(payload, dict) or not isinstance(payload.get('G_ema'), OriginalModule):
        raise dnnlib.UserError(f'{path} is not a snapshot of the original code (no G_ema network in it)')
    return payload


# ----------------------------------------------------------------------------------------------
# Parameter names: the original's → ours. Each rule is (pattern on the original's name, our
# name or None to drop it); the first rule that matches wins. In a target, {block} is the index
# of the block whose resolution the pattern captured as <res>.

GENERATOR_RULES = (
    (r'(?P<net>mapping_(?:bg|fg))\.fc(?P<i>\d+)\.(?P<leaf>weight|bias)', '{net}.layers.{i}.{leaf}'),
    (r'(?P<net>mapping_(?:bg|fg))\.w_avg', '{net}.w_avg'),
    (r'(?P<net>synthesis_(?:bg|fg))\.b4\.const', '{net}.blocks.0.const'),
    (r'(?P<net>synthesis_(?:bg|fg))\.b4\.conv1\.(?P<leaf>.+)', '{net}.blocks.0.convs.0.{leaf}'),  # 4x4 has one conv
    (r'(?P<net>synthesis_(?:bg|fg))\.b(?P<res>\d+)\.conv(?P<i>[01])\.(?P<leaf>.+)', '{net}.blocks.{block}.convs.{i}.{leaf}'),
    (r'(?P<net>synthesis_(?:bg|fg))\.b(?P<res>\d+)\.(?P<leaf>torgb\..+|resample_filter)', '{net}.blocks.{block}.{leaf}'),
)

DISCRIMINATOR_RULES = (
    (r'b4\.(?P<leaf>(?:conv|fc|out)\..+)', 'epilogue.{leaf}'),
    (r'b(?P<res>\d+)\.(?P<leaf>(?:fromrgb|conv0|conv1|skip)\..+)', 'blocks.{block}.{leaf}'),
    (r'b(?P<res>\d+)\.resample_filter', None),  # the block's own filter serves only the 'skip' architecture
)


def flat_state(module: OriginalModule, prefix: str = '') -> dict[str, torch.Tensor]:
    """``state_dict()`` of an original network: persistent parameters and buffers, dotted names."""
    state = module.state
    transient = state.get('_non_persistent_buffers_set') or set()
    tensors = {**(state.get('_parameters') or {}),
               **{k: v for k, v in (state.get('_buffers') or {}).items() if k not in transient}}
    result = {}
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f'{prefix}{name} is a {type(tensor).__name__}, not a tensor')
        result[prefix + name] = tensor
    for name, child in (state.get('_modules') or {}).items():
        if child is None:
            continue
        if not isinstance(child, OriginalModule):
            raise ValueError(f'submodule {prefix}{name} is a {type(child).__name__}, not a network record')
        result.update(flat_state(child, f'{prefix}{name}.'))
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


# ----------------------------------------------------------------------------------------------
# Hyper-parameters.

def _child(module: OriginalModule, dotted: str) -> OriginalModule | None:
    for name in filter(None, dotted.split('.')):
        module = (module.state.get('_modules') or {}).get(name) if module is not None else None
    return module if isinstance(module, OriginalModule) else None


def _attribute(module: OriginalModule, dotted: str, name: str) -> Any:
    """An attribute of a submodule's record, or the constructor argument of that name it kept."""
    child = _child(module, dotted)
    if child is None:
        return _MISSING
    if name in child.state:
        return child.state[name]
    return (child.state.get('_init_kwargs') or {}).get(name, _MISSING)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _setting(where: str, what: str, *candidates: Any) -> Any:
    """The first candidate that is not missing; the last one may be a default."""
    for value in candidates:
        if value is not _MISSING:
            return _plain(value)
    raise dnnlib.UserError(f'{where}: cannot tell {what} from the snapshot')


def _resolutions(module: OriginalModule, where: str) -> list[int]:
    """The b<res> submodules of a synthesis network or discriminator, ascending."""
    found = sorted(int(m.group(1)) for m in (re.fullmatch(r'b(\d+)', k) for k in module.state.get('_modules') or {}) if m)
    if not found or found != [2 ** i for i in range(2, 2 + len(found))]:
        raise dnnlib.UserError(f'{where}: blocks {found} are not 4, 8, ..., R')
    return found


def _channel_rule(channels: dict[int, int], hint_base: Any, hint_max: Any, where: str) -> tuple[int, int]:
    """(channel_base, channel_max) such that min(channel_base // r, channel_max) = channels[r]."""
    widest = max(channels.values())
    narrower = [width * r for r, width in channels.items() if width < widest]
    candidates = [(_plain(hint_base), _plain(hint_max))] + [(base, widest) for base in narrower or [widest * max(channels)]]
    for base, cap in candidates:
        if isinstance(base, int) and isinstance(cap, int) and \
                all(min(base // r, cap) == width for r, width in channels.items()):
            return base, cap
    raise dnnlib.UserError(f'{where}: channel widths {channels} do not follow min(channel_base / r, channel_max)')


def _fp16_blocks(module: OriginalModule, resolutions: list[int], where: str) -> int:
    """num_fp16_res: the number of blocks flagged use_fp16 (the highest resolutions)."""
    flags = [_attribute(module, f'b{r}', 'use_fp16') for r in resolutions]
    if _MISSING in flags:
        return _setting(where, 'num_fp16_res', _attribute(module, '', 'num_fp16_res'))
    return sum(bool(flag) for flag in flags)


def synthesis_kwargs(G: OriginalModule, net: str, state: dict, where: str) -> dict:
    module = _child(G, net)
    if module is None:
        raise dnnlib.UserError(f'{where}: no {net} network; only ILSGAN snapshots convert')
    res = _resolutions(module, f'{where}, {net}')
    channels = {r: int(state[f'{net}.b{r}.conv1.weight'].shape[0]) for r in res}
    base, cap = _channel_rule(channels, _attribute(G, net, 'channel_base'), _attribute(G, net, 'channel_max'),
                              f'{where}, {net}')
    return dict(img_resolution=res[-1], w_dim=int(state[f'{net}.b4.conv1.affine.weight'].shape[1]),
                img_channels=int(state[f'{net}.b{res[-1]}.torgb.weight'].shape[0]),
                channel_base=base, channel_max=cap, num_fp16_res=_fp16_blocks(module, res, f'{where}, {net}'),
                conv_clamp=_setting(where, f'conv_clamp of {net}', _attribute(module, 'b4.conv1', 'conv_clamp'),
                                    _attribute(G, net, 'conv_clamp')))


def mapping_kwargs(G: OriginalModule, net: str, state: dict, where: str) -> dict:
    layers = sum(1 for key in state if re.fullmatch(rf'{net}\.fc\d+\.weight', key))
    if layers == 0:
        raise dnnlib.UserError(f'{where}: no {net} network; only ILSGAN snapshots convert')
    return dict(z_dim=int(state[f'{net}.fc0.weight'].shape[1]), mapping_layers=layers,
                mapping_lr_mul=_setting(where, f'the learning-rate multiplier of {net}',
                                        _attribute(G, f'{net}.fc0', 'bias_gain'), _attribute(G, net, 'lr_multiplier'), 0.01),
                w_avg_beta=_setting(where, f'w_avg_beta of {net}', _attribute(G, net, 'w_avg_beta'), 0.995))


def generator_kwargs(G: OriginalModule, state: dict, where: str) -> dict:
    """Constructor arguments of our LayeredGenerator equivalent to the original PerturbGenerator."""
    bg, fg = (synthesis_kwargs(G, f'synthesis_{layer}', state, where) for layer in ('bg', 'fg'))
    mapping_bg, mapping_fg = (mapping_kwargs(G, f'mapping_{layer}', state, where) for layer in ('bg', 'fg'))
    if fg.pop('img_channels') != bg['img_channels'] + 1 or fg != {k: v for k, v in bg.items() if k != 'img_channels'} \
            or mapping_bg != mapping_fg:
        raise dnnlib.UserError(f'{where}: the fg and bg networks differ in shape or settings; this project '
                               f'builds both alike')
    return dict(**bg, **mapping_bg)


def discriminator_kwargs(D: OriginalModule, state: dict, where: str) -> dict:
    """Constructor arguments of our Discriminator equivalent to the original (resnet) one."""
    res = _resolutions(D, where)
    top = res[-1]
    if f'b{top}.skip.weight' not in state or f'b{top}.fromrgb.weight' not in state:
        raise dnnlib.UserError(f'{where}: not the residual (resnet) discriminator of the paper; it does not convert')
    channels = {r: int(state[f'b{r}.conv0.weight'].shape[0]) for r in res[1:]}
    channels[4] = int(state['b4.conv.weight'].shape[0])
    base, cap = _channel_rule(channels, _attribute(D, '', 'channel_base'), _attribute(D, '', 'channel_max'), where)
    epilogue = _attribute(D, '', 'epilogue_kwargs')
    mbstd_channels = int(state['b4.conv.weight'].shape[1]) - channels[4]
    group_size = _setting(where, 'the minibatch-stddev group size', _attribute(D, 'b4.mbstd', 'group_size'),
                          _attribute(D, 'b4', 'mbstd_group_size'),
                          epilogue.get('mbstd_group_size', _MISSING) if isinstance(epilogue, dict) else _MISSING,
                          4 if mbstd_channels == 0 else _MISSING)  # without mbstd the group size is unused
    return dict(img_resolution=top, img_channels=int(state[f'b{top}.fromrgb.weight'].shape[1]),
                channel_base=base, channel_max=cap, num_fp16_res=_fp16_blocks(D, res[1:], where),
                conv_clamp=_setting(where, 'conv_clamp of D', _attribute(D, f'b{top}.conv0', 'conv_clamp'),
                                    _attribute(D, '', 'conv_clamp')),
                mbstd_group_size=group_size, mbstd_num_channels=mbstd_channels)


# ----------------------------------------------------------------------------------------------
# Conversion.

def convert_network(record: OriginalModule, role: str, path: str) -> torch.nn.Module:
    """One original network (``role`` G, G_ema or D) as this project's module, weights loaded."""
    from training.networks import Discriminator, LayeredGenerator
    where = f'{path}, {role}'
    state = flat_state(record)
    if role == 'D':
        expected = ('DiscriminatorOpen', 'Discriminator')
        build, rules = (lambda: Discriminator(**discriminator_kwargs(record, state, where))), DISCRIMINATOR_RULES
    else:
        expected = ('PerturbGenerator',)
        build, rules = (lambda: LayeredGenerator(**generator_kwargs(record, state, where))), GENERATOR_RULES
    if record.class_name not in expected:
        raise dnnlib.UserError(f'{where} is a {record.class_name}, not ILSGAN\'s {expected[0]}; only ILSGAN '
                               f'snapshots convert')
    try:
        module = build()
    except (KeyError, ValueError, TypeError) as err:
        raise dnnlib.UserError(f'{where}: cannot infer the network\'s shape ({type(err).__name__}: {err})') from None
    if role == 'D':
        resolution = module.img_resolution
        block_index = lambda res: int(np.log2(resolution)) - int(np.log2(res))  # noqa: E731 (blocks R, R/2, ...)
    else:
        block_index = lambda res: int(np.log2(res)) - 2  # noqa: E731 (blocks 4, 8, ...)
    renamed = rename_state(state, rules, block_index, module.state_dict(), where)
    try:
        module.load_state_dict(renamed, strict=False)
    except RuntimeError as err:
        raise dnnlib.UserError(f'{where}: the weights do not fit ({str(err).strip().splitlines()[-1].strip()})') from None
    return module


def _plain_data(value: Any) -> Any:
    """Plain data for the converted snapshot's ``data`` (dicts, lists, numbers, strings), else TypeError."""
    value = _plain(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_data(v) for v in value]
    raise TypeError(type(value).__name__)


def load_original_snapshot(path: str, device: torch.device | str = 'cpu') -> dict:
    """An original ``.pkl`` as :func:`torch_utils.checkpoint.load_snapshot` returns a snapshot:
    ``{'G_ema': module, 'G': ..., 'D': ..., 'data': dict}`` (G and D when the pickle has them),
    each module on ``device``, in eval mode, without gradients."""
    payload = read_original_pickle(path)
    result: dict[str, Any] = {}
    for role in ('G', 'G_ema', 'D'):
        if isinstance(payload.get(role), OriginalModule):
            result[role] = convert_network(payload[role], role, path).to(device).eval().requires_grad_(False)
    try:
        training_set_kwargs = _plain_data(payload.get('training_set_kwargs'))
    except TypeError:
        training_set_kwargs = None  # informative only; never worth refusing a snapshot for
    result['data'] = {'converted_from': os.path.abspath(path), 'training_set_kwargs': training_set_kwargs}
    return result


def convert(src: str, dst: str) -> dict:
    """Write the original snapshot ``src`` as this project's safe snapshot ``dst`` (never overwritten)."""
    if os.path.exists(dst):
        raise dnnlib.UserError(f'{dst} already exists; choose another name (it is never overwritten)')
    nets = load_original_snapshot(src)
    checkpoint.save_snapshot(dst, {k: v for k, v in nets.items() if k != 'data'}, data=nets['data'])
    return nets


@click.group()
def main() -> None:
    """Snapshots of the original ILSGAN code (StyleGAN2-ADA pickles)."""


@main.command('convert')
@click.argument('src', metavar='OLD.pkl')
@click.argument('dst', metavar='NEW.pt')
@dnnlib.report_user_errors
def convert_command(src: str, dst: str) -> None:
    """Convert OLD.pkl (a network-snapshot-KKKKKK.pkl of the original code) into this project's
    safe snapshot NEW.pt (G, G_ema, D). The pickle is read with an allow-list: its embedded
    source code is never executed, and any other callable in it is refused."""
    nets = convert(src, dst)
    G = nets['G_ema']
    print(f'Wrote {dst}: {", ".join(k for k in nets if k != "data")} from {src} '
          f'({G.img_resolution} px, z_dim {G.z_dim}, {G.num_ws} ws per network)')


if __name__ == '__main__':
    main()
