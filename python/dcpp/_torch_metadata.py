"""torch's checkpoint ``Metadata`` from a ``.metadata`` file, without pickle.

torch's FileSystemReader unpickles ``.metadata`` with ``pickle.load``, which
runs whatever the file asks. dcpp.torch instead hands the bytes to dcpp's C++
decoder (the one ``dcpp.read_metadata`` and ``dcpp.load`` use: the same
allow-list, the same checks of every chunk) and to its pickle VM, which
returns an inert graph of nodes. :func:`decode` then assembles torch's own
dataclasses from that graph the way ``pickle.load`` would, except that it
only ever instantiates the classes and calls the functions of the tables
below, and never follows a cycle. So a file torch's writer wrote comes back
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

_GLOBALS: dict[tuple[str, str], Any] = {**_VALUES, **_CALLABLES, **_CLASSES}
_ALLOWED = sorted(_GLOBALS)

# torch's metadata nests about ten levels deep; far more is a hostile file.
_MAX_DEPTH = 100


class _Builder:
    """Turns the C++ node graph into Python objects, each node once."""

    def __init__(self, nodes: list[tuple], where: str) -> None:
        self.nodes = nodes
        self.where = where
        self.built: dict[int, Any] = {}
        self.building: set[int] = set()

    def fail(self, problem: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{self.where}: metadata: {problem}")

    def build(self, node_id: int, depth: int = 0) -> Any:
        if node_id in self.built:
            return self.built[node_id]
        if node_id in self.building:
            raise self.fail("an object contains itself")
        if depth > _MAX_DEPTH:
            raise self.fail(f"objects nested more than {_MAX_DEPTH} deep")
        self.building.add(node_id)
        value = self._make(self.nodes[node_id], depth + 1)
        self.building.discard(node_id)
        self.built[node_id] = value
        return value

    def _all(self, ids: list[int], depth: int) -> list[Any]:
        return [self.build(i, depth) for i in ids]

    def _make(self, node: tuple, depth: int) -> Any:
        kind, a, b = node
        if kind in ("none", "bool", "int", "float", "str", "bytes"):
            return a
        if kind == "bigint":
            return int.from_bytes(a, "little", signed=True)
        if kind == "tuple":
            return tuple(self._all(a, depth))
        if kind == "list":
            return self._all(a, depth)
        if kind == "dict":
            items = self._all(a, depth)
            return dict(zip(items[0::2], items[1::2]))
        if kind == "set":
            return set(self._all(a, depth))
        if kind == "frozenset":
            return frozenset(self._all(a, depth))
        if kind == "global":
            # The C++ parse admitted only the pairs of _ALLOWED.
            return _GLOBALS[(a, b)]
        if kind in ("reduce", "newobj"):
            return self._object(kind, a, b, depth)
        raise self.fail(f"unexpected pickle node {kind!r}")

    def _object(self, kind: str, items: list[int], extra: tuple, depth: int) -> Any:
        callee, args = self.build(items[0], depth), self.build(items[1], depth)
        kwargs = self.build(items[2], depth) if len(items) > 2 else {}
        if not isinstance(args, tuple) or kwargs:
            raise self.fail(f"{kind} of {callee!r} with unexpected arguments")
        if kind == "newobj":
            if callee not in _CLASSES.values() or args:
                raise self.fail(f"cannot create {callee!r} that way")
            obj = callee.__new__(callee)
        else:
            if callee not in _CALLABLES.values():
                raise self.fail(f"cannot call {callee!r}")
            obj = callee(*args)
        state, dict_items, list_items = extra
        # In the order pickle's save_reduce writes them.
        if list_items:
            if not isinstance(obj, list):
                raise self.fail(f"items appended to {type(obj).__name__}")
            obj.extend(self._all(list_items, depth))
        if dict_items:
            if not isinstance(obj, dict):
                raise self.fail(f"items set on {type(obj).__name__}")
            kv = self._all(dict_items, depth)
            obj.update(zip(kv[0::2], kv[1::2]))
        if state is not None:
            self._set_state(obj, self.build(state, depth))
        return obj

    def _set_state(self, obj: Any, state: Any) -> None:
        cls = type(obj)
        if cls not in _CLASSES.values():
            raise self.fail(f"state given to {cls.__name__}")
        if "__setstate__" in vars(cls):  # TensorProperties
            obj.__setstate__(state)
            return
        if not isinstance(state, dict):
            raise self.fail(f"{cls.__name__} state is a {type(state).__name__}, not a dict")
        fields = cls.__dataclass_fields__
        # As pickle: straight into __dict__ (MetadataIndex is frozen). Keys
        # that are not fields of the class are left out.
        obj.__dict__.update((k, v) for k, v in state.items() if k in fields)


def decode(data: bytes, where: str) -> tuple[_md.Metadata, dict[str, str]]:
    """``data`` (a ``.metadata`` file's bytes) as torch's Metadata.

    Returns the Metadata and, for every tensor whose chunks do not tile it
    (overlapping, or leaving elements without data), a CorruptCheckpointError
    message naming it; loading such a tensor must fail, as in ``dcpp.load``.

    Raises CorruptCheckpointError for a malformed or foreign file (any class
    or function outside DCP's metadata classes), a chunk of the wrong rank or
    outside its tensor, or a chunk or value without a storage record;
    UnimplementedError for a dtype dcpp does not know; messages start with
    ``where``.
    """
    nodes, root, tilings = _dcpp._torch_metadata_graph(data, where, _ALLOWED)
    builder = _Builder(nodes, where)
    try:
        metadata = builder.build(root)
    except CorruptCheckpointError:
        raise
    except (TypeError, ValueError, RuntimeError, AttributeError, KeyError, IndexError,
            NotImplementedError) as e:
        # Values that do not fit the classes (torch's own constructors and
        # __setstate__ raise these).
        raise builder.fail(f"{type(e).__name__}: {e}") from e
    if not isinstance(metadata, _md.Metadata):
        raise builder.fail(f"holds a {type(metadata).__name__}, not checkpoint metadata")
    return metadata, tilings
