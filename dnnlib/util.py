"""Small utilities with no torch state: EasyDict, construct-by-name, URL/cache opening, run dirs.

Everything here is plain Python so that it can be imported (and tested) without PyTorch.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import io
import json
import math
import os
import re
import sys
import tempfile
import urllib.parse
import zipfile
import zlib
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

T = TypeVar('T')


class UserError(Exception):
    """An error caused by the user's input (a path, an option, a file).

    Its message is one line that names the thing and says what to do. Entry scripts catch it,
    print ``error: <message>`` and exit with a non-zero code instead of showing a traceback:
    2, or 1 when it was raised from an OSError (``raise UserError(...) from err``: the cause is
    the machine's state, a full disk or a read-only folder, not the user's input).
    """


class EasyDict(dict):
    """A dict whose keys can also be read and written as attributes (``cfg.batch``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


# ----------------------------------------------------------------------------------------------
# Construct by dotted name.

def get_obj_by_name(name: str) -> Any:
    """Return the object named ``'package.module.attr'`` (the longest importable module prefix)."""
    parts = name.split('.')
    for split in range(len(parts) - 1, 0, -1):
        module_name = '.'.join(parts[:split])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            # Only swallow "this prefix is not a module"; a missing dependency inside it must surface.
            if err.name is not None and module_name.startswith(err.name):
                continue
            raise
        obj = module
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    raise ValueError(f'cannot find an object named "{name}"')


def construct_class_by_name(*args: Any, class_name: str, **kwargs: Any) -> Any:
    """Call the class (or function) named ``class_name`` with the given arguments."""
    cls = get_obj_by_name(class_name)
    if not callable(cls):
        raise ValueError(f'"{class_name}" is not callable')
    return cls(*args, **kwargs)


def full_name(obj: Any) -> str:
    """``'module.QualName'`` of a class or function, the inverse of :func:`get_obj_by_name`."""
    return f'{obj.__module__}.{obj.__qualname__}'


# ----------------------------------------------------------------------------------------------
# URLs and the download cache.

def cache_dir() -> str:
    """Where downloads are cached: ``$ILSGAN_CACHE``, else ``~/.cache/ilsgan``."""
    return os.environ.get('ILSGAN_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'ilsgan')


def is_url(path_or_url: str) -> bool:
    return urllib.parse.urlparse(str(path_or_url)).scheme in ('http', 'https')


def cached_url_path(url: str, cache: str | None = None) -> str:
    """The file in the cache that holds (or will hold) the contents of ``url``."""
    cache = cache or cache_dir()
    digest = hashlib.md5(url.encode('utf-8')).hexdigest()
    basename = re.sub(r'[^0-9a-zA-Z._-]+', '_', os.path.basename(urllib.parse.urlparse(url).path)) or 'file'
    return os.path.join(cache, 'downloads', f'{digest}_{basename}')


def open_url(path_or_url: str, cache: str | None = None, num_attempts: int = 3, timeout: float = 30.0,
             verbose: bool = True) -> BinaryIO:
    """Open a local file or an http(s) URL for binary reading.

    URLs are downloaded once into the cache (:func:`cache_dir`) and read from there afterwards.
    The download is written to a temporary file and renamed, so a broken transfer never leaves a
    truncated cache entry, and its SHA-256 is recorded beside it (:func:`download_sha256`).
    Raises :class:`UserError` when a local file is missing, or when the URL is not cached and
    cannot be fetched (e.g. offline): the message says where to put the file by hand.
    """
    path_or_url = str(path_or_url)
    if not is_url(path_or_url):
        if path_or_url.startswith('file://'):
            path_or_url = urllib.parse.urlparse(path_or_url).path
        if not os.path.isfile(path_or_url):
            raise UserError(f'file not found: {path_or_url}')
        return open(path_or_url, 'rb')

    target = cached_url_path(path_or_url, cache)
    if os.path.isfile(target):
        return open(target, 'rb')

    import requests  # imported lazily: only downloads need it

    last_error: Exception | None = None
    for _attempt in range(num_attempts):
        try:
            if verbose:
                print(f'Downloading {path_or_url} ...', flush=True)
            with requests.get(path_or_url, timeout=timeout, stream=True) as response:
                response.raise_for_status()
                data = io.BytesIO()
                for chunk in response.iter_content(chunk_size=1 << 20):
                    data.write(chunk)
            break
        except Exception as err:  # network errors of every kind: retry, then explain
            last_error = err
    else:
        raise UserError(f'cannot download {path_or_url} ({type(last_error).__name__}); if this machine is '
                        f'offline, download it elsewhere and copy it to {target}, or pass a local path instead')
    with writing_cache(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # The digest first: a cached file that this function fetched never lacks its record.
        write_bytes_atomic(target + DOWNLOAD_DIGEST_SUFFIX, hashlib.sha256(data.getvalue()).hexdigest().encode())
        write_bytes_atomic(target, data.getvalue())
    return open(target, 'rb')


DOWNLOAD_DIGEST_SUFFIX = '.sha256'


def download_sha256(url: str, cache: str | None = None) -> str | None:
    """The SHA-256 (hex) that :func:`open_url` recorded beside its download of ``url``, or None
    when it never downloaded it: a file copied into the cache by hand has no record, so a caller
    can tell the file it fetched itself from one it was handed."""
    try:
        with open(cached_url_path(url, cache) + DOWNLOAD_DIGEST_SUFFIX, 'rb') as f:
            record = f.read(65).decode('ascii', 'replace').strip()
    except OSError:
        return None
    return record if re.fullmatch(r'[0-9a-f]{64}', record) else None


TEMP_PREFIX = '.tmp-'  # every temporary file this project writes starts so; never a result


def check_regular_file(path: str) -> bool:
    """True when ``path`` is a regular file (a symlink followed), False when nothing is there; a
    :class:`UserError` naming what is there instead: a folder, a FIFO (opening it would wait for a
    writer forever), a device (``/dev/zero`` never ends) or a socket. Use it where a file the user
    may have replaced is about to be opened."""
    import stat
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if stat.S_ISREG(mode):
        return True
    kind = ('a folder' if stat.S_ISDIR(mode) else 'a FIFO (named pipe)' if stat.S_ISFIFO(mode)
            else 'a device' if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 'a socket' if stat.S_ISSOCK(mode)
            else 'not a regular file')
    raise UserError(f'{path} is {kind}, not a file; replace it with the file itself')

# What json.load / json.loads raise for a damaged file: JSONDecodeError (empty, cut short, overwritten)
# and UnicodeDecodeError (not UTF-8) are ValueErrors; RecursionError for nesting too deep ('[[[[…').
JSON_READ_ERRORS = (ValueError, RecursionError)


def is_temp_file(name: str) -> bool:
    """Whether ``name`` (a file name or path) is a temporary file of an unfinished write."""
    return os.path.basename(name).startswith(TEMP_PREFIX)


def write_bytes_atomic(path: str, data: bytes, overwrite: bool = True, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    With ``overwrite=False`` an existing ``path`` is never replaced: FileExistsError naming it.
    ``fsync=False`` skips the flush to disk (many small files that a re-run can rewrite). On any
    failure the temporary file is removed, and an OSError names ``path``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=os.path.basename(path))
    except OSError as err:   # name the file the user asked for, not the temporary name nobody will see
        raise OSError(err.errno, err.strerror, path) from err
    try:
        with naming_file(path), os.fdopen(fd, 'wb') as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _rename_without_replacing(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def naming_file(path: str) -> Iterator[None]:
    """Re-raise an OSError that names no file (a failed ``write()`` or ``close()`` on a full disk)
    as the same error naming ``path``, so that the user is told which file could not be written."""
    try:
        yield
    except OSError as err:
        if err.errno is not None and err.filename is None:
            raise OSError(err.errno, err.strerror, path) from err
        raise


def _rename_without_replacing(tmp: str, path: str) -> None:
    """Give ``tmp`` the name ``path`` unless that name exists (FileExistsError naming it)."""
    exists = FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
    try:
        os.link(tmp, path)  # atomic, and fails on an existing name: no window to replace it
    except FileExistsError:
        raise exists from None
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(path):
            raise exists from None
        os.rename(tmp, path)
        return
    os.remove(tmp)


# ----------------------------------------------------------------------------------------------
# Cache files: ours to read back, regenerate, and write under $ILSGAN_CACHE.

# What reading a truncated, empty or overwritten .npz (a zip archive) can raise.
CACHE_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def read_cache(path: str, read: Callable[[str], T]) -> T | None:
    """``read(path)`` for a cache file this program wrote; None when it is missing, and None with
    one warning line when it cannot be read (truncated, empty, damaged), so that the caller
    computes the content again and replaces the file."""
    if not check_regular_file(path):
        return None
    try:
        return read(path)
    except CACHE_READ_ERRORS as err:
        reason = str(err).splitlines()[0] if str(err) else 'empty or truncated'
        warn(f'the cache file {path} is unreadable ({type(err).__name__}: {reason}); it is made again')
        return None


@contextlib.contextmanager
def writing_cache(path: str) -> Iterator[None]:
    """An OSError while writing the cache file ``path`` becomes one line naming ``$ILSGAN_CACHE`` (exit 1)."""
    try:
        with naming_file(path):
            yield
    except OSError as err:
        raise UserError(f'cannot write the cache file {path}: {os_error_message(err, hint=False)}; point '
                        f'$ILSGAN_CACHE at a writable folder with free space (now {cache_dir()})') from err


# ----------------------------------------------------------------------------------------------
# Run directories.

def next_run_dir(outdir: str, desc: str) -> str:
    """``<outdir>/<NNNNN>-<desc>`` with NNNNN one more than the largest numbered entry of ``outdir``."""
    ids = []
    if os.path.isdir(outdir):
        for name in os.listdir(outdir):
            match = re.match(r'^(\d+)', name)
            if match:
                ids.append(int(match.group(1)))
    run_id = max(ids, default=-1) + 1
    return os.path.join(outdir, f'{run_id:05d}-{desc}')


def format_time(seconds: float) -> str:
    """Human-readable duration: ``'45s'``, ``'3m 05s'``, ``'2h 01m 00s'``, ``'1d 02h 03m'``."""
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 3600:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 86400:
        return f'{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m'


# ----------------------------------------------------------------------------------------------
# Lines safe to print, JSON files that are valid.

LINE_VALUE_CHARS = 240   # a longer run of non-blank characters in a message (a value) is cut in its middle
LINE_CHARS = 2000        # and a whole message line after this many characters


def safe_line(text: Any) -> str:
    """``text`` as one line that is safe to print to a terminal or a log.

    A file name may hold a newline (which would cut the line and let the name forge a second
    one), terminal escapes (ESC ...), bidi overrides or undecodable bytes (surrogates): every
    character that is not printable is written as ``repr`` writes it (``\\n``, ``\\x1b``,
    ``\\u202e``, ``\\udcff``). A run of more than LINE_VALUE_CHARS non-blank characters (a
    10 MB field of a hand-edited file) keeps its first 120 and last 100 characters, and the whole
    line at most LINE_CHARS, each cut saying how many characters it removed.
    """
    text = ''.join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))

    def cut(match: re.Match) -> str:
        value = match[0]
        return f'{value[:120]}…[{len(value) - 220} characters cut]…{value[-100:]}'

    text = re.sub(r'\S{%d,}' % (LINE_VALUE_CHARS + 1), cut, text)
    if len(text) > LINE_CHARS:
        text = f'{text[:LINE_CHARS - 60]}…[{len(text) - LINE_CHARS + 60} characters cut]'
    return text


def warn(message: str) -> None:
    """Print ``warning: <message>`` to stderr as one safe line (:func:`safe_line`)."""
    print(f'warning: {safe_line(message)}', file=sys.stderr, flush=True)


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (Python or NumPy) in its dicts, lists and tuples
    replaced by None: JSON has no NaN, and ``null`` is the value every reader understands."""
    if isinstance(obj, dict):
        return {key: finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(value) for value in obj]
    if isinstance(obj, float) or type(obj).__module__ == 'numpy' and hasattr(obj, 'dtype') and obj.dtype.kind == 'f':
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def json_text(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``obj`` that is always valid JSON: NaN and ±inf become ``null``
    (:func:`finite_or_none`) and ``allow_nan=False`` makes any other way to write one an error.
    Every JSON file and JSON line this project writes goes through here."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


def user_error_message(err: BaseException) -> str:
    """The one line to show for ``err``: its own message, or, when another process re-raised it
    with that process's traceback (a DataLoader worker, a spawned rank), the original's last line."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and 'Traceback' in str(err):
        # The message follows the traceback's last "<module>.<Class>: " (it may span lines: a file
        # name holding a newline); keep the message, whole.
        starts = list(re.finditer(r'^(?:(?:\w+\.)+\w+|\w+(?:Error|Exception)): ', str(err), re.M))
        return str(err)[starts[-1].end():].strip() if starts else lines[-1]
    if isinstance(err, UserError) and lines:
        return str(err).strip()   # whole: a newline in a file name must not cut it (safe_line escapes it)
    return lines[0] if lines else type(err).__name__


# What to do about the operating-system errors a user can cause and fix. After a full disk each
# command adds its own way to go on (``disk_full_hint`` of report_user_errors).
_FREE_SPACE = 'free some space (or choose another output folder)'
_OS_ERROR_HINTS = {
    errno.ENOSPC: _FREE_SPACE,
    errno.EDQUOT: _FREE_SPACE,
    errno.EACCES: 'check the permissions, or choose another output folder',
    errno.EPERM: 'check the permissions, or choose another output folder',
    errno.EROFS: 'the file system or folder is read-only; make it writable (a resumed set completes where it stopped), or choose another output folder',
    errno.ENOTDIR: 'part of the path is a file, not a folder; choose another output folder',
    errno.EEXIST: 'it is never overwritten; move it away, or choose another output folder',
}


def os_error_message(err: OSError, hint: bool = True, disk_full_hint: str | None = None) -> str:
    """``"<what failed>: <file>; <what to do>"`` for an OSError raised while reading or writing
    (without the last part when ``hint`` is False: the caller says what to do). ``disk_full_hint``
    is the command's way to go on after a full disk, e.g. ``'a training run continues with --resume'``."""
    where = f': {err.filename}' if err.filename else ''
    what = err.strerror or user_error_message(err)
    advice = _OS_ERROR_HINTS.get(err.errno) if hint else None
    if advice and disk_full_hint and err.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = f'{advice}; {disk_full_hint}'
    return f'{what}{where}' + (f'; {advice}' if advice else '')


# OS errors about a place the user chose (an output folder that is read-only, a file, not theirs;
# an input that is missing): input, exit 2. Others (a full disk, an I/O error) are the machine's: 1.
_INPUT_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                           errno.ENOENT, errno.ELOOP, errno.ENAMETOOLONG})


def exit_code(err: BaseException) -> int:
    """1 when ``err`` is, or was raised from, an OSError of the machine's state (a full disk, an I/O
    error); 2 otherwise: input, an output folder that cannot be written included (read-only, a file
    in the path, no permission)."""
    while err is not None:
        if isinstance(err, OSError):
            return 2 if err.errno in _INPUT_ERRNOS else 1
        err = err.__cause__
    return 2


def report_user_errors(func: Any = None, *, disk_full_hint: str | None = None) -> Any:
    """Decorator for entry points: a :class:`UserError` becomes ``error: <message>``; an OSError
    (disk full, permission denied, ...) becomes ``error: <what>: <file>; <hint>``; an EOFError
    (a file that ends too early) is named as such instead of reaching click, which would take it
    for the end of the user's input and print only ``Aborted!``. None shows a traceback; the
    exit code is :func:`exit_code`'s. Use bare (``@report_user_errors``) or with the command's own
    advice after a full disk (``@report_user_errors(disk_full_hint=...)``)."""
    import functools

    if func is None:
        return functools.partial(report_user_errors, disk_full_hint=disk_full_hint)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (UserError, OSError, EOFError) as err:
            if isinstance(err, OSError):
                message = os_error_message(err, disk_full_hint=disk_full_hint)
            elif isinstance(err, EOFError):
                message = f'a file ended too early ({user_error_message(err)}); it is truncated or empty'
            else:
                message = user_error_message(err)
            print(f'error: {safe_line(message)}', file=sys.stderr, flush=True)
            raise SystemExit(exit_code(err)) from None
        except MemoryError as err:   # what the estimates did not foresee: still one line, the machine's state
            reason = f' ({user_error_message(err)})' if str(err) else ''
            print(f'error: out of memory{safe_line(reason)}; choose smaller sizes (--batch, widths, --resolution, '
                  f'--n) or free some memory', file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    return wrapper


def progress_bar(iterable: Any = None, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar for long work; off when ``enabled`` is False, and when the output is not a
    terminal (a redirected log gets the scripts' own summary lines, not thousands of redraws)."""
    from tqdm import tqdm
    return tqdm(iterable, disable=None if enabled else True, dynamic_ncols=True, **kwargs)
