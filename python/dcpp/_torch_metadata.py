"""torch's checkpoint ``Metadata`` from a ``.metadata`` file, without pickle.

torch's FileSystemReader unpickles ``.metadata`` with ``pickle.load``, which
runs whatever the file asks. dcpp.torch instead hands the bytes to dcpp's C++
decoder (the one ``dcpp.read_metadata`` and ``dcpp.load`` use: the same
allow-list, the same checks of every chunk) and to its pickle VM, which
returns an inert graph of nodes; dcpp then assembles torch's own
dataclasses from that graph the way ``pickle.load`` would, except that it
only ever instantiates the classes and calls the functions of the tables
below (each in the one way torch's pickles use it), and never follows a
cycle. So a file torch's writer wrote comes back
equal, field by field, to ``pickle.load``'s result, and a hostile one raises
:class:`dcpp.CorruptCheckpointError` before anything of it runs.
"""

from __future__ import annotations

import collections
import pathlib
from typing import Any, Callable

import torch
import torch.distributed.checkpoint.metadata as _md
import torch.serialization
from torch.distributed.checkpoint.filesystem import _StorageInfo

from . import _dcpp
from ._dcpp import CorruptCheckpointError

__all__ = ["decode"]

_META = "torch.distributed.checkpoint.metadata"
_LEGACY = "torch.distributed._shard.sharded_tensor.metadata"

# Classes pickled as NEWOBJ(cls, ()) + BUILD(state): created empty, then
# given their state as pickle does (their own __setstate__ if they have one).
_CLASSES: dict[tuple[str, str], type] = {
    (_META, "Metadata"): _md.Metadata,
    (_META, "TensorStorageMetadata"): _md.TensorStorageMetadata,
    (_META, "BytesStorageMetadata"): _md.BytesStorageMetadata,
    (_META, "ChunkStorageMetadata"): _md.ChunkStorageMetadata,
    (_META, "TensorProperties"): _md.TensorProperties,
    (_META, "MetadataIndex"): _md.MetadataIndex,
    (_META, "StorageMeta"): _md.StorageMeta,
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
}

# Callables pickled as REDUCE(callable, args): each builds a value from
# plain arguments and has no other effect.
_CALLABLES: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    (_META, "_MEM_FORMAT_ENCODING"): _md._MEM_FORMAT_ENCODING,  # Enum(value)
    ("collections", "OrderedDict"): collections.OrderedDict,
}
for _module in ("pathlib", "pathlib._local"):
    for _name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"):
        _CALLABLES[(_module, _name)] = getattr(pathlib, _name)

# Plain values pickled as a global: torch's dtypes.
_VALUES: dict[tuple[str, str], Any] = {
    ("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)
}

try:  # torch's older home of TensorProperties, still read by torch
    from torch.distributed._shard.sharded_tensor import metadata as _legacy

    _CLASSES[(_LEGACY, "TensorProperties")] = _legacy.TensorProperties
    _CALLABLES[(_LEGACY, "MEM_FORMAT_ENCODING")] = _legacy.MEM_FORMAT_ENCODING
except ImportError:  # pragma: no cover - depends on the torch build
    pass


def _class_role(cls: type) -> tuple[str, type, frozenset[str] | None]:
    if "__setstate__" in vars(cls):  # TensorProperties
        return ("new_setstate", cls, None)
    # Keys of a pickled state that are not fields of the class are left out.
    return ("new", cls, frozenset(cls.__dataclass_fields__))


# (module, name) -> (role, object, fields), as _dcpp._torch_metadata takes it.
_TABLE: dict[tuple[str, str], tuple[str, Any, frozenset[str] | None]] = {
    **{key: ("value", value, None) for key, value in _VALUES.items()},
    **{key: ("call", fn, None) for key, fn in _CALLABLES.items()},
    **{key: _class_role(cls) for key, cls in _CLASSES.items()},
}


def decode(data: bytes, where: str) -> tuple[_md.Metadata, dict[str, str]]:
    """``data`` (a ``.metadata`` file's bytes) as torch's Metadata.

    Returns the Metadata and, for every tensor whose chunks do not tile it
    (overlapping, or leaving elements without data), a CorruptCheckpointError
    message naming it; loading such a tensor must fail, as in ``dcpp.load``.

    Raises CorruptCheckpointError for a malformed or foreign file (any class
    or function outside the tables above), a chunk of the wrong rank or
    outside its tensor, or a chunk or value without a storage record;
    UnimplementedError for a dtype dcpp does not know; messages start with
    ``where``.
    """
    try:
        metadata, tilings = _dcpp._torch_metadata(data, where, _TABLE)
    except _dcpp.DcppError:
        raise
    except (TypeError, ValueError, RuntimeError, AttributeError, KeyError, IndexError,
            NotImplementedError) as e:
        # Values that do not fit the classes (torch's own constructors and
        # __setstate__ raise these).
        raise CorruptCheckpointError(f"{where}: metadata: {type(e).__name__}: {e}") from e
    if not isinstance(metadata, _md.Metadata):
        raise CorruptCheckpointError(
            f"{where}: metadata: holds a {type(metadata).__name__}, not checkpoint metadata")
    return metadata, tilings
