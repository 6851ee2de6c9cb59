"""Snapshots of the original ILSGAN code (``network-snapshot-KKKKKK.pkl``) → this project's safe snapshots.

    python -m torch_utils.legacy convert network-snapshot-008000.pkl network-snapshot-008000.pt

(the command the original's users type; it runs :func:`main` of this module, as does
``python -m training.legacy_convert convert ...``).

:mod:`torch_utils.legacy` reads the pickle without running it: each network comes back as an
:class:`~torch_utils.legacy.OriginalModule` record of plain data. Here the records' parameters are
renamed onto :class:`training.networks.LayeredGenerator` and :class:`training.networks.Discriminator`
by the rule tables below; the hyper-parameters come from tensor shapes and the records'
attributes (``conv_clamp``, ``use_fp16``, ...), falling back to the constructor arguments each
record keeps (``_init_kwargs``). Any name without a rule, and any parameter of ours left without
a value, is an error naming it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import click
import numpy as np
import torch

import dnnlib
from torch_utils import checkpoint
from torch_utils.legacy import (MISSING, OriginalModule, attribute, child, flat_state, plain, plain_data,
                                read_original_pickle, rename_state, setting)
from training.networks import Discriminator, LayeredGenerator

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


# ----------------------------------------------------------------------------------------------
# Hyper-parameters.

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
    candidates = [(plain(hint_base), plain(hint_max))] + [(base, widest) for base in narrower or [widest * max(channels)]]
    for base, cap in candidates:
        if isinstance(base, int) and isinstance(cap, int) and \
                all(min(base // r, cap) == width for r, width in channels.items()):
            return base, cap
    raise dnnlib.UserError(f'{where}: channel widths {channels} do not follow min(channel_base / r, channel_max)')


def _fp16_blocks(module: OriginalModule, resolutions: list[int], where: str) -> int:
    """num_fp16_res: the number of blocks flagged use_fp16 (the highest resolutions)."""
    flags = [attribute(module, f'b{r}', 'use_fp16') for r in resolutions]
    if MISSING in flags:
        return setting(where, 'num_fp16_res', attribute(module, '', 'num_fp16_res'))
    return sum(bool(flag) for flag in flags)


def synthesis_kwargs(G: OriginalModule, net: str, state: dict, where: str) -> dict:
    module = child(G, net)
    if module is None:
        raise dnnlib.UserError(f'{where}: no {net} network; only ILSGAN snapshots convert')
    res = _resolutions(module, f'{where}, {net}')
    channels = {r: int(state[f'{net}.b{r}.conv1.weight'].shape[0]) for r in res}
    base, cap = _channel_rule(channels, attribute(G, net, 'channel_base'), attribute(G, net, 'channel_max'),
                              f'{where}, {net}')
    return dict(img_resolution=res[-1], w_dim=int(state[f'{net}.b4.conv1.affine.weight'].shape[1]),
                img_channels=int(state[f'{net}.b{res[-1]}.torgb.weight'].shape[0]),
                channel_base=base, channel_max=cap, num_fp16_res=_fp16_blocks(module, res, f'{where}, {net}'),
                conv_clamp=setting(where, f'conv_clamp of {net}', attribute(module, 'b4.conv1', 'conv_clamp'),
                                   attribute(G, net, 'conv_clamp')))


def mapping_kwargs(G: OriginalModule, net: str, state: dict, where: str) -> dict:
    layers = sum(1 for key in state if re.fullmatch(rf'{net}\.fc\d+\.weight', key))
    if layers == 0:
        raise dnnlib.UserError(f'{where}: no {net} network; only ILSGAN snapshots convert')
    return dict(z_dim=int(state[f'{net}.fc0.weight'].shape[1]), mapping_layers=layers,
                mapping_lr_mul=setting(where, f'the learning-rate multiplier of {net}',
                                       attribute(G, f'{net}.fc0', 'bias_gain'), attribute(G, net, 'lr_multiplier'), 0.01),
                w_avg_beta=setting(where, f'w_avg_beta of {net}', attribute(G, net, 'w_avg_beta'), 0.995))


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
    base, cap = _channel_rule(channels, attribute(D, '', 'channel_base'), attribute(D, '', 'channel_max'), where)
    epilogue = attribute(D, '', 'epilogue_kwargs')
    mbstd_channels = int(state['b4.conv.weight'].shape[1]) - channels[4]
    group_size = setting(where, 'the minibatch-stddev group size', attribute(D, 'b4.mbstd', 'group_size'),
                         attribute(D, 'b4', 'mbstd_group_size'),
                         epilogue.get('mbstd_group_size', MISSING) if isinstance(epilogue, dict) else MISSING,
                         4 if mbstd_channels == 0 else MISSING)  # without mbstd the group size is unused
    return dict(img_resolution=top, img_channels=int(state[f'b{top}.fromrgb.weight'].shape[1]),
                channel_base=base, channel_max=cap, num_fp16_res=_fp16_blocks(D, res[1:], where),
                conv_clamp=setting(where, 'conv_clamp of D', attribute(D, f'b{top}.conv0', 'conv_clamp'),
                                   attribute(D, '', 'conv_clamp')),
                mbstd_group_size=group_size, mbstd_num_channels=mbstd_channels)


# ----------------------------------------------------------------------------------------------
# Conversion.

def convert_network(record: OriginalModule, role: str, path: str) -> torch.nn.Module:
    """One original network (``role`` G, G_ema or D) as this project's module, weights loaded."""
    where = f'{path}, {role}'
    state = flat_state(record, where=where)
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
        training_set_kwargs = plain_data(payload.get('training_set_kwargs'))
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
