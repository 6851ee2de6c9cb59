"""Importing the original code's network-snapshot-*.pkl (torch_utils/legacy.py reads it,
training/legacy_convert.py builds our networks from it): the pickle is
written here by hand in StyleGAN2-ADA's persistence format, from our own networks renamed to the
original's parameter names; converting it must give back the same images and logits, and run
nothing from the file."""

import collections
import json
import os
import pickle
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import dnnlib
from metrics import generate
from torch_utils import checkpoint
from training import legacy_convert
from training import sample_set, snapshots
from training.networks import Discriminator, LayeredGenerator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 16 px with a narrower top block (channels 16, 16, 8), two float16 blocks, group size 2: every
# hyper-parameter the converter infers differs from its fallback.
G_KWARGS = dict(img_resolution=16, z_dim=8, w_dim=12, channel_base=128, channel_max=16, mapping_layers=3,
                num_fp16_res=2, conv_clamp=256)
D_KWARGS = dict(img_resolution=16, channel_base=128, channel_max=16, num_fp16_res=2, conv_clamp=256,
                mbstd_group_size=2)


# ----------------------------------------------------------------------------------------------
# A writer of the original format, independent of the converter's rule tables: it walks our
# modules and names each part as the original code does.

def _reconstruct_persistent_obj(meta):  # what unpickling with the original code would call
    raise AssertionError('the converter called the persistence reconstructor')


_reconstruct_persistent_obj.__module__ = 'torch_utils.persistence'


class Persistent:
    """Pickles as the original's persistence record: (reconstructor, (meta,)) with the class
    name, module source (``source``, never to be run) and the module's __dict__-like state."""

    def __init__(self, class_name, source, params=None, buffers=None, modules=None, **attributes):
        self.meta = dict(type='class', version=4, module_src=source, class_name=class_name, state=dict(
            training=False, _parameters=collections.OrderedDict(
                (k, torch.nn.Parameter(v.detach().clone(), requires_grad=False)) for k, v in (params or {}).items()),
            _buffers=collections.OrderedDict((k, v.detach().clone()) for k, v in (buffers or {}).items()),
            _non_persistent_buffers_set=set(), _modules=collections.OrderedDict(modules or {}),
            _forward_hooks=collections.OrderedDict(), _init_args=(), **attributes))

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


def original_fc(layer, source):
    return Persistent('FullyConnectedLayer', source, params=dict(weight=layer.weight, bias=layer.bias),
                      activation=layer.activation, weight_gain=np.float64(layer.weight_gain),
                      bias_gain=layer.bias_gain)


def original_synthesis(net, source):
    blocks = {}
    for block in net.blocks:
        r = block.resolution
        convs = {'conv1': block.convs[0]} if block.is_first else {'conv0': block.convs[0], 'conv1': block.convs[1]}
        children = {name: Persistent('SynthesisLayer', source, params=dict(weight=c.weight, bias=c.bias,
                                                                              noise_strength=c.noise_strength),
                                     buffers=dict(noise_const=c.noise_const, resample_filter=c.resample_filter),
                                     modules=dict(affine=original_fc(c.affine, source)), conv_clamp=c.conv_clamp,
                                     up=c.up, resolution=r)
                    for name, c in convs.items()}
        t = block.torgb
        children['torgb'] = Persistent('ToRGBLayer', source, params=dict(weight=t.weight, bias=t.bias),
                                       modules=dict(affine=original_fc(t.affine, source)), conv_clamp=t.conv_clamp)
        blocks[f'b{r}'] = Persistent('SynthesisBlock', source, params=dict(const=block.const) if block.is_first else {},
                                     buffers=dict(resample_filter=block.resample_filter), modules=children,
                                     use_fp16=block.use_fp16, resolution=r)
    return Persistent('SynthesisNetwork', source, modules=blocks, num_ws=net.num_ws,
                      _init_kwargs=dict(w_dim=net.w_dim, img_resolution=net.img_resolution,
                                        img_channels=net.img_channels, channel_base=128, channel_max=16))


def original_mapping(net, source):
    return Persistent('MappingNetwork', source, buffers=dict(w_avg=net.w_avg),
                      modules={f'fc{i}': original_fc(layer, source) for i, layer in enumerate(net.layers)},
                      w_avg_beta=net.w_avg_beta, num_ws=net.num_ws)


def original_generator(G, source):
    return Persistent('PerturbGenerator', source, modules={
        'mapping_bg': original_mapping(G.mapping_bg, source), 'synthesis_bg': original_synthesis(G.synthesis_bg, source),
        'mapping_fg': original_mapping(G.mapping_fg, source), 'synthesis_fg': original_synthesis(G.synthesis_fg, source)},
        _init_kwargs=dict(z_dim=G.z_dim, w_dim=G.w_dim, img_resolution=G.img_resolution, img_channels=3,
                          mapping_kwargs=dnnlib.EasyDict(num_layers=3), synthesis_kwargs=dnnlib.EasyDict(conv_clamp=256)))


def original_conv(layer, source):
    params = dict(weight=layer.weight, **({'bias': layer.bias} if layer.bias is not None else {}))
    return Persistent('Conv2dLayer', source, params=params, buffers=dict(resample_filter=layer.resample_filter),
                      conv_clamp=layer.conv_clamp, weight_gain=np.float64(layer.weight_gain))


def original_discriminator(D, source):
    blocks = {}
    for block, r in zip(D.blocks, D.block_resolutions):
        children = {name: original_conv(getattr(block, name), source) for name in ('fromrgb', 'conv0', 'conv1', 'skip')
                    if getattr(block, name) is not None}
        blocks[f'b{r}'] = Persistent('DiscriminatorBlock', source, buffers=dict(resample_filter=block.conv1.resample_filter),
                                     modules=children, use_fp16=block.use_fp16, architecture='resnet')
    e = D.epilogue
    blocks['b4'] = Persistent('DiscriminatorEpilogue', source, modules=dict(
        mbstd=Persistent('MinibatchStdLayer', source, group_size=e.mbstd_group_size, num_channels=1),
        conv=original_conv(e.conv, source), fc=original_fc(e.fc, source), out=original_fc(e.out, source)))
    return Persistent('DiscriminatorOpen', source, modules=blocks,
                      _init_kwargs=dict(c_dim=0, img_resolution=16, img_channels=3, architecture='resnet',
                                        epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=2)))


def make_networks(seed=0):
    torch.manual_seed(seed)
    G = LayeredGenerator(**G_KWARGS)
    G_ema = LayeredGenerator(**G_KWARGS)
    with torch.no_grad():  # non-trivial noise strengths, biases and w_avg so that all are carried over
        for net in (G, G_ema):
            for name, p in net.named_parameters():
                if name.endswith(('noise_strength', 'bias')):
                    p.normal_(0, 0.3)
            net.mapping_bg.w_avg.normal_()
            net.mapping_fg.w_avg.normal_()
    D = Discriminator(**D_KWARGS)
    with torch.no_grad():
        for name, p in D.named_parameters():
            if name.endswith('bias'):
                p.normal_(0, 0.3)
    return G, G_ema, D


@pytest.fixture
def persistence(monkeypatch):
    """Lets pickle find the reconstructor under the original's module name while writing."""
    module = types.ModuleType('torch_utils.persistence')
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, 'torch_utils.persistence', module)


def write_original_pickle(path, G, G_ema, D, flag, protocol=3, **extra):
    """``network-snapshot-*.pkl`` of the original; its module source would create ``flag`` if run."""
    source = f'open({str(flag)!r}, "w").write("the embedded source ran")\n'
    payload = dict(G=original_generator(G, source), D=original_discriminator(D, source),
                   G_ema=original_generator(G_ema, source),
                   augment_pipe=Persistent('AugmentPipe', source, buffers=dict(p=torch.tensor(0.3)), xflip=np.float64(1)),
                   training_set_kwargs=dnnlib.EasyDict(class_name='training.dataset.CUBDataset', resolution=16,
                                                       use_labels=False, max_size=None, xflip=False))
    payload.update(extra)
    with open(path, 'wb') as f:
        pickle.dump(payload, f, protocol=protocol)


def outputs(G, D, z, imgs):
    with torch.no_grad():
        return {**G.eval()(z, truncation_psi=0.7, noise_mode='const'), 'logits': D.eval()(imgs)}


# ----------------------------------------------------------------------------------------------

def test_converted_snapshot_gives_the_same_images_and_logits_and_runs_nothing(tmp_path, persistence):
    G, G_ema, D = make_networks()
    flag = tmp_path / 'SOURCE_RAN'
    old, new = tmp_path / 'network-snapshot-000004.pkl', tmp_path / 'network-snapshot-000004.pt'
    write_original_pickle(old, G, G_ema, D, flag)
    proc = subprocess.run([sys.executable, '-m', 'torch_utils.legacy', 'convert', str(old), str(new)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f'Wrote {new}: G, G_ema, D' in proc.stdout
    assert not flag.exists()

    payload = torch.load(new, weights_only=True)  # a safe snapshot of this project
    assert payload['modules']['G_ema']['kwargs'] == dict(G_KWARGS, img_channels=3, mapping_lr_mul=0.01, w_avg_beta=0.995)
    assert payload['modules']['D']['kwargs'] == dict(D_KWARGS, img_channels=3, mbstd_num_channels=1)
    assert payload['data']['training_set_kwargs']['class_name'] == 'training.dataset.CUBDataset'
    nets = checkpoint.load_snapshot(str(new))
    z = torch.randn([3, 8])
    imgs = torch.rand([4, 3, 16, 16]) * 2 - 1
    for role, source in (('G', G), ('G_ema', G_ema)):
        expected, got = outputs(source, D, z, imgs), outputs(nets[role], nets['D'], z, imgs)
        for key in expected:
            assert torch.equal(got[key], expected[key]), (role, key)
        assert [b.use_fp16 for b in nets[role].synthesis_fg.blocks] == [False, True, True]
    assert nets['D'].epilogue.mbstd_group_size == 2

    before = new.read_bytes()
    with pytest.raises(dnnlib.UserError, match='already exists; choose another name'):
        legacy_convert.convert(str(old), str(new))
    assert new.read_bytes() == before


def test_generation_reads_an_original_pkl_directly(tmp_path, persistence):
    G, G_ema, D = make_networks(1)
    old = tmp_path / 'network-snapshot-000200.pkl'
    write_original_pickle(old, G, G_ema, D, tmp_path / 'SOURCE_RAN', protocol=4)
    outdir, meta = generate.generate_from_network(str(old), n=3, outdir=str(tmp_path / 'syn'), device='cpu',
                                                  progress=False)
    assert meta['kimg'] == 200 and not (tmp_path / 'SOURCE_RAN').exists()
    z = torch.from_numpy(sample_set.sample_latents(0, [0, 1, 2], 8))
    with torch.no_grad():
        expected = generate.encode_layers(G_ema.eval()(z, noise_mode='const'))
    for layer in ('img', 'mask', 'fg'):
        for i in range(3):
            png = np.asarray(Image.open(os.path.join(outdir, layer, sample_set.sample_file(i))))
            np.testing.assert_array_equal(png, expected[layer][i])


class Call:
    """Unpickles as ``function(*args)``."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize('payload, name', [
    (lambda flag: Call(os.system, f'touch {flag}'), 'posix.system'),
    (lambda flag: Call(eval, f'open({str(flag)!r}, "w")'), 'builtins.eval'),
    (lambda flag: Call(subprocess.Popen, ['touch', str(flag)]), 'subprocess.Popen'),
])
def test_pickle_with_another_callable_is_refused(tmp_path, persistence, payload, name):
    G, G_ema, D = make_networks(2)
    flag = tmp_path / 'PWNED'
    path = tmp_path / 'network-snapshot-000000.pkl'
    write_original_pickle(path, G, G_ema, D, tmp_path / 'SOURCE_RAN', augment_pipe=payload(flag))
    with pytest.raises(dnnlib.UserError, match=f'refusing to unpickle {name}') as info:
        legacy_convert.load_original_snapshot(str(path))
    assert str(path) in str(info.value) and '\n' not in str(info.value)
    assert not flag.exists()
    if name == 'posix.system':  # the command line: one line, exit 2
        proc = subprocess.run([sys.executable, os.path.join(ROOT, 'generate_segmentation_samples.py'),
                               f'--network={path}', '--n=2', f'--outdir={tmp_path / "syn"}'], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(f'error: {path}: refusing to unpickle posix.system')
        assert not flag.exists() and not (tmp_path / 'syn').exists()


def _state(record, dotted):
    """The state of the submodule ``dotted`` of a Persistent tree."""
    for name in dotted.split('.'):
        record = record.meta['state']['_modules'][name]
    return record.meta['state']


def damaged_original_error(tmp_path, damage, seed):
    """(path, UserError) of converting a tiny original snapshot whose G_ema record ``damage`` changed."""
    G, G_ema, D = make_networks(seed)
    source = original_generator(G_ema, 'raise SystemExit')
    damage(source)
    path = tmp_path / 'network-snapshot-000000.pkl'
    with open(path, 'wb') as f:
        pickle.dump({'G_ema': source}, f, protocol=4)
    with pytest.raises(dnnlib.UserError) as info:
        legacy_convert.load_original_snapshot(str(path))
    return path, info.value


@pytest.mark.parametrize('damage, message', [
    (lambda G: _state(G, 'mapping_fg.fc1')['_parameters'].pop('bias'), "no value for 'mapping_fg.layers.1.bias'"),
    (lambda G: _state(G, 'synthesis_bg.b8')['_parameters'].update(extra=torch.nn.Parameter(torch.zeros(1))),
     "no rule for the parameter 'synthesis_bg.b8.extra'"),
    (lambda G: _state(G, 'synthesis_bg.b8')['_modules'].update(conv2=_state(G, 'synthesis_bg.b8')['_modules']['conv1']),
     "no rule for the parameter 'synthesis_bg.b8.conv2.weight'"),
    (lambda G: G.meta.update(class_name='Generator'), 'is a Generator, not ILSGAN\'s PerturbGenerator'),
    (lambda G: _state(G, 'synthesis_fg.b4.conv1').update(conv_clamp=None), 'fg and bg networks differ'),
])
def test_unknown_or_missing_parameters_are_named(tmp_path, persistence, damage, message):
    path, error = damaged_original_error(tmp_path, damage, seed=3)
    assert re.search(message, str(error))
    assert f'{path}, G_ema' in str(error)


def test_truncated_or_foreign_pickle_is_a_user_error(tmp_path, persistence):
    G, G_ema, D = make_networks(4)
    path = tmp_path / 'network-snapshot-000000.pkl'
    write_original_pickle(path, G, G_ema, D, tmp_path / 'SOURCE_RAN')
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(dnnlib.UserError, match='cannot read .* as a snapshot of the original code .*truncated'):
        legacy_convert.load_original_snapshot(str(path))
    with open(path, 'wb') as f:
        pickle.dump({'G': 1}, f)
    with pytest.raises(dnnlib.UserError, match='no G_ema network'):
        legacy_convert.load_original_snapshot(str(path))


def _original_metric_line(kimg, fid, sigma):
    """One line of the original's metric-fid10k_full.jsonl, as its metric_main writes it."""
    return json.dumps({'results': {'fid10k_full': fid}, 'metric': 'fid10k_full', 'total_time': 61.5,
                       'total_time_str': '1m 01s', 'num_gpus': 1, 'snapshot_pkl': f'network-snapshot-{kimg:06d}.pkl',
                       'timestamp': 1650000000.0 + kimg, 'sigma': sigma}) + '\n'


def test_original_run_directory_chooses_by_its_metric_lines_and_generates(tmp_path, persistence):
    """An original run (network-snapshot-KKKKKK.pkl + its metric file) works as --network=RUN_DIR:
    --topk, --sigma and --pkl_idx choose among the pickles, which are converted in memory."""
    run = tmp_path / '00003-DRC_car64split0-ILS_predL-1gpu-batch32'
    run.mkdir()
    flag = tmp_path / 'SOURCE_RAN'
    generators = {}
    for kimg, seed in ((0, 5), (200, 6), (400, 7)):
        G, G_ema, D = make_networks(seed)
        generators[kimg] = G_ema
        write_original_pickle(run / f'network-snapshot-{kimg:06d}.pkl', G, G_ema, D, flag)
    (run / 'network-snapshot-000400-Autoreg.pt').write_bytes(b'estimator weights: not a snapshot')
    with open(run / 'metric-fid10k_full.jsonl', 'w') as f:  # best overall at 400 (sigma 1), below 300 at 200
        f.writelines([_original_metric_line(0, 310.5, 0.2), _original_metric_line(200, 120.5, 0.2),
                      _original_metric_line(400, 95.25, 1.0)])
    best = snapshots.choose_snapshot(str(run))
    assert best.path == str(run / 'network-snapshot-000400.pkl') and best.metric_value == 95.25 and best.sigma == 1.0
    assert snapshots.choose_snapshot(str(run), topk=300).kimg == 200
    assert snapshots.choose_snapshot(str(run), sigma=0.2).kimg == 200
    chosen = snapshots.choose_snapshot(str(run), pkl_idx=0)
    assert chosen.path.endswith('network-snapshot-000000.pkl') and chosen.metric_value == 310.5

    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'generate_segmentation_samples.py'), f'--network={run}',
                           '--n=2', '--topk=300', '--device=cpu', '--batch=2'], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'network-snapshot-000200.pkl (lowest fid10k_full (kimg <= 300); fid=120.5, sigma=0.2)' in proc.stdout
    outdir = run / 'synthetic_data-000200'  # beside the snapshot, as the original
    meta = json.loads((outdir / 'meta.json').read_text())
    assert meta['kimg'] == 200 and meta['snapshot_sha256'] == generate.file_sha256(str(run / 'network-snapshot-000200.pkl'))
    z = torch.from_numpy(sample_set.sample_latents(0, [0, 1], 8))
    with torch.no_grad():
        expected = generate.encode_layers(generators[200].eval()(z, noise_mode='const'))
    for i in range(2):
        png = np.asarray(Image.open(outdir / 'mask' / sample_set.sample_file(i)))
        np.testing.assert_array_equal(png, expected['mask'][i])
    assert not flag.exists()

    # A converted copy beside its pickle is taken instead (read without unpickling).
    legacy_convert.convert(str(run / 'network-snapshot-000400.pkl'), str(run / 'network-snapshot-000400.pt'))
    assert snapshots.choose_snapshot(str(run)).path == str(run / 'network-snapshot-000400.pt')


def test_generic_packages_never_import_training_and_both_commands_convert(tmp_path, persistence):
    """torch_utils and dnnlib import nothing from training/metrics (the converter of ILSGAN's networks is
    training/legacy_convert.py); ``python -m torch_utils.legacy convert`` stays the command users type."""
    code = ('import importlib, pkgutil, sys\n'
            'import dnnlib, torch_utils, torch_utils.ops\n'
            'for package in (dnnlib, torch_utils, torch_utils.ops):\n'
            '    for info in pkgutil.iter_modules(package.__path__):\n'
            '        importlib.import_module(f"{package.__name__}.{info.name}")\n'
            'print(sorted(m for m in sys.modules if m.split(".")[0] in ("training", "metrics", "bench")))\n')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == '[]', proc.stdout + proc.stderr

    G, G_ema, D = make_networks(6)
    old = tmp_path / 'network-snapshot-000008.pkl'
    write_original_pickle(old, G, G_ema, D, tmp_path / 'SOURCE_RAN')
    outputs_by_command = []
    for module in ('torch_utils.legacy', 'training.legacy_convert'):
        new = tmp_path / f'{module}.pt'
        proc = subprocess.run([sys.executable, '-m', module, 'convert', str(old), str(new)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith(f'Wrote {new}: G, G_ema, D'), proc.stderr
        outputs_by_command.append(checkpoint.load_snapshot(str(new))['G_ema'].state_dict())
    assert outputs_by_command[0].keys() == outputs_by_command[1].keys()
    assert all(torch.equal(outputs_by_command[0][k], outputs_by_command[1][k]) for k in outputs_by_command[0])
    proc = subprocess.run([sys.executable, '-m', 'torch_utils.legacy', 'convert', '--help'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith('Usage: python -m torch_utils.legacy convert [OPTIONS] OLD.pkl NEW.pt')
