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

from .util import UserError, safe_line


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
MAX_WORKERS = 256        # data-loading processes, training processes
MAX_WEIGHT = 1_000_000   # loss weights (--gamma, --pl-weight); learning rates stay at or below 1


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


# ----------------------------------------------------------------------------------------------
# The original's BOOL options. Its scripts declared --mirror, --fp32, --nhwc, --nobench,
# --allow-tf32, --test-only, --test-all as ``type=bool`` options (``--mirror=1``); here they
# are on/off flags (``--mirror``). A command of class FlagCommand takes both spellings.

FLAG_VALUES_EPILOG = 'On/off flags also take a value, as in the original: --FLAG=1|0, true|false, yes|no.'


class FlagValueError(click.UsageError):
    """A wrong value for an on/off flag: one line, ``error: ...``, exit 2 (no usage block)."""

    def show(self, file: Any = None) -> None:
        click.echo(f'error: {safe_line(self.format_message())}', file=file, err=True)


class FlagCommand(click.Command):
    """A click command whose on/off flags also take a value, as the original's ``BOOL`` options:
    ``--mirror=1``, ``--fp32=True``, ``--test-only=yes``; ``--nhwc=0`` reads as ``--nchw``. A false
    value for a flag without an off spelling leaves it off and counts as given on the command line
    (``--resume`` keeps a stored option only where none was given). Without positional
    arguments, ``--mirror 1`` (a space, which the original's click also read) works too.

    Only arguments before ``--`` are read this way; the values are click's own BOOL words."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault('epilog', FLAG_VALUES_EPILOG)
        super().__init__(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags: dict[str, tuple[click.Option, bool]] = {}  # spelling -> (option, the value it stands for)
        for param in self.get_params(ctx):
            if isinstance(param, click.Option) and param.is_bool_flag:
                flags.update({opt: (param, True) for opt in param.opts if opt.startswith('--')})
                flags.update({opt: (param, False) for opt in param.secondary_opts if opt.startswith('--')})
        space_values = not any(isinstance(param, click.Argument) for param in self.get_params(ctx))
        rewritten: list[str] = []
        given_off: dict[str, click.Option] = {}  # flags set false by a value, without an off spelling
        rest = list(args)
        while rest:
            arg = rest.pop(0)
            if arg == '--':
                rewritten += [arg, *rest]
                break
            spelling, has_value, text = arg.partition('=')
            if not has_value and spelling in flags and space_values and rest and _bool_word(rest[0]) is not None:
                has_value, text = '=', rest.pop(0)
            if spelling not in flags:
                rewritten.append(arg)
                continue
            param, meaning = flags[spelling]
            value = meaning
            if has_value:
                word = _bool_word(text)
                if word is None:
                    raise FlagValueError(f'{spelling}={text}: not a boolean; write {spelling} alone, or '
                                         f'{spelling}=1|0 (true|false, yes|no)', ctx=ctx)
                value = word if meaning else not word
            given_off.pop(param.name, None)
            if value:
                rewritten.append(param.opts[0])
            elif param.secondary_opts:
                rewritten.append(param.secondary_opts[0])
            else:
                given_off[param.name] = param
        remaining = super().parse_args(ctx, rewritten)
        for name in given_off:
            ctx.params[name] = False
            ctx.set_parameter_source(name, click.core.ParameterSource.COMMANDLINE)
        return remaining


def _bool_word(text: str) -> bool | None:
    """The value of one of click's BOOL words (1/0, true/false, t/f, yes/no, y/n, on/off), else None."""
    try:
        return click.BOOL.convert(text, None, None)
    except click.BadParameter:
        return None
