"""Python-side types and helpers that the C++ converters call.

Kept free of imports of torch at module load: numpy users never pay for it.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["Shard", "ShardedTensor", "Opaque"]


@dataclass
class Shard:
    """A piece of a larger tensor: ``tensor`` placed at ``offsets``.

    ``tensor`` is a numpy array or a CPU torch tensor; its shape is the
    piece's size. ``offsets`` is the global index of its first element, one
    int per dimension.
    """

    tensor: Any
    offsets: Sequence[int]


@dataclass
class ShardedTensor:
    """A tensor of ``global_shape`` of which this process holds ``shards``.

    Saving writes each shard as one chunk of the global tensor (the shards
    of one save, across the processes that write to the same checkpoint,
    must not overlap). Loading fills each shard with its part of the saved
    tensor, whatever the saved sharding was: only the overlapping parts of
    the saved chunks are read.
    """

    global_shape: Sequence[int]
    shards: list[Shard] = field(default_factory=list)


@dataclass(frozen=True)
class Opaque:
    """A pickled Python object that dcpp did not unpickle.

    ``blob`` holds the complete torch.save bytes of the object, as the
    checkpoint stores them; saving an Opaque writes them back unchanged.
    ``description`` says what the object is (e.g. "an instance of
    mymod.MyClass"). ``load()`` unpickles it with torch.load.
    """

    blob: bytes
    description: str

    def load(self, weights_only: bool = True) -> Any:
        """Unpickles the object with ``torch.load(weights_only=...)``.

        ``weights_only=False`` runs arbitrary code from the checkpoint: use
        it only for checkpoints you trust.
        """
        import torch

        return torch.load(io.BytesIO(self.blob), weights_only=weights_only)

    def __repr__(self) -> str:
        return f"dcpp.Opaque({self.description}, {len(self.blob)} bytes)"


def _pickle_other(obj: Any, where: str) -> bytes:
    """torch.save bytes of a value dcpp has no native form for (as DCP does)."""
    try:
        import torch
    except ImportError:
        raise TypeError(
            f"{where}: cannot save a {type(obj).__module__}.{type(obj).__qualname__}: "
            "dcpp saves dicts, lists, tuples, None, bool, int, float, str, bytes, arrays "
            "and tensors; other objects are pickled with torch.save, which needs torch"
        ) from None
    buf = io.BytesIO()
    try:
        torch.save(obj, buf)
    except Exception as e:
        raise TypeError(f"{where}: cannot pickle a {type(obj).__qualname__}: {e}") from e
    return buf.getvalue()


def _unpickle_opaque(blob: bytes, description: str, weights_only: bool) -> Any:
    """The object in ``blob``, or an Opaque when it cannot (or may not) be unpickled."""
    if "torch" not in sys.modules:
        try:
            import torch  # noqa: F401
        except ImportError:
            return Opaque(blob, description)
    import torch

    try:
        return torch.load(io.BytesIO(blob), weights_only=weights_only)
    except Exception:
        if not weights_only:
            raise
        # Not on torch's allow-list for weights_only loading: hand it back
        # unopened rather than run code from the checkpoint.
        return Opaque(blob, description)


def _torch_from_bytes(data: Any, dtype: str, shape: tuple, strides: tuple) -> Any:
    """A torch tensor viewing the uint8 numpy array ``data`` (no copy)."""
    import torch

    t = torch.from_numpy(data)
    torch_dtype = getattr(torch, dtype)
    if t.numel() == 0:
        return torch.empty(shape, dtype=torch_dtype)
    return t.view(torch_dtype).as_strided(shape, strides)


_NUMPY_DTYPES = {
    "float16", "float32", "float64", "complex64", "complex128", "bool",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
}


def _normalize_array(arr: Any, where: str) -> Any:
    """A native-endian copy of ``arr`` with positive strides (a numpy array)."""
    import numpy as np

    try:
        a = np.asarray(arr)
    except Exception as e:
        raise TypeError(f"{where}: cannot read a {type(arr).__qualname__} as an array: {e}") from e
    if a.dtype.newbyteorder("=").name not in _NUMPY_DTYPES:
        raise TypeError(
            f"{where}: numpy dtype {a.dtype} is not supported (dcpp holds "
            f"{', '.join(sorted(_NUMPY_DTYPES))}, and bfloat16/float8 through torch)"
        )
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a)


def _copy_into(dst: Any, src: Any) -> None:
    """Copies ``src`` into ``dst`` (both torch tensors, or both arrays)."""
    if hasattr(dst, "copy_"):
        dst.copy_(src)
    else:
        import numpy as np

        np.copyto(dst, src)


def _distributed_to_sharded(obj: Any, where: str) -> ShardedTensor:
    """The dcpp ShardedTensor for a torch DTensor or torch ShardedTensor:
    its global shape and this process's local shards at their global
    offsets, as DCP's planner sees them. The shard tensors are the object's
    own local tensors (no copies), so loading fills them in place.

    A DTensor's chunk comes from ``__create_chunk_list__`` (DCP's own rule,
    ``compute_local_shape_and_global_offset``): a replicated placement gives
    the full tensor on every rank (dcpp writes one copy), and a Partial
    placement is refused, as DCP refuses it.
    """
    import torch

    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is not None and isinstance(obj, dtensor.DTensor):
        try:
            chunks = obj.__create_chunk_list__()
        except Exception as e:
            raise ValueError(f"{where}: cannot checkpoint this DTensor "
                             f"(placements {obj.placements}): {e}") from e
        if len(chunks) != 1:
            raise NotImplementedError(
                f"{where}: a DTensor whose local tensor has {len(chunks)} chunks "
                f"({type(obj._local_tensor).__qualname__}) is not supported")
        with torch.no_grad():
            local = obj.to_local()
        chunk = chunks[0]
        if tuple(local.shape) != tuple(chunk.sizes):
            raise ValueError(f"{where}: the DTensor's local tensor has shape {tuple(local.shape)}, "
                             f"its placements say {tuple(chunk.sizes)}")
        return ShardedTensor(tuple(obj.shape), [Shard(local, tuple(chunk.offsets))])
    import warnings

    shards = []
    with warnings.catch_warnings():
        # torch's ShardedTensor warns that it is deprecated on every use; the
        # user chose it, and dcpp supports it as DCP does.
        warnings.simplefilter("ignore", FutureWarning)
        global_shape = tuple(obj.size())
        for i, s in enumerate(obj.local_shards()):
            md = s.metadata
            if tuple(s.tensor.shape) != tuple(md.shard_sizes):
                raise ValueError(f"{where}: local shard {i} has shape {tuple(s.tensor.shape)}, "
                                 f"its metadata says {tuple(md.shard_sizes)}")
            shards.append(Shard(s.tensor.detach(), tuple(md.shard_offsets)))
    return ShardedTensor(global_shape, shards)
