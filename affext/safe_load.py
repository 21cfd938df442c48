"""Reading psa's and IRN's pickled-dict .npy files without letting them run code.

psa and IRN save their per-image files (CAM dicts, la/ha dCRF scores, cls_labels.npy, IRN's
CAM records) with np.save of a dict. numpy stores that as a 0-d object array: the .npy
header (magic, version, a dict literal with descr "|O", shape ()), then a pickle stream of
the array itself, i.e. numpy's `_reconstruct(ndarray, (0,), b"b")` plus a BUILD whose state
holds the array's dtype and a one-item list with the dict. np.load(allow_pickle=True) runs
that stream through pickle, which calls whatever the stream names: a file from someone else
can run any code on the reader's machine.

`load_npy` reads the header itself (numpy.lib.format) and:
- for a numeric array, reads it with allow_pickle=False;
- for an object array, runs `_RestrictedUnpickler` on the rest of the file. It resolves only
  the globals those formats need (numpy's array, dtype and scalar reconstruction, the
  latin-1 encode that pickle protocol 2 writes bytes with; for IRN's records torch's tensor
  rebuild and storage bytes, the latter read with torch.load(weights_only=True) where torch
  itself would use weights_only=False), each wrapped so that its arguments are checked
  before anything is built. Then the result must be a 0-d object array holding a dict with
  int or str keys (numpy integers too) whose values are numeric numpy arrays (torch tensors
  where allowed): no object arrays, no containers.

`load_torch_file` is the one torch.load of affext (weights_only=True) for .pth weights and
checkpoints.

Anything else raises UnsafeFileError naming the file and what it holds; nothing it names is
called.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import AffextError

NUMERIC_KINDS = "biufc"  # bool, signed and unsigned integer, floating, complex


class UnsafeFileError(AffextError, ValueError):
    """A file holds something its format never does (code, foreign objects): refused unread."""


class _Refused(Exception):
    """Raised inside the unpickler; load_npy turns it into UnsafeFileError naming the file."""


class _Global:
    """What find_class hands the unpickler: an allowlisted callable under its pickled name.

    It has no __dict__ and refuses attribute writes, so a stream's BUILD opcode cannot alter
    it (a plain function would take new __defaults__ and keep them for later loads).
    """

    __slots__ = ("name", "_call")
    name: str
    _call: Callable[..., Any] | None

    def __init__(self, name: str, call: Callable[..., Any] | None) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_call", call)

    def __setattr__(self, key: str, value: Any) -> None:
        raise _Refused(f"a write of attribute {key!r} on {self.name}")

    def __call__(self, *args: Any) -> Any:
        if self._call is None:
            raise _Refused(f"a call of {self.name}")
        return self._call(*args)

    def __repr__(self) -> str:
        return self.name


def _describe(obj: Any) -> str:
    if isinstance(obj, _Global):
        return obj.name
    if isinstance(obj, np.ndarray):
        return f"a {obj.shape} {obj.dtype} array"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _numeric_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_KINDS or dtype.hasobject:
        raise _Refused(f"{_describe(dtype)} where a numeric dtype belongs")
    return dtype


_NDARRAY = _Global("numpy.ndarray", None)  # only ever an argument of _reconstruct
# numpy._core (2.x) or numpy.core (1.x)
_RECONSTRUCT: Callable[..., np.ndarray] = np.ndarray.__reduce__(np.zeros(0))[0]  # type: ignore[assignment]
_SCALAR = np.float32(0).__reduce__()[0]


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's empty-array constructor that an array's pickle starts with (its BUILD fills it)."""
    if cls is not _NDARRAY or not isinstance(typecode, bytes):
        raise _Refused(f"an array reconstruction of {_describe(cls)}")
    if not (isinstance(shape, tuple) and all(type(n) is int and 0 <= n <= 1 for n in shape)):
        raise _Refused(f"an array reconstruction with shape {shape!r}")
    return _RECONSTRUCT(np.ndarray, shape, typecode)


def _dtype(code: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if not (isinstance(code, str) and code[:1] in NUMERIC_KINDS + "O"):
        raise _Refused(f"a dtype {code!r}")
    if not (align in (0, 1) and copy in (0, 1) and {type(align), type(copy)} <= {bool, int}):
        raise _Refused(f"dtype arguments {align!r}, {copy!r}")
    return np.dtype(code, align=align, copy=copy)


def _scalar(dtype: Any, data: Any = None) -> np.generic:
    """A numpy scalar (psa's keys may be numpy integers): numeric dtypes from raw bytes only."""
    if not isinstance(data, bytes):
        raise _Refused(f"a numpy scalar from {_describe(data)}")
    return _SCALAR(_numeric_dtype(dtype), data)


def _storage_from_bytes(data: Any) -> torch.TypedStorage:
    """torch.storage._load_from_bytes (how a pickled tensor carries its data: a legacy
    torch.save of the storage), but read with weights_only=True onto the CPU: torch's own
    function loads these bytes with weights_only=False."""
    if not isinstance(data, bytes):
        raise _Refused(f"tensor storage from {_describe(data)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage's deprecation notice
        try:
            storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            reason = torch_refusal(exc) or str(exc)
            raise _Refused(
                f"tensor data that torch's weights-only reader refuses ({reason})"
            ) from exc
    if not isinstance(storage, torch.TypedStorage):
        raise _Refused(f"{_describe(storage)} where a tensor's storage belongs")
    return storage


def _rebuild_tensor(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    *metadata: Any,
) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 for a plain CPU tensor: no hooks, no metadata."""
    ints = (type(offset) is int) and all(
        isinstance(s, tuple) and all(type(n) is int for n in s) for s in (size, stride)
    )
    if not isinstance(storage, torch.TypedStorage) or not ints:
        raise _Refused(f"a tensor rebuilt from {_describe(storage)}")
    if type(requires_grad) is not bool or metadata or type(hooks) is not collections.OrderedDict:
        raise _Refused("a tensor rebuilt with hooks or metadata")
    if hooks:
        raise _Refused("a tensor with backward hooks")
    # torch does not check the view against its storage here: it would read past the end.
    if offset < 0 or len(size) != len(stride) or min((*size, *stride), default=0) < 0:
        raise _Refused(f"a tensor view with offset {offset}, size {size}, stride {stride}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage's deprecation notice
        length = storage.size()
        if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= length:
            raise _Refused(
                f"a tensor view (offset {offset}, size {size}, stride {stride}) past the end "
                f"of its {length}-element storage"
            )
        return torch._utils._rebuild_tensor_v2(
            storage, offset, size, stride, requires_grad, collections.OrderedDict()
        )


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """_codecs.encode, as pickle protocol 2 (no bytes opcode) carries bytes: latin-1 only."""
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
        raise _Refused(f"an encode of {_describe(text)} with {encoding!r}")
    return text.encode("latin-1")


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    if args:
        raise _Refused("an OrderedDict with contents")
    return collections.OrderedDict()


_NUMPY = {
    "_reconstruct": _Global("numpy.core.multiarray._reconstruct", _reconstruct),
    "scalar": _Global("numpy.core.multiarray.scalar", _scalar),
}
_ALLOWED = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Global("numpy.dtype", _dtype),
    ("_codecs", "encode"): _Global("_codecs.encode", _encode),
    **{
        (module, name): g
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name, g in _NUMPY.items()
    },
}
_TORCH = {
    ("torch._utils", "_rebuild_tensor_v2"): _Global(
        "torch._utils._rebuild_tensor_v2", _rebuild_tensor
    ),
    ("torch.storage", "_load_from_bytes"): _Global(
        "torch.storage._load_from_bytes", _storage_from_bytes
    ),
    ("collections", "OrderedDict"): _Global("collections.OrderedDict", _ordered_dict),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the allowlisted globals (see the module docstring)."""

    def __init__(self, file: Any, tensors: bool) -> None:
        # np.load's own settings for the stream (Python 2 pickles included).
        super().__init__(file, fix_imports=True, encoding="ASCII")
        self.allowed = {**_ALLOWED, **(_TORCH if tensors else {})}

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None and (module, name) in _TORCH:
            raise _Refused("torch tensors (as IRN's CAM files do; this reader takes numpy arrays)")
        if found is None:
            raise _Refused(f"a pickled reference to {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id")


def _check_value(value: Any, tensors: bool) -> str | None:
    """Why value is not a dict value the formats hold, or None."""
    if type(value) is np.ndarray:
        kind_ok = value.dtype.kind in NUMERIC_KINDS and not value.dtype.hasobject
        return None if kind_ok else _describe(value)
    if tensors and type(value) is torch.Tensor:
        plain = value.layout == torch.strided and not value.is_quantized
        return None if plain else f"a {value.dtype} {value.layout} tensor"
    return _describe(value)


def _held(path: Path, what: str, thing: str) -> UnsafeFileError:
    return UnsafeFileError(
        f"{what} file {str(path)!r} holds {thing}, which its format never does: refused, and "
        "nothing in it was run (np.load(allow_pickle=True) would run such a file's code); get "
        "the file again from a source you trust, or make it again with the stage that writes it"
    )


def load_npy(path: str | os.PathLike, what: str = "", tensors: bool = False) -> Any:
    """A .npy file's contents, without running code from it.

    A numeric (or any non-object) array is read with allow_pickle=False and returned as an
    array. A pickled 0-d object array, as np.save writes a dict, is read with the restricted
    unpickler and its dict returned: int / str / numpy-integer keys, numeric numpy arrays as
    values (and, with tensors=True, plain torch tensors, as IRN writes). The result equals
    np.load(path, allow_pickle=True) (.item() for a dict) bit for bit.

    what: how errors name the file ("CAM", "class labels", ...). Raises FileNotFoundError
    for a missing file, UnsafeFileError (a ValueError) when the file holds anything else,
    ValueError when it is no .npy file or is truncated; each names the file.
    """
    path = Path(path)
    what = what or "the"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version in ((1, 0), (2, 0)):
                read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
                shape, _, dtype = read_header(f)
            else:
                shape, dtype = None, None  # version 3.0: never an object array of ours
            if dtype is None or not dtype.hasobject:
                f.seek(0)
                return np.lib.format.read_array(f, allow_pickle=False)
            if dtype != np.dtype(object) or shape != ():
                raise _held(path, what, f"a {shape} array of dtype {dtype}")
            array = _RestrictedUnpickler(f, tensors).load()
    except FileNotFoundError:
        raise
    except _Refused as exc:
        raise _held(path, what, str(exc)) from None
    except UnsafeFileError:
        raise
    except Exception as exc:  # not a .npy file, truncated, or a broken pickle stream
        raise ValueError(f"cannot read {what} file {str(path)!r}: {exc}") from exc
    if type(array) is not np.ndarray or array.dtype != object or array.shape != ():
        raise _held(path, what, f"{_describe(array)} instead of the pickled dict")
    table = array.item()
    if type(table) is not dict:
        raise _held(path, what, f"{_describe(table)} instead of a dict")
    for key, value in table.items():
        if not (type(key) in (int, str) or isinstance(key, np.integer)):
            raise _held(path, what, f"a dict key {_describe(key)}")
        why = _check_value(value, tensors)
        if why is not None:
            raise _held(path, what, f"{why} under key {key!r}")
    return table


def load_npy_dict(path: str | os.PathLike, what: str = "", tensors: bool = False) -> dict:
    """load_npy for a file that must hold a pickled dict (psa's and IRN's per-image files,
    cls_labels.npy); a plain array raises ValueError naming the file."""
    table = load_npy(path, what, tensors)
    if not isinstance(table, dict):
        raise ValueError(
            f"{what or 'the'} file {os.fspath(path)!r} holds a {table.shape} {table.dtype} "
            "array, not the pickled dict np.save writes for psa's and IRN's files"
        )
    return table


# -- torch files (.pth weights, checkpoints) -----------------------------------------------
def torch_refusal(exc: BaseException) -> str | None:
    """The line of torch.load(weights_only=True)'s refusal that names the global a file's
    pickle asked for (how code or a foreign class gets in), or None when exc is not that (a
    corrupt or non-torch file, whose unknown opcodes torch refuses in the same way)."""
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    return next((line.strip() for line in text.splitlines() if "GLOBAL " in line), None)


def load_torch_file(path: str | os.PathLike, what: str, hint: str = "") -> object:
    """torch.load of a file of tensors onto the CPU with weights_only=True (tensors, numbers,
    strings and plain containers; no pickled code runs), the one torch.load of affext.

    Raises FileNotFoundError when it is missing, UnsafeFileError when its pickle names
    anything else (a payload, a foreign class), ValueError (plus `hint`) when it cannot be read
    otherwise; each names `what` and the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = torch_refusal(exc)
        if reason is not None:
            raise UnsafeFileError(
                f"{what} {path} holds more than tensors and plain values ({reason}): refused, "
                "and nothing in it was run; get the file again from a source you trust (a "
                "file affext or psa saved holds only tensors)"
            ) from None
        raise ValueError(
            f"could not read {what} {path} as torch tensors ({exc}). {hint}".rstrip()
        ) from exc
