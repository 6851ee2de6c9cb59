"""Reliability (issue 25, classes 2-7): sizes bounded and memory estimated before it is taken, no
sample silently wrong, NaN never chosen and never written as JSON, only regular files read, and an
error that is one safe line. Every hostile file is made here, small."""

import errno
import json
import math
import os
import re

import numpy as np
import pytest
import torch

import dnnlib
from training import snapshots, synthetic, train_cli


# ----------------------------------------------------------------------------------------------
# Class 6: one line, safe to print, never megabytes long; exit codes follow the cause.

def test_safe_line_escapes_what_could_cut_or_forge_the_line():
    name = 'data/0\nerror: fake second line\x1b[2J\x1b[1;31m\u202eevil\udcff.png'
    line = dnnlib.safe_line(f'cannot read image {name} (bad); replace it')
    assert '\n' not in line and '\x1b' not in line and '\u202e' not in line and '\udcff' not in line
    assert '0\\nerror: fake second line\\x1b[2J\\x1b[1;31m\\u202eevil\\udcff.png' in line
    assert line.endswith('; replace it')
    line.encode('utf-8')   # printable in any UTF-8 terminal: no lone surrogate left


def test_safe_line_cuts_a_long_value_at_its_middle_and_a_long_line_at_its_end():
    line = dnnlib.safe_line('unknown dataset ' + 'x' * 10_000_000 + 'END; choose cub')
    assert len(line) < 500 and line.startswith('unknown dataset xxx') and line.endswith('xxEND; choose cub')
    assert f'[{10_000_004 - 220} characters cut]' in line
    many = dnnlib.safe_line(' '.join(['y' * 200] * 100))
    assert len(many) <= dnnlib.util.LINE_CHARS and many.endswith('characters cut]')


def test_report_user_errors_prints_one_safe_line(capsys):
    @dnnlib.report_user_errors
    def command():
        raise dnnlib.UserError(f'cannot read image a\nb\x1b[2J.png (x); {"z" * 1_000_000}')

    with pytest.raises(SystemExit) as info:
        command()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count('\n') == 1 and err.startswith('error: cannot read image a\\nb\\x1b[2J.png')
    assert len(err) < 500


@pytest.mark.parametrize('number, code', [(errno.EROFS, 2), (errno.ENOTDIR, 2), (errno.EACCES, 2),
                                          (errno.ENOSPC, 1), (errno.EIO, 1)])
def test_exit_code_2_for_a_place_the_user_chose_1_for_the_machine(number, code):
    assert dnnlib.exit_code(OSError(number, os.strerror(number), '/x')) == code


def test_a_failed_temporary_file_is_named_by_the_file_asked_for(tmp_path):
    target = tmp_path / 'not-a-folder'
    target.write_text('a file')
    with pytest.raises(OSError) as info:
        dnnlib.write_bytes_atomic(str(target / 'x.pt'), b'data')
    assert info.value.filename == str(target / 'x.pt') and info.value.errno == errno.ENOTDIR


def test_a_killed_training_process_is_one_line_with_the_resume_command(tmp_path, monkeypatch):
    run_dir = tmp_path / '00000-run'

    def killed(*args, **kwargs):
        raise torch.multiprocessing.ProcessExitedException('process 1 terminated with signal SIGKILL',
                                                           error_index=1, error_pid=4242, exit_code=-9,
                                                           signal_name='SIGKILL')

    monkeypatch.setattr(train_cli, 'check_inputs', lambda c, hooks: None)
    monkeypatch.setattr(train_cli, 'prepare_run_dir', lambda c: str(run_dir))
    monkeypatch.setattr(train_cli.distributed, 'spawn_local', killed)
    with pytest.raises(train_cli.TrainingProcessDied) as info:
        train_cli.launch(dnnlib.EasyDict(gpus=2))
    message = str(info.value)
    assert message.startswith('training process 1 of 2 was killed by SIGKILL')
    assert message.endswith(f'continues from its last snapshot with --resume={run_dir}')


@pytest.mark.parametrize('damage', ['wrong shape', 'too few images', 'wrong type'])
def test_a_readable_synthetic_cache_of_the_wrong_shape_is_made_again(tmp_path, capsys, damage):
    path = synthetic.cache_path(str(tmp_path), 'train', 3, 0)
    os.makedirs(os.path.dirname(path))
    res = synthetic.NATIVE_RESOLUTION
    img, mask = {'wrong shape': (np.zeros(5, np.uint8), np.zeros(5, np.uint8)),
                 'too few images': (np.zeros((1, 3, res, res), np.uint8), np.zeros((1, res, res), np.uint8)),
                 'wrong type': (np.zeros((3, 3, res, res), np.float32), np.zeros((3, res, res), np.uint8))}[damage]
    np.savez(path, img=img, mask=mask)
    data = synthetic.load_or_generate(str(tmp_path), 'train', 3)
    assert data['img'].shape == (3, 3, res, res)
    assert np.array_equal(data['img'], synthetic.generate('train', 3, 0)['img'])
    warning = capsys.readouterr().err
    assert warning.startswith(f'warning: the cache file {path} is unreadable (ValueError: img ') and warning.count('\n') == 1


# ----------------------------------------------------------------------------------------------
# Class 4: a NaN or infinite metric is never chosen; every JSON written is valid.

def test_json_text_writes_null_for_nan_and_inf_and_is_strict_json():
    text = dnnlib.json_text({'fid': float('nan'), 'kid': [float('inf'), -float('inf'), 1.5],
                             'np': np.float32('nan'), 'ok': np.float64(2.0), 'n': 3, 'flag': True})
    assert json.loads(text) == {'fid': None, 'kid': [None, None, 1.5], 'np': None, 'ok': 2.0, 'n': 3, 'flag': True}
    assert 'NaN' not in text and 'Infinity' not in text


def _run_with_metrics(tmp_path, values, names=None):
    run = tmp_path / 'run'
    run.mkdir()
    lines = []
    for i, value in enumerate(values):
        name = (names or [])[i] if names else f'network-snapshot-000000_{16 * (i + 1):03d}.pt'
        (run / name).write_bytes(b'')
        lines.append(json.dumps({'metric': 'fid10k_full', 'results': {'fid10k_full': value},
                                 'snapshot_pkl': name, 'sigma': 5.0}))   # json.dumps writes NaN as older files did
    (run / 'metric-fid10k_full.jsonl').write_text('\n'.join(lines) + '\n')
    return run


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), None])
def test_a_nan_inf_or_null_fid_is_never_the_lowest(tmp_path, bad):
    run = _run_with_metrics(tmp_path, [bad, 50.0, bad])
    choice = snapshots.choose_snapshot(str(run))
    assert choice.path.endswith('network-snapshot-000000_032.pt') and choice.metric_value == 50.0


def test_every_fid_nan_is_one_line_that_names_the_way_out(tmp_path):
    run = _run_with_metrics(tmp_path, [float('nan'), float('inf')])
    with pytest.raises(dnnlib.UserError, match=r'is NaN, infinite or missing \(did the training diverge\?\); '
                                               r'pass --pkl_idx'):
        snapshots.choose_snapshot(str(run))


def test_a_metric_line_naming_no_snapshot_names_the_metric_file_and_line(tmp_path):
    run = _run_with_metrics(tmp_path, [40.0, 50.0], names=['network-snapshot-000000_016.pt', 'best.pt'])
    with pytest.raises(dnnlib.UserError) as info:
        snapshots.choose_snapshot(str(run))
    assert str(info.value).startswith(f"{run / 'metric-fid10k_full.jsonl'}, line 2: its snapshot_pkl 'best.pt' "
                                      f"is not named network-snapshot-KKKKKK.pt")


def test_pkl_idx_that_names_no_snapshot_is_refused_not_rounded(tmp_path):
    run = _run_with_metrics(tmp_path, [40.0, 50.0])
    assert snapshots.choose_snapshot(str(run), pkl_idx=0.016).path.endswith('000000_016.pt')
    with pytest.raises(dnnlib.UserError, match='--pkl_idx 0.0161: no '):
        snapshots.choose_snapshot(str(run), pkl_idx=0.0161)


# ----------------------------------------------------------------------------------------------
# Class 2: every size bounded; memory estimated before it is taken.

GIB = 2 ** 30


@pytest.fixture
def one_gib_free(monkeypatch):
    """A machine with 1 GiB free, whatever this one has."""
    from torch_utils import memory
    monkeypatch.setattr(memory, 'available_bytes', lambda device='cpu': GIB)


def test_available_memory_follows_the_address_space_limit(monkeypatch):
    import resource
    from torch_utils import memory
    real = resource.getrlimit
    monkeypatch.setattr(resource, 'getrlimit', lambda which: (3 * GIB, resource.RLIM_INFINITY)
                        if which == resource.RLIMIT_AS else real(which))
    assert memory.available_bytes('cpu') <= 3 * GIB


def test_check_fits_names_what_and_both_sizes(one_gib_free):
    from torch_utils import memory
    memory.check_fits(GIB // 2, 'small', 'cpu')
    with pytest.raises(dnnlib.UserError) as info:
        memory.check_fits(3e12, '--hidden=1000000', 'cpu', advice='choose a smaller --hidden')
    assert str(info.value) == ('--hidden=1000000 needs about 3.0 TB of memory, more than the 1.1 GB free on this '
                               'machine (cpu); choose a smaller --hidden')
    with pytest.raises(dnnlib.UserError, match=r'needs about 1.2 GB of memory \(2 processes of 600.0 MB\)'):
        memory.check_fits(6e8, 'two processes', 'cpu', share=2)


@pytest.mark.parametrize('kwargs', [dict(img_resolution=32, z_dim=64, w_dim=64, channel_base=2048, channel_max=64,
                                         mapping_layers=2),
                                    dict(img_resolution=64, z_dim=24, w_dim=40, channel_base=1024, channel_max=100,
                                         mapping_layers=3)])
def test_network_sizes_from_their_arguments_are_exact(kwargs):
    from metrics.segmentation import UNet, unet_parameters
    from training.networks import Discriminator, LayeredGenerator, discriminator_parameters, generator_parameters

    def count(module):
        return sum(t.numel() for t in (*module.parameters(), *module.buffers()))

    d_kwargs = {k: kwargs[k] for k in ('img_resolution', 'channel_base', 'channel_max')}
    assert generator_parameters(**kwargs) == count(LayeredGenerator(**kwargs))
    assert discriminator_parameters(**d_kwargs) == count(Discriminator(**d_kwargs, freeze_layers=2))
    assert unet_parameters(kwargs['mapping_layers'] + 3) == count(UNet(base_width=kwargs['mapping_layers'] + 3))


def test_a_tiny_snapshot_naming_a_huge_network_is_refused_before_it_is_built(tmp_path, monkeypatch):
    from torch_utils import checkpoint
    from training import networks

    def never(*args, **kwargs):
        raise AssertionError('the network was built')

    record = {'class': 'training.networks.LayeredGenerator', 'kwargs': dict(w_dim=11585, mapping_layers=4),
              'state': {}}
    path = tmp_path / 'network-snapshot-000000.pt'
    torch.save({'format': checkpoint.FORMAT, 'modules': {'G_ema': record}, 'data': {}}, path)
    assert path.stat().st_size < 4096
    monkeypatch.setattr(networks.LayeredGenerator, '__init__', never)
    with pytest.raises(dnnlib.UserError) as info:
        checkpoint.load_snapshot(str(path))
    assert "module 'G_ema': its arguments describe a training.networks.LayeredGenerator of 9" in str(info.value)
    assert 'numbers but its weights hold 0: they do not fit' in str(info.value)


def _invoke(command, *args):
    from click.testing import CliRunner
    from test_cli_docs import load_command
    return CliRunner().invoke(load_command(command), [str(a) for a in args], prog_name=command)


def _error_line(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith('error: ') and 'Traceback' not in result.output, result.output[-2000:]
    return lines[-1]


@pytest.mark.parametrize('command, option', [
    ('train_ILS_64.py', '--batch=1000000000'), ('train_ILS_64.py', '--subset=1000000000000'),
    ('train_ILS_64.py', '--gamma=1e308'), ('train_ILS_64.py', '--pl-weight=1e308'), ('train_ILS_64.py', '--gpus=100000'),
    ('train_ILS_64.py', '--kimg=1e18'), ('generate_segmentation_samples.py', '--batch=1000000000000000000'),
    ('eval_segmentation.py', '--iters=1000000000000000000'), ('eval_segmentation.py', '--val-interval=1000000000000000000'),
    ('eval_MI_MINE.py', '--steps=1000000000000000000'), ('eval_MI_MINE.py', '--lr=1e308'),
    ('eval_MI_MINE.py', '--eval-every=1000000000000000000')])
def test_every_size_option_has_an_upper_bound(tmp_path, command, option):
    required = {'train_ILS_64.py': [f'--outdir={tmp_path}', '--data=synthetic'],
                'generate_segmentation_samples.py': [f'--network={tmp_path}'],
                'eval_segmentation.py': [f'--syn-data={tmp_path}', '--real-data=synthetic'],
                'eval_MI_MINE.py': [f'--path={tmp_path}']}[command]
    result = _invoke(command, *required, option)
    assert result.exit_code == 2 and f"Invalid value for '{option.split('=')[0]}'" in result.output, result.output
    assert os.listdir(tmp_path) == []


def test_training_batch_that_cannot_fit_is_refused_before_the_run_directory(tmp_path, one_gib_free):
    result = _invoke('train_ILS_64.py', f'--outdir={tmp_path / "out"}', '--data=synthetic', '--cfg=cpu',
                     '--batch=65536', '--no-auto-test', '--metrics=none')
    assert result.exit_code == 2
    line = _error_line(result)
    assert line.startswith('error: training with --batch=65536 (65536 per process) at 32 px needs about ')
    assert line.endswith('free on this machine (cpu); choose a smaller --batch (or fewer --gpus)')
    assert not (tmp_path / 'out').exists() or os.listdir(tmp_path / 'out') == []


def test_segmentation_width_that_cannot_fit_is_refused_before_any_folder(tmp_path, one_gib_free):
    from PIL import Image
    syn = tmp_path / 'syn'
    for layer in ('img', 'mask'):
        (syn / layer).mkdir(parents=True)
        for i in range(4):
            Image.new('RGB' if layer == 'img' else 'L', (16, 16), 255 * (i % 2)).save(syn / layer / f'{i:06d}.png')
    result = _invoke('eval_segmentation.py', f'--syn-data={syn}', '--real-data=synthetic', '--scale=16',
                     '--base-width=4096', '--iters=2', '--batch=4', '--workers=0', '--quiet')
    assert result.exit_code == 2
    line = _error_line(result)
    assert line.startswith('error: the UNet at --base-width=4096, --batch=4 and 16 px on 4 synthetic pairs needs about '
                           '877.3 GB of memory')
    assert line.endswith('; choose a smaller --base-width or --batch (or a smaller set or resolution)')
    assert sorted(os.listdir(syn)) == ['img', 'mask']


def test_mine_width_that_cannot_fit_is_refused_before_any_layer_is_read(tmp_path, one_gib_free):
    for name in ('fg', 'bg', 'mask'):
        (tmp_path / name).mkdir()
    result = _invoke('eval_MI_MINE.py', f'--path={tmp_path}', '--hidden=1000000', '--resolution=1024', '--steps=2',
                     '--workers=0', '--quiet')
    assert result.exit_code == 2
    assert _error_line(result).startswith('error: MINE at --hidden=1000000, --batch=64 and --resolution=1024 needs '
                                          'about 201.4 TB of memory')
    assert sorted(os.listdir(tmp_path)) == ['bg', 'fg', 'mask']


@pytest.mark.parametrize('name, value, message', [
    ('seg_base_width', 10_000_000, 'auto_test_sizes.seg_base_width=10000000 in the training options is not an '
                                   'integer in 1..4096'),
    ('mine_hidden', 10_000_000, 'auto_test_sizes.mine_hidden=10000000 in the training options is not an integer '
                                'in 1..1000000'),
    ('seg_base_width', 4096, 'auto_test_sizes seg_base_width=4096, seg_batch=64 at 32 px needs about'),
    ('mine_hidden', 1_000_000, 'auto_test_sizes mine_hidden=1000000, mine_resolution=64 on n=10000 samples needs')])
def test_hand_edited_auto_test_sizes_are_checked_before_generation(tmp_path, one_gib_free, name, value, message):
    from metrics import auto_test
    sizes = auto_test.AutoTestSizes.from_dict({name: value}) if value <= auto_test.SIZE_BOUNDS[name] else None
    if sizes is None:
        with pytest.raises(dnnlib.UserError, match=re.escape(message)):
            auto_test.AutoTestSizes.from_dict({name: value})
        return
    with pytest.raises(dnnlib.UserError) as info:
        auto_test.check_sizes_fit(sizes, 32, 'cpu')
    assert str(info.value).startswith(message)
    assert str(info.value).endswith('; fix auto_test_sizes in training_options.json of the run')


# ----------------------------------------------------------------------------------------------
# Class 6 again: damaged files that the checks did not model are one line, not a traceback.

from test_legacy import _state, damaged_original_error, persistence  # noqa: E402,F401


@pytest.mark.parametrize('damage, message', [
    (lambda G: _state(G, 'mapping_fg.fc1').update(_parameters=[1, 2]), 'mapping_fg.fc1._parameters is a list'),
    (lambda G: _state(G, 'synthesis_bg')['_modules'].update(b8={'weight': 1}),
     'the submodule synthesis_bg.b8 is a dict, not a network record'),
    (lambda G: _state(G, 'synthesis_bg.b8')['_buffers'].update(x='text'), 'synthesis_bg.b8.x is a str, not a tensor')])
def test_a_damaged_original_record_is_one_line_naming_it(tmp_path, persistence, damage, message):
    path, error = damaged_original_error(tmp_path, damage, seed=5)
    assert str(error).startswith(f'{path}, G_ema: {message}, not what the original code writes')


def test_a_storage_that_holds_objects_is_refused_without_relaying_torchs_advice(tmp_path):
    import io
    import pickle
    from torch_utils import legacy

    buffer = io.BytesIO()
    torch.save(os.getcwd, buffer, _use_new_zipfile_serialization=False)   # a harmless function, never called

    class Storage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (buffer.getvalue(),)

    path = tmp_path / 'network-snapshot-000000.pkl'
    with open(path, 'wb') as f:
        pickle.dump({'G_ema': Storage()}, f, protocol=4)
    with pytest.raises(dnnlib.UserError) as info:
        legacy.read_original_pickle(str(path))
    message = str(info.value)
    assert message.startswith(f'{path}: refusing to read a tensor storage that holds code or objects')
    assert 'weights_only' not in message and 'truncated' not in message


@pytest.mark.parametrize('data, problem', [
    (dict(protocol='64', iteration=2), "protocol='64' is not a mapping"),
    (dict(protocol={}, iteration='two'), "iteration='two' is not an integer >= 0"),
    (dict(protocol={}, iteration=2, best_iteration=-1), 'best_iteration=-1 is not an integer >= 0'),
    (dict(protocol={}, iteration=2, val={'IoU_dataset': 'high'}), 'its validation scores are not those'),
    ('optimizer', 'its optimiser state does not fit the UNet')])
def test_a_tampered_unet_file_for_resume_from_is_one_line(tmp_path, data, problem):
    from metrics import segmentation
    from torch_utils import checkpoint
    unet = segmentation.UNet(base_width=2)
    if data == 'optimizer':   # Adam's state of another network: the shapes do not match
        other = torch.nn.Linear(3, 1)
        optimizer = torch.optim.Adam(other.parameters())
        other(torch.zeros(1, 3)).sum().backward()
        optimizer.step()
        data = dict(protocol={}, iteration=2, optimizer=optimizer.state_dict())
    path = tmp_path / 'unet-last.pt'
    checkpoint.save_snapshot(str(path), {'unet': unet}, data=data)
    with pytest.raises(dnnlib.UserError) as info:
        segmentation.check_unet_data(checkpoint.load_snapshot(str(path)), str(path))
    assert str(info.value).startswith(f'--resume-from: {path} is damaged or was altered ({problem}')


# ----------------------------------------------------------------------------------------------
# Class 3: no sample silently wrong.

import _fixtures as fx  # noqa: E402
from PIL import Image  # noqa: E402


def _open(data, split='train', **kwargs):
    from training.dataset import open_dataset
    return open_dataset(str(data), split=split, **kwargs)


@pytest.mark.parametrize('suffix', ['.tif', '.png'])
def test_16_bit_grey_images_decode_to_their_high_byte_not_to_white(tmp_path, suffix):
    from training import image_files
    ramp = np.linspace(0, 65535, 32 * 32).astype(np.uint16).reshape(32, 32)
    path = tmp_path / f'ramp{suffix}'
    Image.fromarray(ramp).save(path)   # mode I;16
    rgb = image_files.decode_rgb(path.read_bytes(), str(path))
    expected = (ramp >> 8).astype(np.uint8)
    assert rgb.shape == (32, 32, 3) and np.abs(rgb[:, :, 0].astype(int) - expected).max() <= 1
    assert (rgb == 255).mean() < 0.01   # PIL's convert('RGB') made 99.6 % of such pixels white


def test_exif_orientation_turns_a_folder_image_as_a_viewer_shows_it(tmp_path):
    stored = np.zeros((32, 32, 3), np.uint8)
    stored[:16, :16] = 255                        # bright top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 3                              # orientation 3: shown turned by 180 degrees
    Image.fromarray(stored).save(tmp_path / 'a.jpg', exif=exif.tobytes(), quality=100)
    image = _open(tmp_path, resolution=32)[0][0]   # [3, R, R]
    assert image[:, 24:, 24:].mean() > 200 and image[:, :8, :8].mean() < 50   # bright bottom-right, as shown


def test_masks_stored_as_0_and_1_read_as_masks(tmp_path):
    fx.build_pairs(str(tmp_path), count=2, size=16)
    grey = np.zeros((16, 16), np.uint8)
    grey[4:12, 4:12] = 1
    for i in (1, 2):
        Image.fromarray(grey).save(tmp_path / 'mask' / f'{i:06d}.png')   # mode L, values 0 and 1
    mask = _open(tmp_path, split='test', resolution=16)[0][1]
    assert mask.sum() == 64 and mask[4:12, 4:12].all()


def test_cub_id_listed_twice_is_an_error_naming_both_lines(tmp_path):
    fx.build_cub(str(tmp_path / 'birds'))
    images = tmp_path / 'birds' / 'images.txt'
    images.write_text(images.read_text() + '3 001.A/wide.jpg\n')
    with pytest.raises(dnnlib.UserError) as info:
        _open('cub', split='test', data_root=str(tmp_path / 'birds'))
    assert str(info.value).startswith(f'{images}, line 7: image id 3 is listed a second time (first on line 3)')


def test_cub_box_outside_its_image_is_an_error_naming_the_line(tmp_path):
    fx.build_cub(str(tmp_path / 'birds'))
    boxes = tmp_path / 'birds' / 'bounding_boxes.txt'
    lines = [('3 1000.0 1000.0 10.0 10.0' if line.startswith('3 ') else line) for line in boxes.read_text().splitlines()]
    boxes.write_text('\n'.join(lines) + '\n')
    dataset = _open('cub', split='test', data_root=str(tmp_path / 'birds'))
    with pytest.raises(dnnlib.UserError) as info:
        [dataset[i] for i in range(len(dataset))]
    assert str(info.value).startswith(f'{boxes}, line 2: the box 1000 1000 10 10 of ')
    assert 'lies outside its 100 x 36 image' in str(info.value)


def test_meta_json_whose_n_is_smaller_than_the_folder_is_said(tmp_path, capsys):
    from training import sample_set
    fx.build_pairs(str(tmp_path), count=5, size=8)
    (tmp_path / 'meta.json').write_text(json.dumps({'n': 2, 'layers': ['img', 'mask']}))
    names = sample_set.complete_samples(str(tmp_path), ('img', 'mask'))
    assert names == ['000001.png', '000002.png']
    err = capsys.readouterr().err
    assert err == (f'warning: {tmp_path} holds 3 sample(s) beyond the n=2 of its meta.json (e.g. img/000003.png); '
                   f'only the first 2 are read: fix n in meta.json, or remove the others\n')


def test_outdir_inside_the_data_folder_is_refused_and_run_folders_are_never_read(tmp_path, capsys):
    data = tmp_path / 'photos'
    for i in range(3):
        fx.write_image(str(data / f'{i}.png'), np.full((8, 8, 3), 40 * i, np.uint8))
    with pytest.raises(dnnlib.UserError, match=r'lies inside --data=.*: the run\'s grids would be read as training'):
        train_cli.build_training_config(outdir=str(data / 'runs'), data=str(data), cfg='cpu')
    run = data / 'runs' / '00000-photos-cpu-batch16'     # a run made there before
    fx.write_image(str(run / 'reals.png'), np.zeros((8, 8, 3), np.uint8))
    (run / 'training_options.json').write_text('{}')
    assert len(_open(data, resolution=8)) == 3
    assert capsys.readouterr().err.startswith(f'warning: 1 training run folder(s) inside {data} skipped (e.g. {run})')


# ----------------------------------------------------------------------------------------------
# Class 5: only regular files are read; symlinks are followed; split tokens stay in the dataset.

def _images(folder, count=3):
    for i in range(count):
        fx.write_image(str(folder / f'{i:03d}.png'), np.full((8, 8, 3), 50 * i, np.uint8))


def test_a_fifo_named_png_is_refused_without_opening_it(tmp_path):
    _images(tmp_path)
    os.mkfifo(tmp_path / '000f.png')   # open() on it would wait for a writer forever
    with pytest.raises(dnnlib.UserError) as info:
        _open(tmp_path, resolution=8)
    assert str(info.value) == f'{tmp_path / "000f.png"} is a FIFO (named pipe), not an image file; remove it from the data folder'


def test_a_device_named_png_is_refused_and_never_read(tmp_path):
    _images(tmp_path)
    os.symlink('/dev/zero', tmp_path / '000z.png')
    with pytest.raises(dnnlib.UserError, match=r'000z.png is a device, not an image file'):
        _open(tmp_path, resolution=8)


def test_symlinked_folders_and_files_are_followed_and_loops_read_once(tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    _images(outside, 2)
    data = tmp_path / 'data'
    data.mkdir()
    _images(data, 2)
    os.symlink(outside, data / 'linked')
    os.symlink(data, data / 'loop')
    os.symlink(outside / '000.png', data / 'file-link.png')
    assert len(_open(data, resolution=8)) == 5   # 2 + 2 behind the folder link + 1 file link; the loop adds none
    only = tmp_path / 'only'
    only.mkdir()
    os.symlink(outside, only / 'linked')
    assert len(_open(only, resolution=8)) == 2


def test_a_zip_member_that_inflates_past_the_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import zipfile
    from training import image_files
    monkeypatch.setattr(image_files, 'MAX_FILE_BYTES', 1 << 16)
    path = tmp_path / 'bomb.zip'
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
        archive.writestr('000bomb.png', b'\0' * (1 << 20))   # 1 MiB of zeros: a few kB compressed
    with pytest.raises(dnnlib.UserError, match=r'000bomb.png in the zip archive .* inflates to 1,048,576 bytes, '
                                               r'more than the 65,536 of any image; remove that member'):
        _open(path, resolution=8)[0]


@pytest.mark.parametrize('token', ['../../outside/escape', '/abs/escape', 'sub/../../x'])
def test_drc_split_tokens_outside_the_dataset_are_refused(tmp_path, token):
    root = tmp_path / 'dogs'
    fx.build_mrcnn(str(root), 'dogs')
    np.save(root / 'data_tr_sel.npy', np.array(['t_red', token]))
    with pytest.raises(dnnlib.UserError) as info:
        _open('dog', data_root=str(root))
    assert str(info.value).startswith(f'{root / "data_tr_sel.npy"} holds the token {token!r}, which points outside')


def test_every_number_option_of_every_command_has_an_upper_bound():
    import click
    from test_cli_docs import COMMANDS, load_command
    unbounded = [f'{name} --{param.name}' for name in COMMANDS for param in load_command(name).params
                 if isinstance(param.type, (click.IntRange, click.FloatRange)) and param.type.max is None]
    assert unbounded == ['generate_segmentation_samples.py --sigma']   # a value to match, not a size


def test_an_error_relayed_from_a_worker_keeps_its_whole_message():
    relayed = dnnlib.UserError('Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call '
                               'last):\n  File "x.py", line 3, in load\n    raise UserError(message)\n'
                               'dnnlib.util.UserError: cannot read image d/0\nerror: fake line.png (bad); replace it\n')
    message = dnnlib.user_error_message(relayed)
    assert message == 'cannot read image d/0\nerror: fake line.png (bad); replace it'
    assert dnnlib.safe_line(message) == 'cannot read image d/0\\nerror: fake line.png (bad); replace it'


@pytest.mark.parametrize('class_name, kwargs', [
    ('training.networks.EqualizedLinear', dict(in_features=100_000, out_features=100_000)),          # 40 GB
    ('training.mi_estimators.MIEstimators', dict(widths=[4096] * 5)),                                 # ~10 GB
    ('training.networks.MappingNetwork', dict(z_dim=8, w_dim=60_000, num_ws=2, num_layers=2))])      # 14 GB
def test_any_registered_class_named_with_enormous_arguments_is_refused_within_a_budget(tmp_path, monkeypatch,
                                                                                        class_name, kwargs):
    import resource
    from torch_utils import checkpoint, memory
    monkeypatch.setattr(memory, 'BUILD_MARGIN_BYTES', 256 * 2 ** 20)   # fail sooner than the 2 GiB of a real load
    path = tmp_path / 'network-snapshot-000000.pt'
    torch.save({'format': checkpoint.FORMAT, 'modules': {'G_ema': {'class': class_name, 'kwargs': kwargs,
                                                                   'state': {}}}, 'data': {}}, path)
    limit_before = resource.getrlimit(resource.RLIMIT_AS)
    with pytest.raises(dnnlib.UserError) as info:
        checkpoint.load_snapshot(str(path))
    assert f"module 'G_ema': its arguments describe a {class_name} far larger than the 0 bytes of weights" \
           in str(info.value)
    assert resource.getrlimit(resource.RLIMIT_AS) == limit_before   # the cap is lifted again


def test_generation_whose_latents_cannot_fit_is_refused_before_the_set_is_made(tmp_path, one_gib_free):
    from metrics import generate as gen
    from training.networks import LayeredGenerator
    G = LayeredGenerator(img_resolution=32, z_dim=512, w_dim=8, channel_base=64, channel_max=8, mapping_layers=1)
    gen.check_generation_memory(G, 4, 'cpu', n=1000)
    with pytest.raises(dnnlib.UserError, match=r'^drawing the latents of --n=10000000 samples \(z_dim 512\) needs about 102.4 GB'):
        gen.check_generation_memory(G, 4, 'cpu', n=10_000_000)


def test_run_and_metadata_files_that_are_fifos_are_refused_not_opened(tmp_path):
    from metrics import auto_test
    from training import sample_set
    run = tmp_path / 'run'
    run.mkdir()
    os.mkfifo(run / 'training_options.json')
    with pytest.raises(dnnlib.UserError, match=r'training_options.json is a FIFO \(named pipe\), not a file'):
        auto_test.read_training_options(str(run))
    os.mkfifo(run / 'meta.json')
    with pytest.raises(dnnlib.UserError, match=r'meta.json is a FIFO'):
        sample_set.read_meta(str(run))
    root = tmp_path / 'birds'
    fx.build_cub(str(root))
    os.remove(root / 'images' / '001.A' / 'wide.jpg')
    os.mkfifo(root / 'images' / '001.A' / 'wide.jpg')
    with pytest.raises(dnnlib.UserError, match=r'wide.jpg is a FIFO'):
        _open('cub', data_root=str(root))


def test_a_float_tiff_in_0_1_decodes_to_0_255(tmp_path):
    from training import image_files
    ramp = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / 'f.tif')   # mode F
    rgb = image_files.decode_rgb((tmp_path / 'f.tif').read_bytes(), 'f.tif')
    assert np.array_equal(rgb[:, :, 1], np.rint(ramp * 255).astype(np.uint8))


def test_memory_running_out_anyway_is_one_line_and_exit_1(capsys):
    @dnnlib.report_user_errors
    def command():
        raise MemoryError('Unable to allocate 14.6 TiB')

    with pytest.raises(SystemExit) as info:
        command()
    assert info.value.code == 1
    assert capsys.readouterr().err == ('error: out of memory (Unable to allocate 14.6 TiB); choose smaller sizes '
                                       '(--batch, widths, --resolution, --n) or free some memory\n')


def test_a_preview_grid_that_cannot_fit_is_refused_before_reading(tmp_path, one_gib_free):
    _images(tmp_path / 'data')
    result = _invoke('python -m training.dataset', f'--data={tmp_path / "data"}', '--resolution=4096',
                     f'--grid={tmp_path / "g.png"}')
    assert result.exit_code == 2
    assert _error_line(result).startswith('error: the --grid preview at --resolution=4096 needs about 4.8 GB of memory')
    assert not (tmp_path / 'g.png').exists()


def test_every_json_the_project_writes_goes_through_json_text():
    """A source scan, so that a new writer cannot bring bare NaN back: json.dump is never called,
    and json.dumps only to print, to copy, or as a canonical key (sort_keys=True: hashed or compared,
    never written)."""
    import ast
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    allowed_parents = {'print', 'loads', 'md5', 'sha256', 'len', 'echo'}
    offenders = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith('.') and d not in ('tests', '__pycache__', 'shared')]
        for name in files:
            if not name.endswith('.py') or os.path.join(folder, name) == os.path.join(root, 'dnnlib', 'util.py'):
                continue
            path = os.path.join(folder, name)
            tree = ast.parse(open(path, encoding='utf-8').read())
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == 'json'
                        and node.func.attr in ('dump', 'dumps')):
                    continue
                parent = parents.get(node)
                called = parent.func if isinstance(parent, ast.Call) else None
                via = getattr(called, 'attr', None) or getattr(called, 'id', None)
                canonical_key = any(k.arg == 'sort_keys' for k in node.keywords)
                if node.func.attr == 'dump' or (via not in allowed_parents and not canonical_key):
                    offenders.append(f'{os.path.relpath(path, root)}:{node.lineno}')
    assert offenders == [], f'write JSON with dnnlib.json_text (NaN -> null, allow_nan=False): {offenders}'


def test_cub_image_listed_under_two_ids_is_an_error_naming_both_lines(tmp_path):
    fx.build_cub(str(tmp_path / 'birds'))
    images = tmp_path / 'birds' / 'images.txt'
    lines = images.read_text().splitlines()
    lines[2] = '3 001.A/wide.jpg'            # test id 3 now names train image 1's file
    images.write_text('\n'.join(lines) + '\n')
    with pytest.raises(dnnlib.UserError) as info:
        _open('cub', split='test', data_root=str(tmp_path / 'birds'))
    assert str(info.value).startswith(f'{images}, line 3: 001.A/wide.jpg is listed a second time (as id 1 on line 1)')
