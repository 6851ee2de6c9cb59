"""dnnlib: EasyDict, construct-by-name, open_url with its cache and offline error, run dirs."""

import os
import subprocess
import sys
import textwrap

import pytest

import dnnlib
from dnnlib import util


def test_easydict_attribute_access():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d == {'a': 1, 'b': 2} and d.a == 1
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        d.missing


def test_construct_class_by_name_and_full_name_round_trip():
    obj = dnnlib.construct_class_by_name(class_name='collections.OrderedDict', a=1)
    assert dict(obj) == {'a': 1}
    assert dnnlib.get_obj_by_name(dnnlib.full_name(util.EasyDict)) is util.EasyDict
    with pytest.raises(ValueError, match='cannot find'):
        dnnlib.get_obj_by_name('collections.NoSuchThing')


def test_open_url_local_file_and_missing_file(tmp_path):
    path = tmp_path / 'x.bin'
    path.write_bytes(b'abc')
    with dnnlib.open_url(str(path)) as f:
        assert f.read() == b'abc'
    with pytest.raises(dnnlib.UserError, match='file not found: .*nope.bin'):
        dnnlib.open_url(str(tmp_path / 'nope.bin'))


def test_open_url_reads_the_cache_without_network(tmp_path):
    url = 'https://example.invalid/models/detector.pt'
    cached = util.cached_url_path(url, cache=str(tmp_path))
    os.makedirs(os.path.dirname(cached))
    with open(cached, 'wb') as f:
        f.write(b'cached bytes')
    with dnnlib.open_url(url, cache=str(tmp_path)) as f:
        assert f.read() == b'cached bytes'


def test_open_url_records_the_sha256_of_its_own_downloads_only(tmp_path, monkeypatch):
    import hashlib
    import requests

    class FakeResponse:   # the network, as requests.get streams it
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def raise_for_status(self):
            pass

        def iter_content(self, chunk_size):
            yield b'downloaded '
            yield b'bytes'

    monkeypatch.setattr(requests, 'get', lambda url, timeout, stream: FakeResponse())
    url = 'https://example.invalid/models/detector.pt'
    assert util.download_sha256(url, cache=str(tmp_path)) is None
    with dnnlib.open_url(url, cache=str(tmp_path), verbose=False) as f:
        assert f.read() == b'downloaded bytes'
    assert util.download_sha256(url, cache=str(tmp_path)) == hashlib.sha256(b'downloaded bytes').hexdigest()
    # A file copied into the cache by hand has no record; nor does a record that is not a digest count.
    other = 'https://example.invalid/models/other.pt'
    with open(util.cached_url_path(other, cache=str(tmp_path)), 'wb') as f:
        f.write(b'by hand')
    assert util.download_sha256(other, cache=str(tmp_path)) is None
    with open(util.cached_url_path(other, cache=str(tmp_path)) + util.DOWNLOAD_DIGEST_SUFFIX, 'w') as f:
        f.write('not a digest')
    assert util.download_sha256(other, cache=str(tmp_path)) is None


def test_open_url_offline_names_the_cache_path(tmp_path):
    url = 'http://127.0.0.1:9/detector.pt'  # the discard port: connection refused at once
    with pytest.raises(dnnlib.UserError) as info:
        dnnlib.open_url(url, cache=str(tmp_path), num_attempts=1, timeout=2, verbose=False)
    message = str(info.value)
    assert url in message and util.cached_url_path(url, cache=str(tmp_path)) in message
    assert not os.path.exists(util.cached_url_path(url, cache=str(tmp_path)))


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('ILSGAN_CACHE', str(tmp_path))
    assert dnnlib.cache_dir() == str(tmp_path)
    monkeypatch.delenv('ILSGAN_CACHE')
    assert dnnlib.cache_dir().endswith(os.path.join('.cache', 'ilsgan'))


def test_next_run_dir_counts_up(tmp_path):
    assert dnnlib.next_run_dir(str(tmp_path / 'new'), 'a') == str(tmp_path / 'new' / '00000-a')
    (tmp_path / '00003-x').mkdir()
    (tmp_path / 'notes').mkdir()
    assert dnnlib.next_run_dir(str(tmp_path), 'b') == str(tmp_path / '00004-b')


def test_write_bytes_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / 'f.bin'
    dnnlib.write_bytes_atomic(str(path), b'old')

    def broken_replace(src, dst):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'replace', broken_replace)
    with pytest.raises(OSError):
        dnnlib.write_bytes_atomic(str(path), b'new')
    monkeypatch.undo()
    assert path.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['f.bin']  # no temporary file left behind


def test_report_user_errors_prints_one_line_and_exits_2(tmp_path):
    script = tmp_path / 's.py'
    script.write_text(textwrap.dedent('''
        import dnnlib

        @dnnlib.report_user_errors
        def main():
            raise dnnlib.UserError('dataset root /x not found; pass --data-root')

        main()
    '''))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=root))
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: dataset root /x not found; pass --data-root'


def test_format_time():
    assert dnnlib.format_time(5) == '5s'
    assert dnnlib.format_time(185) == '3m 05s'
    assert dnnlib.format_time(7260) == '2h 01m 00s'
    assert dnnlib.format_time(93780) == '1d 02h 03m'


def test_naming_file_names_the_file_of_an_os_error_that_names_none():
    import errno
    with pytest.raises(OSError) as info:
        with dnnlib.naming_file('/runs/00000/stats.jsonl'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))   # what a failed write() raises
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, '/runs/00000/stats.jsonl')
    assert dnnlib.os_error_message(info.value, hint=False) == 'No space left on device: /runs/00000/stats.jsonl'
    with pytest.raises(OSError) as info:
        with dnnlib.naming_file('/runs/00000/stats.jsonl'):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), '/elsewhere')
    assert info.value.filename == '/elsewhere'   # an error that names its file keeps it


def test_read_cache_returns_none_for_a_missing_or_unreadable_file_and_says_why(tmp_path, capsys):
    import numpy as np
    path = tmp_path / 'stats.npz'
    read = lambda p: dict(np.load(p))   # noqa: E731
    assert dnnlib.read_cache(str(path), read) is None and capsys.readouterr().err == ''
    np.savez(path, x=np.arange(3))
    assert dnnlib.read_cache(str(path), read)['x'].tolist() == [0, 1, 2]
    path.write_bytes(b'')
    assert dnnlib.read_cache(str(path), read) is None
    assert capsys.readouterr().err == f'warning: the cache file {path} is unreadable (EOFError: No data left in file); it is made again\n'
