"""Distributed helpers: local multi-process launch, torchrun, and the few collectives we use.

Two ways to get several processes:

* ``--gpus=N`` → :func:`spawn_local` starts N processes on this machine
  (``torch.multiprocessing.spawn``) that meet over TCP on a free local port;
* ``torchrun --nproc_per_node=N [--nnodes=M ...] script.py ...`` → :func:`torchrun_env` reads
  the standard variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

Backend: NCCL for CUDA devices, gloo on the CPU. A single process never initialises
torch.distributed; every helper below then degenerates to a no-op.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

import torch


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, local_rank, world_size)`` when started by torchrun (WORLD_SIZE is set), else None."""
    if 'WORLD_SIZE' not in os.environ or 'RANK' not in os.environ:
        return None
    world_size = int(os.environ['WORLD_SIZE'])
    rank = int(os.environ['RANK'])
    local_rank = int(os.environ.get('LOCAL_RANK', rank))
    return rank, local_rank, world_size


def device_for(local_rank: int) -> torch.device:
    """The CUDA device of this local rank, or the CPU when there is no CUDA."""
    if torch.cuda.is_available():
        return torch.device('cuda', local_rank % torch.cuda.device_count())
    return torch.device('cpu')


def init(rank: int, world_size: int, device: torch.device, init_method: str = 'env://') -> None:
    """Join the process group (nothing to do for a single process)."""
    if world_size <= 1:
        return
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend, init_method=init_method, rank=rank,
                                         world_size=world_size)


def shutdown(wait_for_peers: bool = False) -> None:
    """Leave the process group. ``wait_for_peers`` (on a normal exit) first meets every rank at a
    barrier, since gloo aborted a process ("terminate called without an active exception") when
    one rank tore its group down while another still used it. A peer that died makes the barrier
    fail: that is not this rank's error (the peer's own is the one reported), so it is let pass."""
    if is_initialized():
        if wait_for_peers:
            try:
                torch.distributed.barrier()
            except RuntimeError:
                pass
        torch.distributed.destroy_process_group()


def _run_in_group(fn: Callable, rank: int, world_size: int, device: torch.device, args: tuple) -> None:
    """``fn(rank, world_size, device, *args)`` inside the joined group; leaves it on any exit."""
    try:
        fn(rank, world_size, device, *args)
    except BaseException:
        shutdown()
        raise
    shutdown(wait_for_peers=True)


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def get_rank() -> int:
    return torch.distributed.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return torch.distributed.get_world_size() if is_initialized() else 1


def barrier() -> None:
    if is_initialized():
        torch.distributed.barrier()


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean of ``tensor`` over all ranks."""
    if is_initialized():
        torch.distributed.all_reduce(tensor)
        tensor /= get_world_size()
    return tensor


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place element-wise sum of ``tensor`` over all ranks (returned too)."""
    if is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place element-wise maximum of ``tensor`` over all ranks (returned too)."""
    if is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor


def all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate the rows [n_r, D] of every rank, rank 0 first; n_r may differ between ranks."""
    if not is_initialized():
        return rows
    world_size = get_world_size()
    counts = torch.zeros(world_size, dtype=torch.int64, device=rows.device)
    counts[get_rank()] = rows.shape[0]
    all_reduce_sum_(counts)
    # all_gather needs equal shapes: pad every shard to the longest one, then trim.
    padded = torch.zeros(int(counts.max()), *rows.shape[1:], dtype=rows.dtype, device=rows.device)
    padded[:rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, padded)
    return torch.cat([shard[:int(n)] for shard, n in zip(gathered, counts)])


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (any picklable value)."""
    if not is_initialized():
        return obj
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_object(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not is_initialized():
        return [obj]
    gathered: list = [None] * get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer with rank ``src``'s values (identical start)."""
    if not is_initialized():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.numel() > 0:
            torch.distributed.broadcast(tensor.data, src=src)


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _spawned_entry(rank: int, fn: Callable, world_size: int, init_method: str, args: tuple) -> None:
    device = device_for(rank)
    init(rank, world_size, device, init_method)
    _run_in_group(fn, rank, world_size, device, args)


def spawn_local(fn: Callable, world_size: int, args: tuple = ()) -> None:
    """Run ``fn(rank, world_size, device, *args)`` in ``world_size`` local processes.

    One process runs in this interpreter without torch.distributed; several are started with
    ``torch.multiprocessing.spawn`` (an exception in any of them is re-raised here).
    """
    if world_size == 1:
        fn(0, 1, device_for(0), *args)
        return
    init_method = f'tcp://127.0.0.1:{free_port()}'
    torch.multiprocessing.spawn(_spawned_entry, args=(fn, world_size, init_method, args),
                                nprocs=world_size, join=True)


def run_under_torchrun(fn: Callable, args: tuple = ()) -> None:
    """Run ``fn(rank, world_size, device, *args)`` in a process started by torchrun."""
    env = torchrun_env()
    assert env is not None, 'not started by torchrun'
    rank, local_rank, world_size = env
    device = device_for(local_rank)
    init(rank, world_size, device, 'env://')
    _run_in_group(fn, rank, world_size, device, args)
