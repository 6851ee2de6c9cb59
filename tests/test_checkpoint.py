"""Snapshots of the networks (torch_utils/checkpoint.py): weights-only loading in a fresh process,
bit-identical reconstruction, atomic writes, clear errors for damaged files."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import dnnlib
from torch_utils import checkpoint
from training.networks import Discriminator, LayeredGenerator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_G = dict(img_resolution=32, channel_base=1024, channel_max=32, mapping_layers=2, z_dim=32, w_dim=32)
SMALL_D = dict(img_resolution=32, channel_base=1024, channel_max=32)




def make_networks(seed=0):
    torch.manual_seed(seed)
    G = LayeredGenerator(**SMALL_G)
    with torch.no_grad():  # non-trivial noise strengths and w_avg so that both are exercised
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(0.2)
        G.mapping_bg.w_avg.normal_()
    G_ema = LayeredGenerator(**SMALL_G)
    D = Discriminator(**SMALL_D)
    return G, G_ema, D


def outputs(G, D, z, imgs):
    with torch.no_grad():
        layers = G.eval()(z, truncation_psi=0.7, noise_mode='const')
        return {**layers, 'logits': D.eval()(imgs)}


CHILD = textwrap.dedent('''
    import sys, torch
    from torch_utils.checkpoint import load_snapshot
    snapshot, inputs, result, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(threads)
    nets = load_snapshot(snapshot)
    z, imgs = torch.load(inputs, weights_only=True)
    G, D = nets['G'], nets['D']
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    with torch.no_grad():
        layers = G(z, truncation_psi=0.7, noise_mode='const')
        layers['logits'] = D(imgs)
    classes = sorted(type(m).__name__ for k, m in nets.items() if k != 'data')
    torch.save({'out': layers, 'data': nets['data'], 'classes': classes}, result)
''')


def test_snapshot_round_trip_in_another_process_is_bit_identical(tmp_path):
    G, G_ema, D = make_networks()
    path = str(tmp_path / 'network-snapshot-000004.pt')
    checkpoint.save_snapshot(path, {'G': G, 'G_ema': G_ema, 'D': D, 'estimator': None},
                             data={'kimg': 4.0, 'cur_nimg': 4000, 'sigma': 0.2, 'p': torch.tensor(0.25)})
    # Plain tensors and data only: loadable without unpickling code.
    payload = torch.load(path, weights_only=True)
    assert set(payload['modules']) == {'G', 'G_ema', 'D'}
    assert payload['modules']['G']['class'] == 'training.networks.LayeredGenerator'
    assert payload['modules']['G']['kwargs'] == SMALL_G
    assert 'synthesis_fg.blocks.0.convs.0.noise_const' in payload['modules']['G']['state']

    z = torch.randn([3, 32])
    imgs = torch.rand([4, 3, 32, 32]) * 2 - 1
    inputs, result = str(tmp_path / 'inputs.pt'), str(tmp_path / 'result.pt')
    torch.save((z, imgs), inputs)
    subprocess.run([sys.executable, '-c', CHILD, path, inputs, result, str(torch.get_num_threads())],
                   cwd=ROOT, check=True, timeout=120)
    child = torch.load(result, weights_only=True)
    assert child['classes'] == ['Discriminator', 'LayeredGenerator', 'LayeredGenerator']
    assert child['data']['kimg'] == 4.0 and child['data']['cur_nimg'] == 4000
    assert torch.equal(child['data']['p'], torch.tensor(0.25))
    expected = outputs(G, D, z, imgs)
    for key, value in expected.items():
        assert torch.equal(child['out'][key], value), key


def test_load_snapshot_rebuilds_modules_in_eval_mode(tmp_path):
    G, G_ema, D = make_networks(1)
    path = str(tmp_path / 'snap.pt')
    checkpoint.save_snapshot(path, {'G': G, 'G_ema': G_ema, 'D': D})
    nets = checkpoint.load_snapshot(path)
    assert set(nets) == {'G', 'G_ema', 'D', 'data'} and nets['data'] == {}
    for name, original in (('G', G), ('G_ema', G_ema), ('D', D)):
        module = nets[name]
        assert type(module) is type(original) and not module.training
        assert not any(p.requires_grad for p in module.parameters())
        reloaded, source = module.state_dict(), original.state_dict()
        assert reloaded.keys() == source.keys()
        assert all(torch.equal(reloaded[k], source[k]) for k in source)
    assert torch.equal(nets['G'].mapping_bg.w_avg, G.mapping_bg.w_avg)


def test_failed_save_keeps_the_previous_snapshot_and_leaves_no_temporary(tmp_path, monkeypatch):
    G, G_ema, D = make_networks(2)
    path = str(tmp_path / 'network-snapshot-000000.pt')
    checkpoint.save_snapshot(path, {'G': G}, data={'kimg': 0.0})
    before = open(path, 'rb').read()

    def failing_fsync(fd):
        raise OSError('disk full (simulated)')

    # The bytes are already in the temporary file when the failure hits, as on a full disk.
    monkeypatch.setattr(os, 'fsync', failing_fsync)
    with torch.no_grad():
        G.mapping_bg.layers[0].weight.add_(1.0)
    with pytest.raises(OSError, match='disk full'):
        checkpoint.save_snapshot(path, {'G': G, 'D': D}, data={'kimg': 4.0})
    assert open(path, 'rb').read() == before
    assert os.listdir(tmp_path) == ['network-snapshot-000000.pt']

    # A failure while collecting the data never creates the new file either.
    monkeypatch.undo()
    fresh = str(tmp_path / 'network-snapshot-000004.pt')
    with pytest.raises(TypeError, match='plain data'):
        checkpoint.save_snapshot(fresh, {'G': G}, data={'bad': object()})
    assert not os.path.exists(fresh)
    assert checkpoint.read_snapshot(path)['data'] == {'kimg': 0.0}


def test_truncated_or_missing_snapshot_is_a_user_error_naming_the_file(tmp_path):
    G, _, D = make_networks(3)
    path = str(tmp_path / 'good.pt')
    checkpoint.save_snapshot(path, {'G': G, 'D': D})
    data = open(path, 'rb').read()
    truncated = str(tmp_path / 'network-snapshot-000200.pt')
    with open(truncated, 'wb') as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(dnnlib.UserError, match='network-snapshot-000200.pt') as info:
        checkpoint.load_snapshot(truncated)
    assert 'truncated or corrupt' in str(info.value)
    missing = str(tmp_path / 'nowhere.pt')
    with pytest.raises(dnnlib.UserError, match='nowhere.pt'):
        checkpoint.load_snapshot(missing)
    foreign = str(tmp_path / 'foreign.pt')
    torch.save({'G_ema': {'weight': torch.zeros(2)}}, foreign)
    with pytest.raises(dnnlib.UserError, match='not an ILSGAN snapshot'):
        checkpoint.load_snapshot(foreign)


def test_only_rebuildable_project_modules_are_saved(tmp_path):
    with pytest.raises(TypeError, match='not @rebuildable'):
        checkpoint.save_snapshot(str(tmp_path / 'x.pt'), {'G': torch.nn.Linear(2, 2)})
    assert not os.path.exists(tmp_path / 'x.pt')
