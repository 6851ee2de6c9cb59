"""One channel for training statistics: ``report(name, value)`` anywhere, ``collect()`` per tick.

Values are accumulated as (count, sum, sum of squares) in float64 on the device they come from
(no host synchronisation per report).
:func:`collect` sums these moments over all ranks (when torch.distributed is initialised), so
the mean and standard deviation it returns are those of every value reported by every rank
since the previous call; then it starts over. The status line, ``stats.jsonl`` and TensorBoard
all read what :func:`collect` returns.
"""

from __future__ import annotations

import math
import threading

import torch

_lock = threading.Lock()
_moments: dict[str, torch.Tensor] = {}  # name → float64 [3]: count, sum, sum of squares


def report(name: str, value: torch.Tensor | float | int | list) -> torch.Tensor | float | int | list:
    """Record every element of ``value`` under ``name``; returns ``value`` unchanged.

    Non-finite elements are counted as they are (a NaN shows up as a NaN mean): stats must not
    hide a diverging run.
    """
    elems = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=torch.float64)
    elems = elems.flatten().to(dtype=torch.float64)
    if elems.numel() == 0:
        return value
    moments = torch.stack([elems.new_tensor(float(elems.numel())), elems.sum(), elems.square().sum()])
    with _lock:
        if name in _moments:
            _moments[name] = _moments[name] + moments.to(_moments[name].device)
        else:
            _moments[name] = moments
    return value


def _all_names(local: dict) -> list[str]:
    """Union of the statistic names of all ranks, sorted, so every rank reduces the same tensor."""
    names = set(local)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, sorted(names))
        for other in gathered:
            names.update(other)
    return sorted(names)


def collect(device: torch.device | str = 'cpu') -> dict[str, dict[str, float]]:
    """``{name: {'num', 'mean', 'std'}}`` over all ranks since the last call; resets the moments.

    Must be called by every rank at the same time in a distributed run (it all-reduces on
    ``device``: a CUDA device for NCCL, the CPU for gloo).
    """
    with _lock:
        local = dict(_moments)
        _moments.clear()
    names = _all_names(local)
    if not names:
        return {}
    zeros = torch.zeros(3, dtype=torch.float64, device=device)
    stacked = torch.stack([local[name].to(device) if name in local else zeros for name in names])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(stacked)
        stacked = stacked.cpu()
    result = {}
    for name, (count, total, total_sq) in zip(names, stacked.tolist()):
        if count == 0:
            continue
        mean = total / count
        variance = max(total_sq / count - mean * mean, 0.0) if math.isfinite(mean) else float('nan')
        result[name] = {'num': int(count), 'mean': mean, 'std': math.sqrt(variance)}
    return result


def reset() -> None:
    """Forget everything reported so far (start of a run)."""
    with _lock:
        _moments.clear()
