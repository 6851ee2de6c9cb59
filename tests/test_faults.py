"""Faults and bad input, end to end: what the user sees and what survives.

Each row of docs/troubleshooting.md has a test. Here: a training process killed with SIGKILL and
resumed, a full disk during training, an unwritable ``--outdir``, a full disk or Ctrl-C
during generation, an incomplete generated set given to the evaluations, and a corrupt PNG inside
a dataset (read in the main process and in loader workers). Elsewhere:

* a truncated snapshot — test_checkpoint ``test_truncated_or_missing_snapshot_is_a_user_error_naming_the_file``;
* no metric file — test_generate ``test_choose_snapshot_without_metric_file_needs_latest``;
* a wrong ``--cfg``, ``--batch`` not divisible by ``--gpus`` — test_training ``test_cli_errors_are_one_line``;
* generation into an existing folder — test_generate ``test_generate_dataset_writes_layout_and_refuses_to_overwrite``;
* a NaN loss — test_training ``test_nan_loss_stops_with_clear_error_and_keeps_last_good_snapshot``;
* snapshot names that never collide, a refused second save to an existing name — test_training
  ``test_snapshot_names_carry_the_images_seen_and_old_names_still_parse``,
  ``test_a_second_save_to_an_existing_snapshot_name_is_refused_and_the_old_file_is_intact``; generation
  ``--resume`` from another snapshot or with other options — test_generate
  ``test_resume_refuses_a_set_made_by_another_snapshot_of_the_same_kimg``;
* a file that would run code — test_checkpoint
  ``test_gadget_snapshot_given_to_an_entry_point_is_one_line_exit_2_and_runs_nothing``, test_dataset
  ``test_split_file_with_a_pickle_payload_runs_nothing_and_is_one_line_exit_2``, test_legacy
  ``test_pickle_with_another_callable_is_refused``;
* a FID detector that is not a known one, or not a whole TorchScript archive — test_fid
  ``test_detector_whose_setstate_runs_code_is_refused_in_one_line_and_never_runs``,
  ``test_training_refuses_a_detector_that_runs_code_before_the_run_directory_exists``,
  ``test_files_that_are_not_whole_torchscript_archives_are_refused_even_with_the_opt_in``;
* in test_bad_input: a full disk when the run directory is made
  (``test_disk_full_when_the_run_directory_is_made_exits_1_naming_the_file_and_leaves_nothing``),
  NaN / ±inf / out-of-range numbers and seeds (``test_nan_inf_and_out_of_range_numbers_are_refused_…``,
  ``test_every_number_option_of_every_command_is_a_checked_range``, ``test_training_config_from_python_…``),
  ``--device`` (``test_wrong_device_stops_generation_and_the_auto_test_…``), ``--gpus`` beyond the CUDA devices
  (``test_more_processes_than_cuda_devices_is_a_warning_…``), a damaged zip
  (``test_damaged_zip_member_is_one_line_naming_member_and_zip_…``), a DRC folder not found
  (``test_dataset_not_found_advice_names_an_option_the_script_has``), a truncated or empty cache
  (``test_unreadable_synthetic_cache_file_is_made_again_with_one_warning``), ``$ILSGAN_CACHE`` unwritable
  (``test_cache_that_cannot_be_written_is_one_line_naming_ILSGAN_CACHE_and_exits_1``), ``--resume`` past
  ``--kimg`` or of another ``--cfg`` (``test_resume_and_detector_are_checked_before_the_run_directory_is_made``),
  a damaged ``training_options.json`` (``test_damaged_training_options_in_the_auto_test_…``), ``--grid``
  (``test_grid_must_name_a_png_file_…``), data without the test split the auto test needs
  (``test_training_with_the_auto_test_on_data_without_a_test_split_…``); nothing left behind by a refused evaluation
  (``test_refused_segmentation_eval_leaves_nothing_…``, ``test_auto_test_of_a_run_without_snapshots_…``).
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
    """The error line of a failed command, after asserting that it is its last line and its only
    ``error:`` line, with no traceback (progress lines such as "Generating …" may come before it)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith('error: '), stderr[-2000:]
    assert sum(line.startswith('error: ') for line in lines) == 1, stderr[-2000:]
    assert 'Traceback' not in stderr
    return lines[-1]


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
        if calls['n'] >= 3:   # training_options.json and the first snapshot are written, the second is not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', fsync_then_fill)
    with pytest.raises(dnnlib.UserError) as err:
        train_cli.launch(tiny_config(tmp_path, kimg=0.048))
    message = str(err.value)
    run_dir = glob.glob(str(tmp_path / '0*'))[0]
    snapshot, failed = (os.path.join(run_dir, f'network-snapshot-000000_{nimg:03d}.pt') for nimg in (8, 24))
    assert message.startswith(f'training stopped: No space left on device: {failed}; free some space')
    assert message.endswith(f'(the last complete snapshot is {snapshot}: continue with --resume={snapshot})')
    assert dnnlib.exit_code(err.value) == 1   # the machine's state, not the input
    monkeypatch.setattr(os, 'fsync', real_fsync)
    assert checkpoint.read_snapshot(snapshot)['data']['cur_nimg'] == 8   # tick 0's snapshot, whole
    assert not [name for name in os.listdir(run_dir) if name.startswith('.tmp-')]


def test_os_errors_reach_the_user_as_one_line_and_exit_1_with_the_commands_own_advice(capsys):
    def full_disk():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/runs/00000/network-snapshot-000010.pt')

    with pytest.raises(SystemExit) as exit_info:
        dnnlib.report_user_errors(disk_full_hint='a training run continues with --resume')(full_disk)()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == ('error: No space left on device: /runs/00000/network-snapshot-000010.pt; '
                                       'free some space (or choose another output folder); a training run continues '
                                       'with --resume\n')
    with pytest.raises(SystemExit) as exit_info:
        dnnlib.report_user_errors(full_disk)()   # a command with no way to continue says only what to free
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.endswith('network-snapshot-000010.pt; free some space (or choose another '
                                            'output folder)\n')


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
# Generation stopped half-way: nothing half-written is left, and --resume completes the set.

def _tiny_network(tmp_path) -> str:
    from training.networks import LayeredGenerator
    torch.manual_seed(0)
    G = LayeredGenerator(img_resolution=16, z_dim=8, w_dim=8, channel_base=64, channel_max=8, mapping_layers=1)
    network = str(tmp_path / 'run' / 'network-snapshot-000000.pt')
    os.makedirs(os.path.dirname(network))
    checkpoint.save_snapshot(network, dict(G_ema=G))
    return network


def _generate(*args):
    from click.testing import CliRunner
    import generate_segmentation_samples
    return CliRunner().invoke(generate_segmentation_samples.main, [*args, '--batch=4', '--device=cpu'])


def _fail_writes_after(monkeypatch, count: int, error: BaseException) -> None:
    """Let ``count`` file writes through, then write half of each later file and raise ``error``."""
    real_fdopen, calls = os.fdopen, {'n': 0}

    class HalfWritten:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise error

    def fdopen(fd, *args, **kwargs):
        calls['n'] += 1
        f = real_fdopen(fd, *args, **kwargs)
        return f if calls['n'] <= count else HalfWritten(f)

    monkeypatch.setattr(os, 'fdopen', fdopen)


def _leftovers(folder) -> list[str]:
    return [os.path.join(parent, name) for parent, _, names in os.walk(folder) for name in names
            if name.startswith('.tmp') or name.endswith('.tmp')]


@pytest.mark.parametrize('writes_before_full, failed_file', [(1, 'latents.npy'), (12, 'PNG')])
def test_disk_full_during_generation_leaves_no_temporary_file_and_names_the_file(tmp_path, monkeypatch,
                                                                                  writes_before_full, failed_file):
    network = _tiny_network(tmp_path)
    outdir = tmp_path / 'set'
    _fail_writes_after(monkeypatch, writes_before_full,   # meta.json, latents.npy, then PNGs
                       OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    result = _generate(f'--network={network}', '--n=12', f'--outdir={outdir}')
    monkeypatch.undo()
    assert result.exit_code == 1
    line = one_line_error(result.stderr)
    named = line.split(': ')[2].split(';')[0]
    assert line == (f'error: No space left on device: {named}; free some space (or choose another output folder); '
                    f'the same command with --resume completes the set')
    if failed_file == 'latents.npy':
        assert named == str(outdir / 'latents.npy')
    else:
        assert os.path.dirname(os.path.dirname(named)) == str(outdir) and named.endswith('.png')
    assert _leftovers(outdir) == []
    # The same command with --resume completes the set, identical to one written in one go.
    assert _generate(f'--network={network}', '--n=12', f'--outdir={outdir}', '--resume').exit_code == 0
    assert _generate(f'--network={network}', '--n=12', f'--outdir={tmp_path / "whole"}').exit_code == 0
    for layer in ('img', 'mask', 'fg', 'bg', 'fg_masked'):
        names = sorted(os.listdir(tmp_path / 'whole' / layer))
        assert sorted(os.listdir(outdir / layer)) == names and len(names) == 12
        for name in names:
            assert (outdir / layer / name).read_bytes() == (tmp_path / 'whole' / layer / name).read_bytes()


def test_interrupted_generation_leaves_no_temporary_file(tmp_path, monkeypatch):
    from metrics import generate
    network = _tiny_network(tmp_path)
    _fail_writes_after(monkeypatch, 7, KeyboardInterrupt())   # Ctrl-C while PNGs are being written
    with pytest.raises(KeyboardInterrupt):
        generate.generate_from_network(network, n=12, outdir=str(tmp_path / 'set'), batch_size=4, progress=False)
    assert _leftovers(tmp_path / 'set') == []


# ----------------------------------------------------------------------------------------------
# Evaluation of an incomplete generated set: refused unless --allow-partial.

@pytest.fixture
def partial_set(tmp_path):
    """A generated set of n=8 from which a killed run kept 5 whole samples and two temporary files."""
    from metrics import generate
    network = _tiny_network(tmp_path)
    outdir = tmp_path / 'set'
    generate.generate_from_network(network, n=8, outdir=str(outdir), batch_size=4, progress=False)
    for layer in ('img', 'mask', 'fg', 'bg', 'fg_masked'):
        for name in ('000006.png', '000007.png', '000008.png'):
            if not (layer == 'img' and name == '000006.png'):   # one image outlived its mask
                os.remove(outdir / layer / name)
        (outdir / layer / '.tmp-000007.png').write_bytes(b'')
    return outdir, network


def _segment(syn, *extra):
    from click.testing import CliRunner
    import eval_segmentation
    from _fixtures import build_pairs
    real = os.path.join(os.path.dirname(syn), 'real')
    if not os.path.isdir(real):
        build_pairs(real, count=2, size=16)
    return CliRunner().invoke(eval_segmentation.main, [f'--syn-data={syn}', f'--real-data={real}', '--scale=16',
                                                       '--iters=1', '--batch=2', '--base-width=2', '--workers=0',
                                                       '--quiet', '--aug=none', *extra])


def _mine(path, *extra):
    from click.testing import CliRunner
    import eval_MI_MINE
    return CliRunner().invoke(eval_MI_MINE.main, [f'--path={path}', '--steps=2', '--hidden=4', '--batch=2',
                                                  '--eval-every=1', '--workers=0', '--quiet', *extra])


def test_evaluation_refuses_a_partial_generated_set_and_says_how_to_complete_it(partial_set):
    outdir, network = partial_set
    before = sorted(os.listdir(outdir))
    for result, layers in ((_segment(outdir), 'img/, mask/'), (_mine(outdir), 'fg/, bg/, mask/')):
        assert result.exit_code == 2
        assert one_line_error(result.stderr) == (
            f'error: {outdir} holds 5 of the 8 samples of its meta.json (in {layers}): an interrupted set; '
            f'python generate_segmentation_samples.py --network={network} --n=8 --outdir={outdir} --resume '
            f'completes it, or pass --allow-partial to use the 5')
    assert sorted(os.listdir(outdir)) == before   # refused before any run folder is made


def test_allow_partial_evaluates_the_whole_samples_with_a_warning(partial_set):
    outdir, _ = partial_set
    warning = f'warning: {outdir} holds 5 of the 8 samples of its meta.json; using those 5 (--allow-partial)'
    result = _segment(outdir, '--allow-partial')
    assert result.exit_code == 0, result.output
    assert result.stderr.count(warning) == 1
    runs = [name for name in os.listdir(outdir) if name.startswith('00000-')]
    seg = json.loads((outdir / runs[0] / 'results.json').read_text())
    assert seg['num_train_pairs'] + seg['num_val_pairs'] == 5   # neither the lone image nor a .tmp file
    result = _mine(outdir, '--allow-partial')
    assert result.exit_code == 0, result.output
    assert result.stderr.count(warning) == 1
    assert json.loads((outdir / 'MI-estimation-MINE' / '00000' / 'results.json').read_text())['num_samples'] == 5


def test_a_folder_without_meta_json_is_evaluated_as_it_is_without_temporary_files(partial_set):
    outdir, _ = partial_set
    os.remove(outdir / 'meta.json')   # a user's own folder of layers, or of img/ + mask/ pairs
    os.remove(outdir / 'img' / '000006.png')
    result = _segment(outdir)
    assert result.exit_code == 0, result.output
    assert 'warning' not in result.stderr
    runs = [name for name in os.listdir(outdir) if name.startswith('00000-')]
    seg = json.loads((outdir / runs[0] / 'results.json').read_text())
    assert seg['num_train_pairs'] + seg['num_val_pairs'] == 5
    result = _mine(outdir)
    assert result.exit_code == 0, result.output
    assert json.loads((outdir / 'MI-estimation-MINE' / '00000' / 'results.json').read_text())['num_samples'] == 5


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
