"""Option types shared by every entry script, and the same checks for configs built in Python.

* :class:`FiniteFloat` — a float range that also refuses ``nan`` and ``±inf`` (click's own
  ``FloatRange`` lets NaN through: every comparison with NaN is False);
* :data:`SEED` — the seeds NumPy accepts, 0 … 2³²−1; ``MAX_*`` — the upper bounds of the size options;
* :class:`Device` / :func:`parse_device` — ``cpu``, ``cuda`` or ``cuda:N``, checked against this
  machine before anything runs;
* :func:`check_option` — a value that did not come through click (a config built in Python, a
  ``training_options.json`` read back) checked with the option's own type;
* :func:`check_stored_option` — the same for a value read back from JSON, with its JSON type checked.
"""

from __future__ import annotations

import math
import re
from typing import Any

import click

from .util import UserError


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` that refuses ``nan``, ``inf`` and ``-inf``; without bounds, any finite float."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = 'float' if self.min is None and self.max is None else 'float range'   # the --help metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f'{value!r} is not a finite number.', param, ctx)
        return number

    def _describe_range(self) -> str:
        # click prints the range in --help; an unbounded one has nothing to say.
        return '' if self.min is None and self.max is None else super()._describe_range()


SEED = click.IntRange(0, 2 ** 32 - 1)

# Upper bounds of the size options, far beyond any protocol and far below a run that never ends or
# an allocation that cannot succeed. The CLIs and the stored configs they check read them here.
MAX_BATCH = 65536        # samples per optimiser step (segmentation, MINE)
MAX_COUNT = 10_000_000   # samples to generate (5 PNGs each; the paper's: 50 000), iterations, steps
MAX_SIDE = 4096          # image sides, UNet widths
MAX_WORKERS = 256        # data-loading processes


def parse_device(name: str | None) -> str:
    """``'cpu'``, ``'cuda'`` or ``'cuda:N'`` for ``name``, checked against this machine's CUDA devices.

    ``None`` means ``'cuda'`` when a CUDA device is available, else ``'cpu'``. Raises
    :class:`UserError` for another string, and for a CUDA device this machine does not have.
    """
    import torch  # imported here: dnnlib itself does not need torch
    if name is None:
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    match = re.fullmatch(r'(cpu|cuda)(?::(\d+))?', str(name).strip().lower())
    if match is None or (match[1] == 'cpu' and match[2] is not None):
        raise UserError(f'unknown device {name!r}; use cpu, cuda or cuda:N')
    if match[1] == 'cpu':
        return 'cpu'
    if not torch.cuda.is_available():
        raise UserError(f'device {name!r}: this machine has no CUDA device (or torch was built without CUDA); '
                        f'use --device=cpu')
    count = torch.cuda.device_count()
    if match[2] is not None and int(match[2]) >= count:
        raise UserError(f'device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}')
    return match[0]


class Device(click.ParamType):
    """The ``--device`` option: :func:`parse_device` at parse time, so a wrong device stops the
    command before it creates anything."""
    name = 'device'

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return parse_device(value)
        except UserError as err:
            self.fail(str(err), param, ctx)


def check_option(name: str, value: Any, param_type: click.ParamType) -> Any:
    """``value`` converted by ``param_type`` as click converts ``--name``; a :class:`UserError`
    naming the option when click would refuse it."""
    try:
        return param_type.convert(value, None, None)
    except click.BadParameter as err:
        raise UserError(f'--{name.replace("_", "-")}={value!r}: {err.message}') from None


def check_stored_option(flag: str, value: Any, param_type: click.ParamType) -> Any:
    """``value`` read back from a JSON file for the option ``flag`` (``--seed``), checked strictly:
    the JSON type must be the option's (an int for an integer option, a number for a float, a
    string for a text or choice, true/false for a flag), then its range as :func:`check_option`.

    Click would turn ``"16"`` into 16 and ``7.5`` into 7; a hand-edited file should not pass that
    way. Returns the converted value; raises :class:`UserError` naming the option otherwise.
    """
    if value is None:
        return None
    if isinstance(param_type, click.types.BoolParamType):
        expected, ok = 'true or false', isinstance(value, bool)
    elif isinstance(param_type, click.types.IntParamType):
        expected, ok = 'an integer', isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(param_type, click.types.FloatParamType):
        expected, ok = 'a number', isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(param_type, (click.types.StringParamType, click.Choice)):
        expected, ok = 'a string', isinstance(value, str)
    else:
        expected, ok = '', True
    if not ok:
        raise UserError(f'{flag}={value!r}: not {expected}')
    return check_option(flag.lstrip('-'), value, param_type)
