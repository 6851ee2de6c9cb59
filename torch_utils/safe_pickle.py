"""Unpickling with an allow-list: the only safe way to read a pickle someone handed us.

A pickle names callables (``module.name``) and the unpickler calls them; with the standard
unpickler a file can therefore run any function, e.g. ``os.system``. :func:`load` resolves names
only through an explicit table (exact ``'module.name'`` → object, nothing imported, no module
attribute walked) and stops at the first other name with :class:`RefusedGlobal`.

Three readers use it: DRC's ``.npy`` split files saved as object arrays (:func:`load_npy`, with
:data:`NUMPY_GLOBALS` only), the original code's network pickles (``torch_utils/legacy.py``) and
the tensors of a FID detector's TorchScript archive (``metrics/detector.py``).
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

try:  # NumPy 2 moved the array machinery; pickles name either module, depending on who wrote them.
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover (NumPy 1)
    from numpy.core import multiarray as _multiarray


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable outside the allow-list; ``name`` is its ``module.name``."""

    def __init__(self, name: str) -> None:
        super().__init__(f'refusing to unpickle {name}')
        self.name = name


# Rebuilding NumPy arrays, dtypes and scalars of plain (non-object) data. Elements of object
# arrays are unpickled separately and must themselves pass the allow-list.
NUMPY_GLOBALS: dict[str, Any] = {
    f'{module}.{name}': obj
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray')
    for name, obj in (('_reconstruct', _multiarray._reconstruct), ('scalar', _multiarray.scalar))
}
NUMPY_GLOBALS.update({'numpy.ndarray': np.ndarray, 'numpy.dtype': np.dtype})


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, allowed: Mapping[str, Any],
                 persistent_load: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file)
        self.allowed = allowed
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        key = f'{module}.{name}'
        if key not in self.allowed:
            raise RefusedGlobal(key)
        return self.allowed[key]

    # Without a persistent_load, a persistent id is refused by pickle itself.


def load(file: BinaryIO | bytes, allowed: Mapping[str, Any],
         persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """Unpickle ``file`` (a binary stream or bytes), resolving globals only through ``allowed``
    (``'module.name'`` → the object to use in its place). Raises :class:`RefusedGlobal` for any
    other global, and pickle's own errors for damaged data. Persistent ids (how torch archives
    point at their tensor data) are refused, or handed to ``persistent_load`` when given: it
    must itself accept only the ids it understands."""
    if isinstance(file, (bytes, bytearray)):
        file = io.BytesIO(file)
    return _AllowListUnpickler(file, allowed, persistent_load).load()


def load_npy(path: str) -> np.ndarray:
    """A ``.npy`` array without running code from the file.

    Plain arrays load with ``allow_pickle=False``. An object array (its data is a pickle) is
    unpickled with :data:`NUMPY_GLOBALS` only, so its elements can be str, bytes, int, float or
    NumPy scalars, but nothing that calls another function. Raises :class:`RefusedGlobal` for a
    refused name and ValueError/OSError/pickle errors for a damaged file.
    """
    with open(path, 'rb') as f:
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f'unsupported .npy format version {version}')
        shape, _fortran_order, dtype = readers[version](f)
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        array = load(f, NUMPY_GLOBALS)
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise ValueError(f'the pickled data is not the {shape} array its header announces')
    return array
