"""Memory estimated before it is taken: what this machine has free, and a one-line refusal.

A network, a batch or a data set that cannot fit is refused before anything is allocated or any
folder is made (issue 25 class 2): the estimate comes from the options (widths, resolution,
batch) through the size functions beside each network (``training.networks.generator_parameters``,
``metrics.segmentation.unet_bytes``, ``metrics.mine.mine_bytes``), and is compared here with the
memory the device has free. The estimates count the large terms only (weights, optimiser state,
activations, decoded images), so they err low: a refusal means the run could not have fitted.
"""

from __future__ import annotations

import os
import resource

import torch

import dnnlib

FLOAT_BYTES = 4
# Bytes per trained float32 parameter: the weight, its gradient and Adam's two moments.
TRAINED_PARAMETER_BYTES = 4 * FLOAT_BYTES


def format_bytes(count: float) -> str:
    """``'3.9 GB'``, ``'25.2 TB'``, ``'512 kB'`` (powers of 1000, as disk and memory are sold)."""
    for unit in ('B', 'kB', 'MB', 'GB', 'TB', 'PB'):
        if abs(count) < 1000 or unit == 'PB':
            return f'{count:.0f} {unit}' if unit == 'B' else f'{count:.1f} {unit}'
        count /= 1000
    return f'{count:.1f} EB'


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding='ascii') as f:
            text = f.read().strip()
        return int(text)
    except (OSError, ValueError):   # missing, or 'max' (no limit)
        return None


def _ram_available() -> int | None:
    """RAM this process can still take: the kernel's MemAvailable, within a cgroup's limit
    (a container) and the address-space limit (``ulimit -v``), whichever binds first."""
    candidates = []
    try:
        with open('/proc/meminfo', encoding='ascii') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    limit, current = _read_int('/sys/fs/cgroup/memory.max'), _read_int('/sys/fs/cgroup/memory.current')
    if limit is not None and current is not None:
        candidates.append(max(limit - current, 0))
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        pages = _read_int_first('/proc/self/statm')
        used = pages * os.sysconf('SC_PAGE_SIZE') if pages is not None else 0
        candidates.append(max(soft - used, 0))
    return min(candidates) if candidates else None


def _read_int_first(path: str) -> int | None:
    try:
        with open(path, encoding='ascii') as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def available_bytes(device: torch.device | str = 'cpu') -> int | None:
    """Free memory of ``device`` in bytes (a CUDA device's free memory, else the RAM this process
    can take); None when it cannot be read (then nothing is refused)."""
    device = torch.device(device)
    if device.type == 'cuda':
        try:
            return torch.cuda.mem_get_info(device)[0]
        except (RuntimeError, AssertionError):
            return None
    return _ram_available()


def check_fits(need: float, what: str, device: torch.device | str = 'cpu', advice: str = 'choose smaller values',
               share: int = 1) -> None:
    """:class:`dnnlib.UserError` when ``need`` bytes (``share`` processes each needing that much of
    one memory) exceed what ``device`` has free: ``<what> needs about X of memory, more than the Y
    free on this machine (cpu); <advice>``. ``what`` names the options that set the size."""
    have = available_bytes(device)
    total = need * share
    if have is not None and total > have:
        each = f' ({share} processes of {format_bytes(need)})' if share > 1 else ''
        raise dnnlib.UserError(f'{what} needs about {format_bytes(total)} of memory{each}, more than the '
                               f'{format_bytes(have)} free on this machine ({torch.device(device)}); {advice}')


# Building a network from a record: construction allocates (and initialises) every weight before
# load_state_dict can say the record's weights do not fit. A class without a size function could
# still be named with enormous arguments, so the build runs under an address-space limit of what
# this process uses now plus a budget from the weights the record actually holds.
BUILD_MARGIN_BYTES = 2 * 2 ** 30   # thread stacks and malloc arenas reserve address space too


def _address_space_used() -> int | None:
    pages = _read_int_first('/proc/self/statm')   # the first field: the whole virtual size, in pages
    return pages * os.sysconf('SC_PAGE_SIZE') if pages is not None else None


class BuildTooLarge(Exception):
    """Raised by :func:`bounded_build` when the build needed more memory than its budget."""


def bounded_build(build, budget: int):
    """``build()`` with this process's address space capped at its current size plus ``budget``
    bytes (restored afterwards); :class:`BuildTooLarge` when an allocation fails under the cap.
    Where the limit cannot be read or set (not Linux), ``build()`` runs unbounded."""
    used = _address_space_used()
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ValueError, OSError):
        used = None
    limit = used + budget if used is not None else None
    if limit is None or (soft != resource.RLIM_INFINITY and soft <= limit) or \
            (hard != resource.RLIM_INFINITY and hard < limit):
        return build()   # an existing, tighter limit binds anyway
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        return build()
    except (MemoryError, RuntimeError) as err:
        if isinstance(err, MemoryError) or 'alloc' in str(err).lower():
            raise BuildTooLarge(str(err)) from None
        raise
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
