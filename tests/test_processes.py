"""The per-process batch and D's minibatch-stddev group: derived once (train_cli.split_batch), refused
before anything is made, for --gpus and for torchrun alike (torchrun itself on the CPU with gloo)."""

import json
import os
import subprocess
import sys

import PIL.Image
import pytest

import dnnlib
from training import train_cli
from training.synthetic import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('batch,world_size,mbstd,expected', [
    (24, 1, 4, (24, 4)),     # one process: 24 per process, groups of 4
    (32, 4, 4, (8, 4)),
    (6, 2, 4, (3, 3)),       # fewer per process than the group: the group shrinks to the whole batch
    (8, 8, 4, (1, 1)),
    (12, 2, 2, (6, 2)),
])
def test_split_batch_gives_the_per_process_batch_and_the_group(batch, world_size, mbstd, expected):
    assert train_cli.split_batch(batch, world_size, mbstd) == expected


@pytest.mark.parametrize('args,message', [
    ((30, 4, 4, False), '--batch=30 is not divisible by --gpus=4'),
    ((30, 4, 4, True), '--batch=30 is not divisible by the torchrun world size 4'),
    # The case of issue 24 §6: 6 per rank cannot be cut into groups of 4.
    ((24, 4, 4, False), 'the per-process batch 6 is not a multiple of the minibatch-stddev group 4; '
                        'choose --batch as a multiple of 16'),
    ((24, 4, 4, True), 'the per-process batch 6 (--batch=24 over 4 torchrun processes) is not a multiple of the '
                       'minibatch-stddev group 4; choose --batch as a multiple of 16'),
])
def test_split_batch_refuses_with_one_line(args, message):
    with pytest.raises(dnnlib.UserError) as info:
        train_cli.split_batch(*args[:3], torchrun=args[3])
    assert str(info.value) == message


def test_gpus_config_carries_the_derived_batch_and_group(tmp_path):
    c = train_cli.build_training_config(outdir=str(tmp_path), data='synthetic', cfg='cpu', batch=6, gpus=2)
    assert c.batch_gpu == 3 and c.D_kwargs['mbstd_group_size'] == 3
    with pytest.raises(dnnlib.UserError, match='the per-process batch 6 is not a multiple'):
        train_cli.build_training_config(outdir=str(tmp_path), data='synthetic', cfg='cpu', batch=24, gpus=4)


def test_under_torchrun_the_world_size_counts_and_is_checked_before_anything_is_made(tmp_path, monkeypatch):
    c = train_cli.build_training_config(outdir=str(tmp_path / 'out'), data='synthetic', cfg='cpu', batch=24)
    assert c.batch_gpu == 24 and c.D_kwargs['mbstd_group_size'] == 4   # one process: fine
    monkeypatch.setenv('WORLD_SIZE', '4')
    monkeypatch.setenv('RANK', '0')
    made = []
    monkeypatch.setattr(train_cli, 'check_inputs', lambda c, hooks: made.append('inputs read'))
    monkeypatch.setattr(train_cli, 'prepare_run_dir', lambda c: made.append('run dir'))
    monkeypatch.setattr(train_cli.distributed, 'run_under_torchrun', lambda *a: made.append('trained'))
    with pytest.raises(dnnlib.UserError, match=r'per-process batch 6 \(--batch=24 over 4 torchrun processes\)'):
        train_cli.launch(c)
    assert made == [] and not (tmp_path / 'out').exists()
    # Built under torchrun, the config is refused at once; a batch that fits is split for 4 processes.
    with pytest.raises(dnnlib.UserError, match='over 4 torchrun processes'):
        train_cli.build_training_config(outdir=str(tmp_path / 'out'), data='synthetic', cfg='cpu', batch=24)
    c = train_cli.build_training_config(outdir=str(tmp_path / 'out'), data='synthetic', cfg='cpu', batch=32)
    assert c.batch_gpu == 8 and c.D_kwargs['mbstd_group_size'] == 4
    c8 = train_cli.for_world_size(dnnlib.EasyDict(c, batch=8), 4)
    assert (c8.gpus, c8.batch_gpu, c8.D_kwargs['mbstd_group_size']) == (4, 2, 2)
    assert c.D_kwargs['mbstd_group_size'] == 4   # the original config is left as it was


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp('images')
    for i, image in enumerate(generate('train', 16)['img']):
        PIL.Image.fromarray(image.transpose(1, 2, 0)).save(folder / f'{i:03d}.png')
    return str(folder)


# Run under torchrun: the training command, with the training loop replaced by one gloo all-reduce of
# what each rank was given (the real loop takes minutes on a busy CPU; launching is what is tested).
TORCHRUN_SCRIPT = """
import json, os, sys
sys.path.insert(0, {root!r})
import torch, torch.distributed as dist
from metrics.training_hooks import HOOKS
from training import train_cli, training_loop

def one_reduce(run_dir, cfg, rank, world_size, device):
    given = torch.tensor([cfg.batch_gpu, cfg.D_kwargs['mbstd_group_size'], 1])
    dist.all_reduce(given)
    if rank == 0:
        with open(os.path.join(run_dir, 'ranks.json'), 'w') as f:
            json.dump(dict(summed=given.tolist(), world_size=world_size, backend=dist.get_backend()), f)

training_loop.training_loop = one_reduce
train_cli.make_main(64, HOOKS)(sys.argv[1:])
"""


def torchrun(tmp_path, data, *args):
    """``torchrun --standalone --nproc_per_node=2`` of the training command on the CPU, or a skip."""
    script = tmp_path / 'train_under_torchrun.py'
    script.write_text(TORCHRUN_SCRIPT.format(root=ROOT))
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(script),
               f'--outdir={tmp_path / "out"}', f'--data={data}', '--cfg=cpu', '--metrics=none', '--no-auto-test',
               '--workers=0', *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip('torchrun did not finish in 240 s on this machine')
    if result.returncode != 0 and 'error: ' not in result.stderr and 'train_under_torchrun' not in result.stderr:
        pytest.skip(f'torchrun cannot start here: {(result.stderr.strip().splitlines() or ["no output"])[-1]}')
    return result


def test_torchrun_refuses_a_batch_its_ranks_cannot_group_before_the_run_directory(tmp_path, image_folder):
    result = torchrun(tmp_path, image_folder, '--batch=12')   # 6 per rank, groups of 4
    assert result.returncode != 0
    line = ('error: the per-process batch 6 (--batch=12 over 2 torchrun processes) is not a multiple of the '
            'minibatch-stddev group 4; choose --batch as a multiple of 8')
    # Every rank makes the same check and says so; their lines can interleave on the shared pipe.
    assert line in result.stderr
    assert not (tmp_path / 'out').exists()


def test_torchrun_gloo_ranks_each_get_their_share_and_one_run_directory(tmp_path, image_folder):
    import torch.distributed
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip('torch.distributed has no gloo backend here')
    result = torchrun(tmp_path, image_folder, '--batch=4', '--kimg=0.008')
    assert result.returncode == 0, result.stderr[-3000:]
    runs = os.listdir(tmp_path / 'out')
    assert len(runs) == 1 and runs[0].endswith('-cpu-batch4')   # made once, by rank 0
    with open(tmp_path / 'out' / runs[0] / 'ranks.json') as f:
        ranks = json.load(f)
    # Each of the 2 ranks: 2 images and a stddev group of 2 (summed over the ranks by gloo).
    assert ranks == dict(summed=[4, 4, 2], world_size=2, backend='gloo')
    with open(tmp_path / 'out' / runs[0] / 'training_options.json') as f:
        options = json.load(f)
    assert options['gpus'] == 2 and options['batch_gpu'] == 2 and options['D_kwargs']['mbstd_group_size'] == 2


def _sum_ranks_then_maybe_fail(rank, world_size, device, out_dir, failing_rank):
    """Spawned by the tests below: all-reduces its rank, writes the sum, then raises on failing_rank."""
    import torch
    from torch_utils import distributed
    total = distributed.all_reduce_mean_(torch.tensor([float(rank)])) * world_size
    with open(os.path.join(out_dir, f'rank{rank}.txt'), 'w') as f:
        f.write(str(float(total)))
    if rank == failing_rank:
        raise RuntimeError(f'rank {rank} failed on purpose')


def test_spawned_ranks_leave_the_group_together_and_a_failing_rank_is_reraised(tmp_path):
    from torch_utils import distributed
    distributed.spawn_local(_sum_ranks_then_maybe_fail, 2, args=(str(tmp_path), -1))
    assert [open(tmp_path / f'rank{r}.txt').read() for r in (0, 1)] == ['1.0', '1.0']  # 0 + 1 on both
    with pytest.raises(Exception, match='rank 1 failed on purpose'):
        distributed.spawn_local(_sum_ranks_then_maybe_fail, 2, args=(str(tmp_path), 1))
