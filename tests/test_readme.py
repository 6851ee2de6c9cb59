"""README.md stays true: its commands use options that exist, and the docs' links lead somewhere.

The options are read from docs/cli/ (itself checked against each command's --help by
test_cli_docs.py), so a renamed or removed option fails here until README follows.
"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, 'docs', 'cli')


def read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
        return f.read()


def readme_commands() -> list[str]:
    """Every line of README's ```bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', read('README.md'), re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            line = line.split('#', 1)[0].strip()
            if line:
                commands.append(line)
    return commands


def cli_page(command: str) -> str | None:
    """The docs/cli page of a README command line, or None for a command that has none (make, sha256sum)."""
    words = command.split()
    if words[0] == 'torchrun':
        words = ['python'] + [w for w in words if w.endswith('.py')][:1]
    if words[0] != 'python':
        return None
    if words[1] == '-m':
        name = words[2] + ('_' + words[3] if len(words) > 3 and not words[3].startswith('-')
                           and words[2] == 'torch_utils.legacy' else '')
    else:
        name = words[1]
    return os.path.join(CLI, name + '.txt')


def test_readme_exists_and_is_short():
    assert len(read('README.md').splitlines()) <= 270


def test_readme_has_commands_to_check():
    pages = [cli_page(c) for c in readme_commands()]
    assert sum(p is not None for p in pages) >= 8


@pytest.mark.parametrize('command', readme_commands())
def test_every_option_of_a_readme_command_exists(command):
    page = cli_page(command)
    if command.startswith('make '):
        targets = re.findall(r'^([\w-]+):', read('Makefile'), re.M)
        assert all(t in targets for t in command.split()[1:] if '=' not in t), command
        return
    if page is None:
        return
    assert os.path.exists(page), f'README runs {command!r}, which has no page in docs/cli/'
    with open(page, encoding='utf-8') as f:
        options = set(re.findall(r'(?<![\w-])(--[\w-]+)', f.read().split('Options:', 1)[1]))
    for option in re.findall(r'(?<![\w-])(--[\w-]+)', command):
        if command.startswith('torchrun') and option in ('--nproc_per_node', '--nnodes', '--node_rank',
                                                         '--master_addr', '--master_port'):
            continue
        assert option in options, f'README: {command!r} uses {option}, which {os.path.basename(page)} lacks'


def markdown_files() -> list[str]:
    found = ['README.md']
    for folder in ('docs', 'experiments'):
        found += [os.path.join(folder, f) for f in sorted(os.listdir(os.path.join(ROOT, folder))) if f.endswith('.md')]
    return found


@pytest.mark.parametrize('path', markdown_files())
def test_relative_links_lead_to_files(path):
    text = read(path)
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        if re.match(r'[a-z]+://', target) or target.startswith('#'):
            continue
        resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(path), target.split('#')[0]))
        assert os.path.exists(resolved), f'{path}: the link {target} leads nowhere'
