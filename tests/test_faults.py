"""Faults and bad input, end to end: what the user sees and what survives.

Each case of the fault list has a test; the ones that sit naturally with their module live there:
a truncated snapshot (test_checkpoint: ``test_truncated_or_missing_snapshot_is_a_user_error_naming_the_file``),
a missing metric file (test_generate: ``test_choose_snapshot_without_metric_file_needs_latest``), a wrong
``--cfg`` and ``--batch`` not divisible by ``--gpus`` (test_training: ``test_cli_errors_are_one_line``),
an existing output folder (test_generate: ``test_generate_dataset_writes_layout_and_refuses_to_overwrite``),
a file that would run code (test_checkpoint: ``test_gadget_snapshot_given_to_an_entry_point_is_one_line_exit_2_and_runs_nothing``,
test_dataset: ``test_split_file_with_a_pickle_payload_runs_nothing_and_is_one_line_exit_2``, test_legacy:
``test_pickle_with_another_callable_is_refused``).
The rest are here: a training process killed with SIGKILL and resumed, a full disk, an unwritable
``--outdir``, and a corrupt PNG inside a dataset, read in the main process and in loader workers.
"""

import errno
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
from torch_utils import checkpoint
from training import train_cli

from test_training import ROOT, read_jsonl, run_cli, snapshots, tiny_config

TICK_IMAGES = 16   # tiny_config: ticks of 0.016 kimg (two iterations of batch 8), a snapshot every tick


def one_line_error(stderr: str) -> str:
    """The error line of a failed command, after asserting it is the only thing it printed."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith('Warning')]
    assert len(lines) == 1 and lines[0].startswith('error: '), stderr[-2000:]
    assert 'Traceback' not in stderr
    return lines[0]


def write_pngs(folder, count: int, size: int = 32) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f'{i:03d}.png')
        PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# kill -9, then --resume.

CHILD = textwrap.dedent('''
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_training import tiny_config
    from training import train_cli
    train_cli.launch(tiny_config({outdir!r}, kimg=100))   # runs until killed
''')


def test_training_killed_with_sigkill_resumes_losing_at_most_one_snapshot_interval(tmp_path):
    outdir = tmp_path / 'killed'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    child = subprocess.Popen([sys.executable, '-c', CHILD.format(root=ROOT, tests=os.path.join(ROOT, 'tests'),
                                                                 outdir=str(outdir))],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        stats_path = None
        while time.time() < deadline and child.poll() is None:
            found = glob.glob(str(outdir / '0*' / 'stats.jsonl'))
            if found and len(read_jsonl(found[0])) >= 4:
                stats_path = found[0]
                break
            time.sleep(0.2)
        assert stats_path is not None, child.stderr.read().decode()[-2000:] if child.poll() is not None else 'no ticks'
        child.send_signal(signal.SIGKILL)   # mid-run: no clean-up, no final snapshot
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL

    run_dir = os.path.dirname(stats_path)
    logged_nimg = round(read_jsonl(stats_path)[-1]['Progress/kimg']['mean'] * 1000)
    kept = snapshots(run_dir)
    assert kept, 'the killed run left no snapshot'
    state = checkpoint.read_snapshot(kept[-1])   # whole: the atomic write never leaves half a file
    saved_nimg = state['data']['cur_nimg']
    assert logged_nimg - TICK_IMAGES <= saved_nimg <= logged_nimg + TICK_IMAGES

    # Resume from the run directory (its newest snapshot) and train two more ticks.
    target_kimg = (saved_nimg + 2 * TICK_IMAGES) / 1000
    resumed = train_cli.launch(tiny_config(tmp_path / 'resumed', resume=run_dir, kimg=target_kimg))
    stats = read_jsonl(os.path.join(resumed, 'stats.jsonl'))
    assert [round(s['Progress/kimg']['mean'] * 1000) for s in stats] == [saved_nimg + TICK_IMAGES,
                                                                           saved_nimg + 2 * TICK_IMAGES]
    final = checkpoint.read_snapshot(snapshots(resumed)[-1])['data']
    assert final['cur_nimg'] == saved_nimg + 2 * TICK_IMAGES
    assert final['cur_tick'] == state['data']['cur_tick'] + 2   # tick and batch counters continue too
    assert final['batch_idx'] == state['data']['batch_idx'] + 4


# ----------------------------------------------------------------------------------------------
# A full disk and an unwritable --outdir.

def test_disk_full_at_a_snapshot_stops_with_one_line_and_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    real_fsync, calls = os.fsync, {'n': 0}

    def fsync_then_fill(fd):
        calls['n'] += 1
        if calls['n'] >= 2:   # the first snapshot is written, the second finds the disk full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', fsync_then_fill)
    with pytest.raises(dnnlib.UserError) as err:
        train_cli.launch(tiny_config(tmp_path, kimg=0.048))
    message = str(err.value)
    run_dir = glob.glob(str(tmp_path / '0*'))[0]
    snapshot = os.path.join(run_dir, 'network-snapshot-000000.pt')
    assert message == (f'training stopped: No space left on device: {snapshot} (the last complete snapshot is '
                       f'{snapshot}: continue with --resume={snapshot})')
    monkeypatch.setattr(os, 'fsync', real_fsync)
    assert checkpoint.read_snapshot(snapshot)['data']['cur_nimg'] == 8   # tick 0's snapshot, whole
    assert not [name for name in os.listdir(run_dir) if name.startswith('.tmp-')]


def test_os_errors_reach_the_user_as_one_line_and_exit_1(capsys):
    @dnnlib.report_user_errors
    def command():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/runs/00000/network-snapshot-000010.pt')

    with pytest.raises(SystemExit) as exit_info:
        command()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == ('error: No space left on device: /runs/00000/network-snapshot-000010.pt; '
                                       'free some space (or choose another --outdir); a training run continues '
                                       'with --resume\n')


def test_outdir_inside_a_file_is_a_one_line_error(tmp_path):
    blocker = tmp_path / 'a-file'
    blocker.write_text('not a folder')
    result = run_cli(f'--outdir={blocker / "runs"}', '--data=synthetic', '--cfg=cpu', '-n')
    assert result.returncode == 2
    assert one_line_error(result.stderr) == f'error: --outdir={blocker / "runs"} is not writable: {blocker} is not a writable folder'


@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0, reason='root may write to any folder')
def test_read_only_outdir_is_a_one_line_error(tmp_path):
    folder = tmp_path / 'read-only'
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = run_cli(f'--outdir={folder}', '--data=synthetic', '--cfg=cpu', '-n')
    finally:
        folder.chmod(0o700)
    assert result.returncode == 2 and 'is not writable' in one_line_error(result.stderr)


def test_generation_into_an_unwritable_place_is_a_one_line_error(tmp_path):
    blocker = tmp_path / 'a-file'
    blocker.write_text('not a folder')
    from training.networks import LayeredGenerator
    G = LayeredGenerator(img_resolution=16, z_dim=8, w_dim=8, channel_base=64, channel_max=8, mapping_layers=1)
    network = str(tmp_path / 'network-snapshot-000000.pt')
    checkpoint.save_snapshot(network, dict(G_ema=G))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'generate_segmentation_samples.py'),
                           f'--network={network}', '--n=4', f'--outdir={blocker / "samples"}'],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode != 0
    assert str(blocker) in one_line_error(proc.stderr)


# ----------------------------------------------------------------------------------------------
# A corrupt PNG inside a dataset.

def test_training_on_a_folder_with_a_corrupt_png_names_the_file(tmp_path):
    paths = write_pngs(tmp_path / 'images', 8)
    with open(paths[3], 'r+b') as f:
        f.truncate(40)   # cut inside the first chunk
    result = run_cli(f'--outdir={tmp_path / "out"}', f'--data={tmp_path / "images"}', '--cfg=cpu', '--batch=8',
                     '--kimg=0.016', '--metrics=none', '--no-auto-test')
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert line.startswith('error: cannot read image') and paths[3] in line


@pytest.mark.parametrize('workers', [0, 1])
def test_corrupt_png_read_by_a_loader_worker_is_reported_as_one_line(tmp_path, workers, capsys):
    from training.dataset import open_dataset
    paths = write_pngs(tmp_path / 'images', 4)
    with open(paths[2], 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)   # a PNG signature and nothing valid after it
    loader = torch.utils.data.DataLoader(open_dataset(str(tmp_path / 'images'), resolution=32), batch_size=4,
                                         num_workers=workers)

    @dnnlib.report_user_errors
    def read_all():
        return [batch for batch in loader]

    with pytest.raises(SystemExit) as exit_info:
        read_all()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: cannot read image') and paths[2] in err


def test_segmentation_eval_with_a_corrupt_generated_mask_names_the_file(tmp_path):
    syn = tmp_path / 'synthetic_data-000000'
    images = write_pngs(syn / 'img', 6)
    masks = write_pngs(syn / 'mask', 6)
    with open(masks[4], 'r+b') as f:
        f.truncate(30)
    with open(syn / 'meta.json', 'w') as f:
        json.dump({'n': len(images)}, f)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'eval_segmentation.py'), f'--syn-data={syn}',
                           '--real-data=synthetic', '--scale=32', '--iters=2', '--batch=2', '--workers=1'],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 2
    line = one_line_error(proc.stderr)
    assert masks[4] in line
