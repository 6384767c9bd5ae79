"""Unpickling the CIFAR batch files without running code from them.

The official batches are Python-2 pickles of dicts holding numpy arrays, lists, bytes, str and
ints. ``pickle.loads`` would call whatever function a file names (``os.system``, ``exec``, ...);
``loads`` here resolves only the few globals such data needs, so a crafted archive can make
unpickling fail but never run anything. (``torch.load(weights_only=True)`` does the same for
checkpoints.)
"""

from __future__ import annotations

import io
import pickle
from typing import Any, NoReturn

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar
    from numpy.core.numeric import _frombuffer


class _NdarrayName:
    """What the global ``numpy.ndarray`` unpickles to: a token that ``_array`` takes as the
    type of a pickled array, not numpy's class. The class itself, called by the file
    (``ndarray((N,), 'u1')`` in a REDUCE, or ``ndarray.__new__`` in a NEWOBJ), would allocate
    N bytes of the file's choosing; the token refuses to be called."""

    __slots__ = ()  # one shared token: a BUILD opcode must not give it attributes

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise pickle.UnpicklingError("refused a call of numpy.ndarray (only arrays' own pickles)")

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayName()


def _array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for plain arrays only. The real shape and data arrive in the
    following ``__setstate__``, so the placeholder is always empty: a file cannot make this
    call allocate (a pickled ``shape`` of 2**40 would)."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"refused array subclass {subtype!r}")
    return _reconstruct(np.ndarray, (0,), dtype)


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; no other codec (codecs such
    as zlib would decompress whatever the file holds)."""
    if encoding.replace("-", "").lower() != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused codec {encoding!r}")
    return text.encode("latin1")


_NUMPY = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric")
ALLOWED: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _array for m in _NUMPY},
    **{(m, "scalar"): scalar for m in _NUMPY},
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol-5 arrays
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,  # only as _reconstruct's first argument
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def loads(blob: bytes) -> Any:
    """Unpickle ``blob`` allowing only numpy arrays, dtypes and scalars besides the builtin
    containers; Python-2 ``str`` is read as latin-1 (as the official files need)."""
    return _Unpickler(io.BytesIO(blob), encoding="latin1").load()
