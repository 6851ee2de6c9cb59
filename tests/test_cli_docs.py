"""Each command's --help is kept in docs/cli/ and must match, so the docs cannot drift.

After changing an option, refresh the docs with:  python tests/test_cli_docs.py --update
"""

import importlib.util
import os
import sys

import pytest
from click.testing import CliRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs', 'cli')

# Command name as the user types it → (top-level script or package module, click command attribute).
COMMANDS = {
    'train_ILS_64.py': ('train_ILS_64.py', 'main'),
    'train_ILS_128.py': ('train_ILS_128.py', 'main'),
    'generate_segmentation_samples.py': ('generate_segmentation_samples.py', 'main'),
    'eval_segmentation.py': ('eval_segmentation.py', 'main'),
    'eval_segmentation_eval128.py': ('eval_segmentation_eval128.py', 'main'),
    'eval_MI_MINE.py': ('eval_MI_MINE.py', 'main'),
    'python -m training.dataset': ('training.dataset', 'main'),
    'python -m metrics.auto_test': ('metrics.auto_test', 'main'),
    'python -m metrics.video': ('metrics.video', 'main'),
    'python -m torch_utils.legacy convert': ('training.legacy_convert', 'convert_command'),
}


def doc_path(name: str) -> str:
    return os.path.join(DOCS, name.replace('python -m ', '').replace(' ', '_') + '.txt')


def load_command(name: str):
    """The click command of ``name`` (a key of :data:`COMMANDS`)."""
    source, attr = COMMANDS[name]
    if source.endswith('.py'):
        module_name = '_cli_' + source.removesuffix('.py')
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(ROOT, source))
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(source)
    return getattr(module, attr)


def help_text(name: str) -> str:
    result = CliRunner().invoke(load_command(name), ['--help'], prog_name=name, terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_help_matches_docs(name):
    with open(doc_path(name), encoding='utf-8') as f:
        documented = f.read()
    assert help_text(name) == documented, f'{doc_path(name)} is out of date: run python tests/test_cli_docs.py --update'


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_help_explains_every_option(name):
    """No option without a help text: every option line carries words after its flags."""
    text = help_text(name)
    options = text.split('Options:', 1)[1].splitlines()
    for line in options:
        stripped = line.strip()
        if stripped.startswith('-') and '  ' not in stripped:
            # A flag alone on its line must be followed by an indented description line.
            following = options[options.index(line) + 1] if options.index(line) + 1 < len(options) else ''
            assert following.startswith(' ' * 8) and following.strip(), f'{name}: {stripped} has no help'


if __name__ == '__main__' and '--update' in sys.argv:
    sys.path.insert(0, ROOT)
    os.makedirs(DOCS, exist_ok=True)
    for command in COMMANDS:
        with open(doc_path(command), 'w', encoding='utf-8') as f:
            f.write(help_text(command))
        print('wrote', doc_path(command))
