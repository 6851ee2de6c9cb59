"""Bad input and a bad machine state, command by command: one line, the right exit code, nothing made.

Each test runs the command in this process (click's CliRunner) or calls the function the command
calls, and asserts the exit code (2 for input, 1 for the operating system), the one ``error:``
line (what, which file or option, what to do) and that the output folder holds nothing new.
"""

import errno
import json
import os
import re
import zipfile

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dnnlib
from metrics.training_hooks import HOOKS
from torch_utils import checkpoint
from training import resume, synthetic, train_cli

from test_cli_docs import COMMANDS, load_command
from test_faults import write_pngs
from test_training import snapshots, tiny_config


def invoke(command: str, *args: str):
    """Run ``command`` (a key of COMMANDS) with ``args`` in this process; returns click's Result."""
    return CliRunner().invoke(load_command(command), [str(a) for a in args], prog_name=command)


def error_line(result) -> str:
    """The ``error:`` line of a refused command: its last line and only error, no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith('error: '), result.output[-2000:]
    assert sum(line.startswith('error: ') for line in lines) == 1 and 'Traceback' not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return lines[-1]


def listing(folder) -> list[str]:
    """Everything under ``folder`` (relative paths), or [] when it does not exist."""
    found = []
    for parent, dirs, files in os.walk(folder):
        found += [os.path.relpath(os.path.join(parent, name), folder) for name in dirs + files]
    return sorted(found)


def write_pairs(folder, count: int, image_size: int = 32, mask_size: int | None = None) -> None:
    write_pngs(folder / 'img', count, image_size)
    write_pngs(folder / 'mask', count, mask_size or image_size)


@pytest.fixture
def images(tmp_path):
    """A folder of 8 PNGs (32 × 32): a valid --data."""
    write_pngs(tmp_path / 'images', 8)
    return tmp_path / 'images'


TRAIN = ['--cfg=cpu', '--kimg=0.016', '--metrics=none', '--no-auto-test']


# ----------------------------------------------------------------------------------------------
# Numbers: NaN, ±inf and out-of-range values are refused by the option parser of every command.

def test_every_number_option_of_every_command_is_a_checked_range():
    counts = {'float': 0, 'int': 0, 'seed': 0, 'device': 0}
    for name in COMMANDS:
        for param in load_command(name).params:
            where = f'{name} --{param.name}'
            if isinstance(param.type, click.types.FloatParamType):
                assert isinstance(param.type, dnnlib.FiniteFloat), f'{where} accepts nan/inf'
                counts['float'] += 1
            if isinstance(param.type, click.types.IntParamType):
                assert isinstance(param.type, click.IntRange), f'{where} has no range'
                counts['int'] += 1
            if param.name == 'seed':
                assert (param.type.min, param.type.max) == (0, 2 ** 32 - 1), where
                counts['seed'] += 1
            if param.name == 'device':
                assert isinstance(param.type, dnnlib.Device), where
                counts['device'] += 1
    assert counts['float'] >= 10 and counts['int'] >= 20 and counts['seed'] == 6 and counts['device'] == 3, counts


@pytest.mark.parametrize('command,bad', [
    ('train_ILS_64.py', '--kimg=nan'), ('train_ILS_64.py', '--tick=inf'), ('train_ILS_64.py', '--gamma=-inf'),
    ('train_ILS_64.py', '--seed=-1'), ('train_ILS_128.py', '--seed=4294967296'), ('train_ILS_128.py', '--target=nan'),
    ('generate_segmentation_samples.py', '--trunc=nan'), ('generate_segmentation_samples.py', '--sigma=inf'),
    ('generate_segmentation_samples.py', '--seed=-1'), ('generate_segmentation_samples.py', '--topk=-5'),
    ('eval_MI_MINE.py', '--lr=nan'), ('eval_MI_MINE.py', '--ma-rate=nan'), ('eval_MI_MINE.py', '--seed=-1'),
    ('eval_segmentation.py', '--seed=-1'), ('eval_segmentation_eval128.py', '--seed=-1'),
    ('python -m training.dataset', '--resolution=-1'),
    # Finite but absurd: inf once cast to float32, round(inf), an endless batch loop, a million processes.
    ('generate_segmentation_samples.py', '--trunc=1e39'), ('generate_segmentation_samples.py', '--pkl_idx=1e306'),
    ('generate_segmentation_samples.py', '--topk=1e306'), ('generate_segmentation_samples.py', '--n=1000000000000'),
    ('eval_segmentation.py', '--batch=1000000000'), ('eval_MI_MINE.py', '--batch=1000000000'),
    ('eval_segmentation.py', '--scale=1000000'), ('train_ILS_64.py', '--workers=1000000'),
    ('train_ILS_64.py', '--map=1000000'), ('python -m training.dataset', '--resolution=1000000'),
])
def test_nan_inf_and_out_of_range_numbers_are_refused_with_exit_2_and_create_nothing(tmp_path, images, command, bad):
    out = tmp_path / 'out'
    required = {'train_ILS_64.py': [f'--outdir={out}', f'--data={images}', '--no-auto-test'],
                'train_ILS_128.py': [f'--outdir={out}', f'--data={images}'],
                'generate_segmentation_samples.py': [f'--network={tmp_path}', f'--outdir={out}'],
                'eval_MI_MINE.py': [f'--path={images}', f'--outdir={out}'],
                'eval_segmentation.py': [f'--syn-data={images}', '--real-data=synthetic', f'--outdir={out}'],
                'eval_segmentation_eval128.py': [f'--syn-data={images}', '--real-data=synthetic', f'--outdir={out}'],
                'python -m training.dataset': [f'--data={images}', f'--grid={out / "grid.png"}']}[command]
    result = invoke(command, bad, *required)
    assert result.exit_code == 2, result.output
    option = bad.split('=')[0]
    assert f"Invalid value for '{option}'" in result.output, result.output
    assert not out.exists()


@pytest.mark.parametrize('option,value', [('kimg', float('nan')), ('tick', float('inf')), ('gamma', float('nan')),
                                          ('target', float('-inf')), ('seed', -1), ('seed', 2 ** 32)])
def test_training_config_from_python_or_a_stored_json_refuses_non_finite_and_out_of_range_numbers(tmp_path, option,
                                                                                                 value):
    with pytest.raises(dnnlib.UserError, match=f'^--{option}='):
        train_cli.build_training_config(outdir=str(tmp_path / 'out'), data='synthetic', cfg='cpu', **{option: value})
    with pytest.raises(dnnlib.UserError, match='^--p=nan: nan is not a finite number'):
        train_cli.build_training_config(outdir=str(tmp_path / 'out'), data='synthetic', aug='fixed', p=float('nan'))


# ----------------------------------------------------------------------------------------------
# Damaged zips and caches, devices, damaged options, --grid, $ILSGAN_CACHE.

def write_zip(path, folder, compression=zipfile.ZIP_STORED) -> list[str]:
    names = sorted(os.listdir(folder))
    with zipfile.ZipFile(path, 'w', compression=compression) as archive:
        for name in names:
            archive.write(os.path.join(folder, name), name)
    return names


def damage_member(path, member: str) -> None:
    """Flip one byte in the middle of ``member``'s stored data (its CRC no longer matches)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    with open(path, 'r+b') as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(f.read(4), '<u2')
        f.seek(info.header_offset + 30 + int(name_length) + int(extra_length) + info.compress_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize('compression', [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA])
def test_damaged_zip_member_is_one_line_naming_member_and_zip_in_training_and_inspection(tmp_path, images,
                                                                                        compression):
    archive = tmp_path / 'images.zip'
    names = write_zip(archive, images, compression)
    damage_member(archive, names[2])
    out = tmp_path / 'out'
    for command, args in [('train_ILS_64.py', [f'--outdir={out}', f'--data={archive}', *TRAIN]),
                          ('python -m training.dataset', [f'--data={archive}', '--resolution=32'])]:
        result = invoke(command, *args)
        line = error_line(result)
        assert result.exit_code == 2
        assert f'cannot read {names[2]} from the zip archive {archive}' in line and 're-create it' in line, line
    assert not out.exists()   # found while checking the inputs, before the run directory


@pytest.mark.parametrize('content', ['empty', 'truncated', 'not a zip'])
def test_unreadable_synthetic_cache_file_is_made_again_with_one_warning(tmp_path, capsys, content):
    path = synthetic.cache_path(str(tmp_path), 'train', 3, 0)
    synthetic.load_or_generate(str(tmp_path), 'train', 3)
    with open(path, 'rb') as f:
        whole = f.read()
    damaged = {'empty': b'', 'truncated': whole[:len(whole) // 2], 'not a zip': b'not a zip'}[content]
    with open(path, 'wb') as f:
        f.write(damaged)
    capsys.readouterr()
    data = synthetic.load_or_generate(str(tmp_path), 'train', 3)
    expected = synthetic.generate('train', 3, 0)
    assert np.array_equal(data['img'], expected['img']) and np.array_equal(data['mask'], expected['mask'])
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f'warning: the cache file {path} is unreadable (') and warning.endswith('it is made again')
    assert np.array_equal(synthetic._read_npz(path, 3)['img'], expected['img'])   # replaced by a whole file
    assert sorted(os.listdir(os.path.dirname(path))) == [os.path.basename(path)]


def test_an_end_of_file_error_is_one_line_not_click_aborted():
    @click.command()
    @dnnlib.report_user_errors
    def command():
        np.load(__import__('io').BytesIO(b''))   # numpy's EOFError for an empty file

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 2 and 'Aborted' not in result.output
    assert error_line(result) == 'error: a file ended too early (No data left in file); it is truncated or empty'


@pytest.mark.parametrize('failure', ['a file', 'read-only'])
def test_cache_that_cannot_be_written_is_one_line_naming_ILSGAN_CACHE_and_exits_2(tmp_path, monkeypatch, failure):
    cache = tmp_path / 'cache'
    if failure == 'a file':
        cache.write_text('not a folder')
    else:
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get('dir'))
        monkeypatch.setattr('tempfile.mkstemp', read_only)
    monkeypatch.setenv('ILSGAN_CACHE', str(cache))
    result = invoke('python -m training.dataset', '--data=synthetic', '--resolution=32')
    assert result.exit_code == 2   # a folder the user chose that cannot be written: input, as an output folder
    line = error_line(result)
    assert line.startswith('error: cannot write the cache file ') and f'point $ILSGAN_CACHE at a writable folder' in line
    assert f'(now {cache})' in line


def test_device_names_are_parsed_and_checked_against_this_machine(monkeypatch):
    assert dnnlib.parse_device('cpu') == 'cpu' and dnnlib.parse_device(' CPU ') == 'cpu'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert dnnlib.parse_device(None) == 'cpu'
    for name, message in [('gpu0', "unknown device 'gpu0'; use cpu, cuda or cuda:N"), ('cpu:1', 'unknown device'),
                          ('cuda', "device 'cuda': this machine has no CUDA device"), ('cuda:0', 'no CUDA device')]:
        with pytest.raises(dnnlib.UserError, match=re.escape(message)):
            dnnlib.parse_device(name)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert dnnlib.parse_device('cuda:1') == 'cuda:1' and dnnlib.parse_device(None) == 'cuda'
    with pytest.raises(dnnlib.UserError, match=re.escape("device 'cuda:2': this machine has 2 CUDA device(s), "
                                                         "cuda:0 to cuda:1")):
        dnnlib.parse_device('cuda:2')


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with one tiny snapshot, as the auto test and generation read it."""
    from test_auto_test import TINY_G, TINY_SIZES
    from training import networks
    run = tmp_path / '00000-synthetic-cpu-batch16'
    run.mkdir()
    checkpoint.save_snapshot(str(run / 'network-snapshot-000004.pt'), {'G_ema': networks.LayeredGenerator(**TINY_G)},
                             data={'kimg': 4.0})
    (run / 'training_options.json').write_text(json.dumps({'data': 'synthetic', 'resolution': 64,
                                                           'auto_test_sizes': TINY_SIZES}))
    return run


@pytest.mark.parametrize('device', ['gpu0', 'missing cuda'])
def test_wrong_device_stops_generation_and_the_auto_test_before_they_create_anything(run_dir, device):
    if device == 'missing cuda':
        device = f'cuda:{torch.cuda.device_count()}' if torch.cuda.is_available() else 'cuda'
    before = listing(run_dir)
    for command, args in [('generate_segmentation_samples.py', [f'--network={run_dir}', '--latest', '--n=2']),
                          ('python -m metrics.auto_test', [str(run_dir)])]:
        result = invoke(command, f'--device={device}', *args)
        assert result.exit_code == 2 and "Invalid value for '--device'" in result.output, result.output
        assert 'Traceback' not in result.output
    assert listing(run_dir) == before


@pytest.mark.parametrize('content', ['', '{"data": "synth'])
def test_damaged_training_options_in_the_auto_test_is_one_line_naming_the_file(run_dir, content):
    (run_dir / 'training_options.json').write_text(content)
    result = invoke('python -m metrics.auto_test', str(run_dir))
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith(f'error: {run_dir / "training_options.json"} is damaged (JSONDecodeError: ')
    assert line.endswith('restore the file') and not (run_dir / 'auto_test').exists()


@pytest.mark.parametrize('options,message', [
    ({'data': 'synthetic', 'resolution': '64'}, "give resolution='64', not an integer"),
    ({'data': 'synthetic', 'auto_test_sizes': {'n': 'ten'}}, "auto_test_sizes.n='ten' in the training options is not an "
                                                              "integer in 1..10000000"),
    ({'data': 'synthetic', 'auto_test_sizes': {'seg_batch': 10 ** 9}}, 'auto_test_sizes.seg_batch=1000000000 in the '
                                                                       'training options is not an integer in 1..65536'),
    ({'data': 'synthetic', 'data_root': 5}, 'data_root=5 in the training options of'),
    ({'data': 'synthetic', 'auto_test_sizes': [1]}, 'auto_test_sizes=[1] in the training options is not a JSON object'),
    ({'resolution': 64}, 'name no dataset (field "data")')])
def test_training_options_with_wrong_fields_are_one_line_in_the_auto_test(run_dir, options, message):
    (run_dir / 'training_options.json').write_text(json.dumps(options))
    result = invoke('python -m metrics.auto_test', str(run_dir))
    assert result.exit_code == 2 and message in error_line(result)
    assert not (run_dir / 'auto_test').exists()


@pytest.mark.parametrize('grid', ['grid.txt', 'a-folder'])
def test_grid_must_name_a_png_file_and_is_checked_before_the_dataset_is_read(tmp_path, grid):
    (tmp_path / 'a-folder').mkdir()
    before = listing(tmp_path)
    result = invoke('python -m training.dataset', f'--data={tmp_path / "nothing-read"}', f'--grid={tmp_path / grid}')
    assert result.exit_code == 2
    assert error_line(result) == (f'error: --grid={tmp_path / grid}: name the .png file to write the preview to, '
                                  f'e.g. --grid=preview.png')
    assert listing(tmp_path) == before


# ----------------------------------------------------------------------------------------------
# The operating system's faults exit 1 and name the file; the exit code follows the cause.

def test_exit_code_follows_the_cause_of_the_error(capsys):
    def raised_from(cause):
        try:
            raise cause
        except Exception as err:
            try:
                raise dnnlib.UserError('disk trouble') from err
            except dnnlib.UserError as wrapped:
                return wrapped

    assert dnnlib.exit_code(dnnlib.UserError('bad option')) == 2
    assert dnnlib.exit_code(OSError(errno.ENOSPC, 'full')) == 1
    assert dnnlib.exit_code(raised_from(OSError(errno.ENOSPC, 'full'))) == 1
    assert dnnlib.exit_code(raised_from(ValueError('bad value'))) == 2
    assert dnnlib.exit_code(raised_from(OSError(errno.EROFS, 'read-only'))) == 2   # an output folder the user chose

    @dnnlib.report_user_errors
    def command():
        raise raised_from(OSError(errno.EIO, 'I/O error'))

    with pytest.raises(SystemExit) as exit_info:
        command()
    assert exit_info.value.code == 1 and capsys.readouterr().err == 'error: disk trouble\n'


def test_disk_full_when_the_run_directory_is_made_exits_1_naming_the_file_and_leaves_nothing(tmp_path, images,
                                                                                            monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / 'out'
    out.mkdir()
    monkeypatch.setattr(os, 'fsync', full)
    result = invoke('train_ILS_64.py', f'--outdir={out}', f'--data={images}', *TRAIN)
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith(f'error: No space left on device: {out / "00000-images-cpu-batch16" / "training_options.json"}; '
                           f'free some space'), line
    assert listing(out) == []   # no run directory, no 0-byte options file, no temporary file


# ----------------------------------------------------------------------------------------------
# --resume: the stored run's options, and a snapshot checked before anything is made.

@pytest.mark.parametrize('stored_in', ['training_options.json', 'an older training_options.json', 'the snapshot'])
def test_resume_takes_the_stored_runs_options_and_a_value_given_again_wins(tmp_path, images, stored_in):
    run = tmp_path / 'run'
    run.mkdir()
    c = train_cli.build_training_config(outdir=str(tmp_path), data=str(images), cfg='cpu', seed=7, tick=0.5, snap=2,
                                        kimg=10, batch=8, metrics='none', mirror=True)
    if stored_in == 'an older training_options.json':
        del c['options']   # written before the options were stored: read from the config's fields
    if stored_in == 'the snapshot':
        checkpoint.save_snapshot(str(run / 'network-snapshot-000001.pt'), {},
                                 data={'training_options': json.loads(json.dumps(c))})
    else:
        (run / 'network-snapshot-000001.pt').write_bytes(b'not read by a dry run')
        (run / 'training_options.json').write_text(json.dumps(c))
    result = invoke('train_ILS_64.py', f'--outdir={tmp_path / "out"}', f'--resume={run}', '--kimg=2.6', '--seed=3', '-n')
    assert result.exit_code == 0, result.output
    first, config = result.output.split('\n', 1)
    source = run / ('network-snapshot-000001.pt' if stored_in == 'the snapshot' else 'training_options.json')
    assert first.startswith(f'Resuming with the options of {source}: ')
    for taken in (f'--data={images}', '--cfg=cpu', '--batch=8', '--snap=2', '--tick=0.5', '--mirror',
                  '--metrics=none'):
        assert f' {taken} ' in first, first
    assert first.endswith('; --kimg=2.6 given again wins over --kimg=10; --seed=3 given again wins over --seed=7')
    config = json.loads(config)
    assert (config['data'], config['cfg'], config['batch'], config['snap'], config['kimg_per_tick'], config['mirror'],
            config['metrics']) == (str(images), 'cpu', 8, 2, 0.5, True, [])
    assert config['kimg'] == 2.6 and config['seed'] == 3 and config['outdir'] == str(tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
    """A tiny run trained to kimg 0.024 (cpu preset, 32 px)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('ILSGAN_CACHE', str(tmp_path_factory.getbasetemp() / 'ilsgan-cache'))
        return train_cli.launch(tiny_config(tmp_path_factory.mktemp('short'), kimg=0.024))


@pytest.mark.parametrize('case', ['kimg reached', 'other cfg', 'other --freezed', 'no snapshot',
                                  'detector not TorchScript'])
def test_resume_and_detector_are_checked_before_the_run_directory_is_made(tmp_path, short_run, case):
    out = tmp_path / 'out'
    options, message = {
        'kimg reached': (dict(resume=short_run, kimg=0.016),
                         f'--resume: {snapshots(short_run)[-1]} is at kimg 0.024, which already reaches --kimg=0.016; '
                         f'pass a larger --kimg to train on'),
        'other cfg': (dict(resume=short_run, cfg='ILS_learnN'),
                      f'--resume: the G of {snapshots(short_run)[-1]} does not fit this run; it was trained with '
                      f'--cfg=cpu at 32 px: resume it with train_ILS_64.py --cfg=cpu'),
        'other --freezed': (dict(resume=short_run, freezed=2),
                            f'--resume: the D optimiser state of {snapshots(short_run)[-1]} does not fit this run'),
        'no snapshot': (dict(resume=str(tmp_path)), f'--resume: no network-snapshot-*.pt in {tmp_path}'),
        'detector not TorchScript': (dict(metrics='fid10k_full', detector=str(short_run) + '/training_options.json'),
                                     'is not a TorchScript detector'),
    }[case]
    with pytest.raises(dnnlib.UserError) as info:
        train_cli.launch(tiny_config(out, **options), HOOKS)
    assert message in str(info.value)
    assert not out.exists()


def test_checking_the_resume_snapshot_leaves_the_random_streams_as_they_were(tmp_path, short_run):
    c = tiny_config(tmp_path / 'out', resume=short_run, kimg=0.1)
    torch.manual_seed(5)
    np.random.seed(5)
    resume.check_resume(c)
    after = torch.rand(3), np.random.rand(3)
    torch.manual_seed(5)
    np.random.seed(5)
    assert torch.equal(after[0], torch.rand(3)) and np.array_equal(after[1], np.random.rand(3))


def test_training_with_the_auto_test_on_data_without_a_test_split_stops_before_training(tmp_path, images):
    result = invoke('train_ILS_64.py', f'--outdir={tmp_path / "out"}', f'--data={images}', '--cfg=cpu')
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith(f'error: the auto test after training needs a test split: {images} has no masks')
    assert line.endswith('; or pass --no-auto-test') and not (tmp_path / 'out').exists()


def test_resume_of_a_64_px_run_in_the_128_script_says_which_script(tmp_path, short_run):
    result = invoke('train_ILS_128.py', f'--outdir={tmp_path / "out"}', f'--resume={short_run}')
    assert result.exit_code == 2
    assert error_line(result).startswith('error: --cfg=cpu is a 64 px preset; use train_ILS_64.py')
    assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------------------------
# --gpus beyond the CUDA devices; advice that names the script's own options.

def test_more_processes_than_cuda_devices_is_a_warning_saying_they_share_the_machine(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    train_cli.warn_about_processes(1)
    assert capsys.readouterr().err == ''
    train_cli.warn_about_processes(3)
    assert capsys.readouterr().err == (f'warning: --gpus=3 on a machine with 0 CUDA device(s): 3 CPU processes (gloo) '
                                       f'will share this machine\'s {os.cpu_count()} cores\n')


@pytest.mark.parametrize('command', ['eval_segmentation.py', 'python -m metrics.auto_test', 'train_ILS_64.py'])
def test_dataset_not_found_advice_names_an_option_the_script_has(tmp_path, monkeypatch, run_dir, command):
    monkeypatch.chdir(tmp_path)   # no ./datasets/DRC_processed here
    monkeypatch.delenv('ILSGAN_DATA_ROOT', raising=False)
    write_pairs(tmp_path / 'syn', 4)
    before = listing(tmp_path / 'syn')
    (run_dir / 'training_options.json').write_text(json.dumps({'data': 'cub', 'resolution': 64}))
    args = {'eval_segmentation.py': [f'--syn-data={tmp_path / "syn"}', '--real-data=cub'],
            'python -m metrics.auto_test': [str(run_dir)],
            'train_ILS_64.py': [f'--outdir={tmp_path / "out"}', '--data=cub']}[command]
    result = invoke(command, *args)
    assert result.exit_code == 2
    line = error_line(result)
    assert 'birds dataset folder not found' in line
    options = {opt for param in load_command(command).params for opt in param.opts}
    advised = set(re.findall(r'(--[a-z-]+)=FOLDER', line))
    assert advised and advised <= options, (advised, line)
    assert listing(tmp_path / 'syn') == before
    assert not (run_dir / 'auto_test').exists() and not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------------------------
# Segmentation evaluation and the auto test: nothing is made inside the input folder when refused.

@pytest.mark.parametrize('case', ['mask size differs', 'real set without masks', 'one pair', 'scale of no synthetic size',
                                  'real folder missing'])
def test_refused_segmentation_eval_leaves_nothing_in_the_synthetic_folder(tmp_path, images, case):
    syn = tmp_path / 'syn'
    write_pairs(syn, 1 if case == 'one pair' else 6, 40, 32 if case == 'mask size differs' else 40)
    real = tmp_path / 'real'
    write_pairs(real, 2, 40)
    args, message = {
        'mask size differs': ([f'--real-data={real}'], 'is 32x32 but its image is 40x40'),
        'real set without masks': ([f'--real-data={images}'], 'has no masks, so it has no test split'),
        'one pair': ([f'--real-data={real}'], 'holds 1 pairs: too few to split'),
        'scale of no synthetic size': (['--real-data=synthetic', '--scale=48'], 'resolutions dividing 128'),
        'real folder missing': ([f'--real-data={tmp_path / "nothing"}'], 'unknown dataset'),
    }[case]
    before = listing(syn)
    result = invoke('eval_segmentation.py', f'--syn-data={syn}', '--scale=32', '--iters=1', '--workers=0', '--quiet',
                    *args)
    assert result.exit_code == 2
    assert message in error_line(result)
    assert listing(syn) == before


def test_auto_test_of_a_run_without_snapshots_makes_no_auto_test_folder(run_dir):
    os.remove(run_dir / 'network-snapshot-000004.pt')
    result = invoke('python -m metrics.auto_test', str(run_dir))
    assert result.exit_code == 2 and "no network-snapshot-*.pt (nor the original code's network-snapshot-*.pkl) in" \
        in error_line(result)
    assert listing(run_dir) == ['training_options.json']


# ----------------------------------------------------------------------------------------------
# Hand-edited and damaged files of a run: wrong JSON types, nesting, bytes, snapshot contents.

@pytest.mark.parametrize('name,value,expected', [('batch', '16', 'an integer'), ('seed', 7.5, 'an integer'),
                                                 ('kimg', '1e3', 'a number'), ('cfg', ['x'], 'a string'),
                                                 ('mirror', 'yes', 'true or false'), ('data', 5, 'a string'),
                                                 ('batch', -8, 'not in the range')])
def test_resume_refuses_a_stored_option_of_the_wrong_json_type_in_one_line(tmp_path, images, name, value, expected):
    run = tmp_path / 'run'
    run.mkdir()
    c = train_cli.build_training_config(outdir=str(tmp_path), data=str(images), cfg='cpu', kimg=10, batch=8,
                                        metrics='none')
    c['options'][name] = value
    (run / 'network-snapshot-000001.pt').write_bytes(b'not read by a dry run')
    (run / 'training_options.json').write_text(json.dumps(c))
    result = invoke('train_ILS_64.py', f'--outdir={tmp_path / "out"}', f'--resume={run}', '-n')
    assert result.exit_code == 2
    flag = '--map' if name == 'map_layers' else f'--{name}'
    line = error_line(result)
    assert line.startswith(f'error: --resume: {run / "training_options.json"} stores {flag}={value!r}: '), line
    assert expected in line and line.endswith(f'; fix the file, or give {flag} on the command line'), line
    assert not (tmp_path / 'out').exists()


def test_deeply_nested_json_is_one_line_in_the_auto_test_and_evaluation(run_dir):
    (run_dir / 'training_options.json').write_text('[' * 100_000)
    result = invoke('python -m metrics.auto_test', str(run_dir))
    assert result.exit_code == 2 and 'is damaged (RecursionError' in error_line(result)
    syn = run_dir / 'syn'
    write_pairs(syn, 2, 32)
    (syn / 'meta.json').write_text('[' * 100_000)
    result = invoke('eval_segmentation.py', f'--syn-data={syn}', '--real-data=synthetic', '--scale=32')
    assert result.exit_code == 2 and error_line(result).startswith(f'error: {syn / "meta.json"} is not valid JSON')


def test_meta_json_with_an_absurd_sample_count_is_refused_before_counting(tmp_path):
    syn = tmp_path / 'syn'
    write_pairs(syn, 2, 32)
    (syn / 'meta.json').write_text(json.dumps({'n': 10 ** 12, 'layers': ['img', 'mask']}))
    result = invoke('eval_segmentation.py', f'--syn-data={syn}', '--real-data=synthetic', '--scale=32')
    assert result.exit_code == 2
    assert error_line(result).startswith(f'error: {syn / "meta.json"} gives n=1000000000000, not a sample count')


@pytest.mark.parametrize('line,reason', [
    ({'metric': 'fid10k_full', 'results': {'fid10k_full': 3.0}, 'snapshot_pkl': None}, 'line 1: not a metric line'),
    ({'metric': 'fid10k_full', 'results': {'fid10k_full': 'x'}, 'snapshot_pkl': 'a.pt'}, 'line 1: not a metric line'),
    ({'metric': 'fid10k_full', 'results': {'fid10k_full': 3.0}, 'snapshot_pkl': 'a.pt', 'sigma': 'one'},
     'line 1: not a metric line'),
    (b'\xff\xfe\n', '(UnicodeDecodeError); the file is damaged')])
def test_metric_line_with_wrong_field_types_or_bytes_is_one_line_in_generation(run_dir, line, reason):
    metric_file = run_dir / 'metric-fid10k_full.jsonl'
    metric_file.write_bytes(line if isinstance(line, bytes) else json.dumps(line).encode() + b'\n')
    result = invoke('generate_segmentation_samples.py', f'--network={run_dir}', '--n=2', '--sigma=1')
    assert result.exit_code == 2 and reason in error_line(result) and str(metric_file) in error_line(result)
    assert not list(run_dir.glob('synthetic_data-*'))


def test_snapshot_whose_sigma_is_null_is_skipped_by_a_sigma_filter_not_a_crash(run_dir):
    entry = {'metric': 'fid10k_full', 'results': {'fid10k_full': 3.0}, 'sigma': None,
             'snapshot_pkl': 'network-snapshot-000004.pt'}
    (run_dir / 'metric-fid10k_full.jsonl').write_text(json.dumps(entry) + '\n')
    result = invoke('generate_segmentation_samples.py', f'--network={run_dir}', '--n=2', '--sigma=1')
    assert result.exit_code == 2 and 'matches --topk None / --sigma 1.0; relax the filters' in error_line(result)


def rewrite_snapshot(path, edit) -> None:
    """Read a snapshot's plain payload, let ``edit`` change it, write it back (still weights_only-clean)."""
    payload = checkpoint.read_snapshot(str(path))
    edit(payload)
    torch.save(payload, str(path))


def test_snapshot_with_a_network_that_cannot_be_built_is_one_line_in_generation(run_dir):
    rewrite_snapshot(run_dir / 'network-snapshot-000004.pt',
                     lambda payload: payload['modules']['G_ema']['kwargs'].update(channel_base=-64))
    result = invoke('generate_segmentation_samples.py', f'--network={run_dir}', '--latest', '--n=2')
    assert result.exit_code == 2
    assert 'cannot build' in error_line(result) and 'network-snapshot-000004.pt' in error_line(result)
    assert not list(run_dir.glob('synthetic_data-*'))


@pytest.mark.parametrize('damage,message', [
    (lambda data: data.pop('cur_nimg'), 'holds no valid training progress (cur_nimg=None)'),
    (lambda data: data.update(batch_idx=-3), 'holds no valid training progress (batch_idx=-3)'),
    (lambda data: data.update(rng=[{}]), 'the ADA or random-number state of'),
    (lambda data: data['optimizers'].update(G={}), 'the G optimiser state of')])
def test_resume_from_a_snapshot_with_damaged_progress_or_states_is_one_line(tmp_path, short_run, damage, message):
    run = tmp_path / 'run'
    run.mkdir()
    snapshot = run / os.path.basename(snapshots(short_run)[-1])
    snapshot.write_bytes(open(snapshots(short_run)[-1], 'rb').read())
    rewrite_snapshot(snapshot, lambda payload: damage(payload['data']))
    out = tmp_path / 'out'
    with pytest.raises(dnnlib.UserError) as info:
        train_cli.launch(tiny_config(out, resume=str(run), kimg=0.1))
    assert str(info.value).startswith('--resume: ') and message in str(info.value) and str(snapshot) in str(info.value)
    assert not out.exists()


def test_batch_indices_draw_the_same_permutations_when_a_batch_spans_several_epochs():
    from metrics.segmentation import batch_indices
    batches = batch_indices(3, 7, torch.Generator().manual_seed(1))
    first, second = next(batches), next(batches)
    generator = torch.Generator().manual_seed(1)
    epochs = torch.cat([torch.randperm(3, generator=generator) for _ in range(5)])
    assert torch.equal(first, epochs[:7]) and torch.equal(second, epochs[7:14])
    assert all(sorted(epochs[3 * k:3 * k + 3].tolist()) == [0, 1, 2] for k in range(5))
