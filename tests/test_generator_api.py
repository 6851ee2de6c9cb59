"""training.generator_api: load a generator from a snapshot, a run directory or an original .pkl,
and draw its layers per seed."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import dnnlib
from metrics import generate
from tests.test_legacy import make_networks, persistence, write_original_pickle  # noqa: F401 (a fixture)
from torch_utils import checkpoint, misc
from training import networks
from training.generator_api import draw_layers, load_generator, seed_latents, snapshot_for

TINY_G = dict(img_resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8)


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with two snapshots of a tiny generator (the second better by FID)."""
    run = tmp_path / 'run'
    run.mkdir()
    lines = []
    for kimg, fid in ((4, 30.0), (8, 20.0)):
        torch.manual_seed(kimg)
        G = networks.LayeredGenerator(**TINY_G)
        path = run / f'network-snapshot-{kimg:06d}.pt'
        checkpoint.save_snapshot(str(path), {'G_ema': G}, data={'kimg': float(kimg)})
        lines.append(json.dumps({'metric': 'fid10k_full', 'results': {'fid10k_full': fid},
                                 'snapshot_pkl': path.name}))
    return run, lines


def test_a_run_directory_gives_its_best_snapshot_else_its_newest(run_dir):
    run, lines = run_dir
    assert snapshot_for(str(run)).endswith('network-snapshot-000008.pt')         # no metric file: the newest
    (run / 'metric-fid10k_full.jsonl').write_text(lines[1].replace('20.0', '40.0') + '\n' + lines[0] + '\n')
    assert snapshot_for(str(run)).endswith('network-snapshot-000004.pt')         # the lowest FID
    G = load_generator(str(run))
    stored = checkpoint.load_snapshot(str(run / 'network-snapshot-000004.pt'))['G_ema']
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), stored.state_dict().values()))


def test_layers_have_their_shapes_and_ranges_and_each_is_a_function_of_its_seed(run_dir):
    run, _ = run_dir
    G = load_generator(str(run / 'network-snapshot-000004.pt'))
    layers = draw_layers(G, [5, 0, 2])
    assert {name: tuple(t.shape) for name, t in layers.items()} == dict(
        img=(3, 3, 16, 16), fg=(3, 3, 16, 16), bg=(3, 3, 16, 16), mask=(3, 1, 16, 16))
    assert all(t.dtype == torch.float32 and t.device.type == 'cpu' for t in layers.values())
    mask = layers['mask']
    assert 0 <= mask.min() and mask.max() <= 1 and mask.std() > 0
    torch.testing.assert_close(layers['img'], mask * layers['fg'] + (1 - mask) * layers['bg'])
    alone = draw_layers(G, 2)                                                    # another batch, another order
    torch.testing.assert_close(alone['img'][0], layers['img'][2], atol=1e-5, rtol=0)
    assert not torch.allclose(layers['img'][0], layers['img'][1])
    # Seed s is sample s of a set generated with --seed=0: its PNG holds the same pixels.
    outdir, _ = generate.generate_from_network(str(run / 'network-snapshot-000004.pt'), n=6,
                                               outdir=str(run / 'set'), progress=False)
    png = np.asarray(Image.open(os.path.join(outdir, 'img', '000006.png')))
    assert np.abs(png.astype(int) - misc.to_uint8(layers['img'][:1])[0].astype(int)).max() <= 1
    # Truncation toward the mean w moves the layers.
    assert not torch.allclose(draw_layers(G, [5], truncation_psi=0.5)['img'], layers['img'][:1])


def test_bad_seeds_and_paths_are_user_errors(tmp_path):
    for seeds, message in (([-1], 'seed -1 is not an integer'), ([1.5], 'seed 1.5'), ([True], 'seed True'),
                           ([], 'no seeds given')):
        with pytest.raises(dnnlib.UserError, match=message):
            seed_latents(seeds, 8)
    with pytest.raises(dnnlib.UserError, match='neither a snapshot file nor a run directory'):
        load_generator(str(tmp_path / 'nothing'))
    with pytest.raises(dnnlib.UserError, match='no network-snapshot'):
        load_generator(str(tmp_path))


def test_an_original_pkl_loads_through_the_converter_without_running_its_code(tmp_path, persistence):  # noqa: F811
    G, G_ema, D = make_networks(2)
    path = tmp_path / 'network-snapshot-000200.pkl'
    write_original_pickle(path, G, G_ema, D, tmp_path / 'SOURCE_RAN')
    loaded = load_generator(str(path))
    assert not (tmp_path / 'SOURCE_RAN').exists()
    z = torch.from_numpy(seed_latents([3, 4], G_ema.z_dim))
    with torch.no_grad():
        expected = G_ema.eval()(z, noise_mode='const')
    got = draw_layers(loaded, [3, 4])
    for name in ('img', 'mask'):
        torch.testing.assert_close(got[name], expected[name])
