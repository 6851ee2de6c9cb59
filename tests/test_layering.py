"""Imports go one way: scripts → metrics → training → torch_utils / dnnlib (every import statement,
module level or inside a function, read with ast; nothing is imported)."""

import ast
import os

import pytest

import dnnlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The packages each package must never import.
FORBIDDEN = {'dnnlib': ('torch_utils', 'training', 'metrics'), 'torch_utils': ('training', 'metrics'),
             'training': ('metrics',)}

# The upward imports that remain, each with its reason; a new one fails the test.
ALLOWED = {
    # The training loop calls the metrics at each snapshot, as StyleGAN3's does. (What the training
    # command needs from metrics/ the scripts hand to training.train_cli: metrics/training_hooks.py.)
    ('training/training_loop.py', 'metrics.metric_main'),
}


def imported_modules(path: str) -> set[str]:
    """The ``package.module`` of every absolute import of the file (``from metrics.generate import x``,
    ``from metrics import generate`` and ``import metrics.generate`` all give ``metrics.generate``)."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f'{node.module}.{alias.name}' for alias in node.names]
    return {'.'.join(name.split('.')[:2]) for name in names}


def upward_imports() -> set[tuple[str, str]]:
    """(file, module) for each import of a package that :data:`FORBIDDEN` keeps it from."""
    found = set()
    for package, forbidden in FORBIDDEN.items():
        for parent, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = [d for d in dirs if not d.startswith(('.', '__'))]
            for name in (f for f in files if f.endswith('.py')):
                path = os.path.join(parent, name)
                relative = os.path.relpath(path, ROOT).replace(os.sep, '/')
                found.update((relative, module) for module in imported_modules(path)
                             if module.split('.')[0] in forbidden)
    return found


def test_no_upward_imports_but_the_listed_ones():
    new = sorted(upward_imports() - ALLOWED)
    assert not new, 'upward imports (a lower package reaching up): ' + ', '.join(f'{p} imports {m}' for p, m in new)


def test_the_allowed_upward_imports_still_exist():
    """An exception no longer needed is removed from ALLOWED, so the list stays the truth."""
    assert sorted(ALLOWED - upward_imports()) == []


def test_the_import_reader_sees_imports_inside_functions(tmp_path):
    path = tmp_path / 'm.py'
    path.write_text('import os\nfrom . import x\n\ndef f():\n    from metrics import generate\n'
                    '    import training.networks as n\n    from metrics.auto_test import check_sizes_fit\n')
    assert imported_modules(str(path)) == {'os', 'metrics.generate', 'training.networks', 'metrics.auto_test'}


def test_the_training_command_asks_for_the_metrics_functions_it_does_not_import(tmp_path):
    """train_cli takes metric names, detector and auto-test checks as hooks; without them it trains
    what needs none and refuses, as a caller's mistake, what needs them."""
    from training import train_cli
    c = train_cli.build_training_config(outdir=str(tmp_path), data='synthetic', cfg='cpu', metrics='none')
    assert c.metrics == [] and 'hooks' not in c.options
    with pytest.raises(ValueError, match=r'--metrics=fid10k_full needs the metrics package: '
                                         r'pass hooks=metrics\.training_hooks\.HOOKS'):
        train_cli.build_training_config(outdir=str(tmp_path), data='synthetic', cfg='cpu', metrics='fid10k_full')
    with pytest.raises(ValueError, match='the auto test needs the metrics package'):
        train_cli.check_training_memory(dnnlib.EasyDict(c, auto_test=True))
