"""Snapshots of the networks (torch_utils/checkpoint.py): weights-only loading in a fresh process,
bit-identical reconstruction, atomic writes, clear errors for damaged files."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import _fixtures as fx
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


# ----------------------------------------------------------------------------------------------
# A snapshot is untrusted input: only registered network classes are built, nothing runs.

# Class names that passed the old prefix check and reach a callable through module attributes,
# and a real project function that is not a network.
GADGET_CLASSES = {
    'training.dataset.os.system': lambda flag: {'command': f'touch {flag}'},
    'metrics.auto_test.os.system': lambda flag: {'command': f'touch {flag}'},
    'torch_utils.misc.torch.utils.cpp_extension.subprocess.run': lambda flag: {'args': ['touch', flag]},
    'training.dataset.open_dataset': lambda flag: {'data': flag},
}


def write_gadget_run(folder, class_name, flag):
    """A run directory whose only snapshot passes torch.load(weights_only=True) but names ``class_name``
    (reliability probe row 72); ``flag`` is the file the payload would create."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, 'network-snapshot-000000.pt')
    record = {'class': class_name, 'kwargs': GADGET_CLASSES[class_name](flag), 'state': {}}
    torch.save({'format': checkpoint.FORMAT, 'modules': {'G_ema': record, 'G': record}, 'data': {}}, path)
    with open(os.path.join(folder, 'training_options.json'), 'w') as f:
        f.write('{"data": "synthetic", "resolution": 32}')
    return path


@pytest.mark.parametrize('class_name', sorted(GADGET_CLASSES))
def test_snapshot_naming_a_class_outside_the_registry_is_refused_without_running_it(tmp_path, class_name):
    flag = str(tmp_path / 'PWNED')
    path = write_gadget_run(str(tmp_path / 'run'), class_name, flag)
    for load in (checkpoint.read_snapshot, checkpoint.load_snapshot):
        with pytest.raises(dnnlib.UserError, match='refusing to construct') as info:
            load(path)
        assert path in str(info.value) and class_name in str(info.value) and '\n' not in str(info.value)
    assert not os.path.exists(flag)


def _entry_point_command(entry, run_dir, snapshot, tmp_path):
    if entry == 'generate':
        return [os.path.join(ROOT, 'generate_segmentation_samples.py'), f'--network={snapshot}', '--n=4',
                f'--outdir={tmp_path / "syn"}']
    if entry == 'auto_test':
        return ['-m', 'metrics.auto_test', '--quiet', run_dir]
    images = tmp_path / 'images'  # a tiny image folder, so that training reaches --resume quickly
    images.mkdir()
    for i in range(4):
        fx.write_image(str(images / f'{i}.png'), fx.solid(16, 16, fx.RED))
    return [os.path.join(ROOT, 'train_ILS_64.py'), '--cfg=cpu', f'--data={images}', f'--outdir={tmp_path / "out"}',
            '--kimg=0.01', '--metrics=none', '--no-auto-test', f'--resume={snapshot}']


@pytest.mark.parametrize('entry, class_name', [
    ('generate', 'training.dataset.os.system'), ('auto_test', 'training.dataset.os.system'),
    ('resume', 'training.dataset.os.system'), ('generate', 'metrics.auto_test.os.system'),
    ('auto_test', 'torch_utils.misc.torch.utils.cpp_extension.subprocess.run')])
def test_gadget_snapshot_given_to_an_entry_point_is_one_line_exit_2_and_runs_nothing(tmp_path, entry, class_name):
    flag = str(tmp_path / 'PWNED')
    run_dir = str(tmp_path / 'run')
    snapshot = write_gadget_run(run_dir, class_name, flag)
    proc = subprocess.run([sys.executable, *_entry_point_command(entry, run_dir, snapshot, tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1'))
    # The auto test may first make the synthetic test split (a progress line) if the cache lacks it.
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith('Generating ')]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
    assert snapshot in lines[0] and 'refusing to construct' in lines[0]
    assert not os.path.exists(flag)


def _valid_payload(tmp_path):
    G, _, _ = make_networks(4)
    path = str(tmp_path / 'valid.pt')
    checkpoint.save_snapshot(path, {'G': G}, data={'kimg': 1.0})
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize('damage, message', [
    (lambda p: p['modules']['G'].update(state=7), 'not a dict of named tensors'),
    (lambda p: p['modules']['G']['state'].update(extra='text'), 'not a dict of named tensors'),
    (lambda p: p['modules']['G'].update(kwargs=[1, 2]), 'bad constructor arguments'),
    (lambda p: p['modules']['G']['kwargs'].update(z_dim=torch.zeros(1)), 'bad constructor arguments'),
    (lambda p: p['modules']['G']['kwargs'].update(no_such_argument=1), 'cannot build training.networks.LayeredGenerator'),
    (lambda p: p['modules']['G']['kwargs'].update(z_dim=8), 'weights do not fit'),
    (lambda p: p['modules']['G'].update(extra=1), 'not a module record'),
    (lambda p: p['modules']['G'].update({'class': 5}), 'refusing to construct 5'),
    (lambda p: p['modules'].update(G=[]), 'not a module record'),
    (lambda p: p.update(extra={}), 'exactly the entries format, modules and data'),
    (lambda p: p.update(data=[1]), 'data is not a dict'),
])
def test_malformed_snapshot_is_a_one_line_user_error_naming_the_file(tmp_path, damage, message):
    payload = _valid_payload(tmp_path)
    damage(payload)
    path = str(tmp_path / 'network-snapshot-000001.pt')
    torch.save(payload, path)
    with pytest.raises(dnnlib.UserError, match=message) as info:
        checkpoint.load_snapshot(path)
    assert path in str(info.value) and '\n' not in str(info.value)


def test_pickle_with_code_is_refused_naming_the_callable(tmp_path):
    path = str(tmp_path / 'network-snapshot-000002.pt')
    torch.save(Payload(str(tmp_path / 'PWNED')), path)
    with pytest.raises(dnnlib.UserError, match=r'refusing to load it: .*\(posix\.system\)') as info:
        checkpoint.read_snapshot(path)
    assert path in str(info.value) and 'truncated' not in str(info.value)
    assert not os.path.exists(tmp_path / 'PWNED')


class Payload:
    """Unpickling this runs ``touch flag`` (the classic pickle payload)."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return os.system, (f'touch {self.flag}',)


def test_every_rebuildable_class_is_registered_under_its_full_name():
    assert checkpoint.registered_class('training.networks.LayeredGenerator') is LayeredGenerator
    assert checkpoint.registered_class('training.networks.Discriminator') is Discriminator
    from metrics.segmentation import UNet
    assert checkpoint.registered_class('metrics.segmentation.UNet') is UNet
    assert checkpoint.registered_class('training.networks.torch.nn.Linear') is None
    assert checkpoint.registered_class('training.networks') is None
