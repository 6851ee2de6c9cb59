"""metrics.video: a latent walk of a tiny generator, encoded and decoded again."""

import os
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dnnlib
from metrics import video
from torch_utils import checkpoint, misc
from training import generator_api, networks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_G = dict(img_resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8)


@pytest.fixture
def snapshot(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / 'run' / 'network-snapshot-000004.pt'
    path.parent.mkdir()
    checkpoint.save_snapshot(str(path), {'G_ema': networks.LayeredGenerator(**TINY_G)}, data={'kimg': 4.0})
    return path


def decode(path):
    """(frame count, (width, height)) of a video file, read back by imageio-ffmpeg's reader."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return sum(1 for _ in reader), tuple(meta['size'])


def test_seed_lists_and_walk_steps():
    assert video.parse_seeds('0-3') == [0, 1, 2, 3] and video.parse_seeds('3,1, 4-5') == [3, 1, 4, 5]
    for bad in ('a', '5-2', '-1', '1-', f'0-{video.MAX_SEEDS}'):
        with pytest.raises(dnnlib.UserError, match='--seeds='):
            video.parse_seeds(bad)
    steps = video.walk_weights(3, 4)
    assert len(steps) == 12 and steps[0] == (0, 1, 0.0) and steps[4] == (1, 2, 0.0)
    assert steps[2] == (0, 1, pytest.approx(0.5)) and steps[-1][:2] == (2, 0)      # the last seed walks home
    assert all(0 <= t < 1 for _, _, t in steps)
    assert video.default_scale(16) == 16 and video.default_scale(32) == 8 and video.default_scale(512) == 1
    assert video.frame_size(16, 2) == (4 * 32 + 3 * video.GAP, 32)


def test_a_frame_on_a_seed_shows_its_four_layers(snapshot):
    G = generator_api.load_generator(str(snapshot))
    frames = list(video.walk_frames(G, [7, 2, 9], frames_per_seed=2, scale=2, batch=4))
    assert len(frames) == 6 and frames[0].shape == (32, 4 * 32 + 3 * video.GAP, 3) and frames[0].dtype == np.uint8
    for frame, seed in ((frames[0], 7), (frames[2], 2), (frames[4], 9)):
        layers = generator_api.draw_layers(G, [seed])
        x = 0
        for name in ('bg', 'fg', 'mask', 'img'):
            expected = misc.to_uint8(layers[name], *((0.0, 1.0) if name == 'mask' else (-1.0, 1.0)))[0]
            panel = frame[:, x:x + 32].astype(int)
            assert np.abs(panel[::2, ::2] - expected).max() <= 1, name        # enlarged by nearest neighbour
            assert (panel[::2, ::2] == panel[1::2, 1::2]).all()
            x += 32 + video.GAP
        assert (frame[:, 32:32 + video.GAP] == 255).all()
    assert not np.array_equal(frames[1], frames[0]) and not np.array_equal(frames[1], frames[2])   # in between


def test_the_video_decodes_to_the_frames_and_size_written(snapshot, tmp_path):
    out = tmp_path / 'walk.mp4'
    info = video.make_video(str(snapshot.parent), [0, 1, 2], str(out), frames_per_seed=3, fps=10, scale=2,
                            progress=False)
    assert info['frames'] == 9 and info['snapshot'] == str(snapshot)
    assert decode(out) == (9, video.frame_size(16, 2))
    assert sorted(os.listdir(tmp_path)) == ['run', 'walk.mp4']


def test_a_failed_walk_leaves_no_file(snapshot, tmp_path):
    def frames():
        yield np.zeros((16, 16, 3), np.uint8)
        raise RuntimeError('stopped')
    with pytest.raises(RuntimeError, match='stopped'):
        video.write_video(frames(), str(tmp_path / 'walk.mp4'), (16, 16), fps=10, total=2, progress=False)
    assert sorted(os.listdir(tmp_path)) == ['run']


def test_command_writes_the_video_and_refuses_bad_input_in_one_line(snapshot, tmp_path):
    result = subprocess.run([sys.executable, '-m', 'metrics.video', f'--network={snapshot}', '--seeds=0-1',
                             '--frames-per-seed=2', f'--out={tmp_path / "w.mp4"}', '--scale=1', '--quiet'],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr
    assert decode(tmp_path / 'w.mp4') == (4, video.frame_size(16, 1))
    for args, message in ((['--seeds=3', f'--out={tmp_path / "x.mp4"}'], 'a walk needs at least two seeds, got 1'),
                          (['--seeds=0-1', f'--out={tmp_path / "x.gif"}'], 'name it *.mp4'),
                          (['--seeds=0-1', f'--out={tmp_path / "no" / "x.mp4"}'], 'does not exist'),
                          (['--seeds=0-x', f'--out={tmp_path / "x.mp4"}'], "'0-x' is not a seed or a range")):
        result = CliRunner().invoke(video.main, [f'--network={snapshot}', *args])
        assert result.exit_code == 2 and result.output.startswith('error: ') and message in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ['run', 'w.mp4']
