"""dcpp: PyTorch Distributed Checkpoint (DCP) checkpoints, read and written in C++.

Checkpoints are directories in torch.distributed.checkpoint's format:
``dcp.load`` reads what ``dcpp.save`` writes and ``dcpp.load`` reads what
``dcp.save`` writes. Arrays and tensors are read and written in place (no
copies through Python), on C++ threads, with the GIL released.

    import numpy as np, dcpp

    sd = {"model": {"w": np.ones((4, 4), np.float32)}, "step": 10}
    dcpp.save(sd, "/ckpt/step_10")
    everything = dcpp.load("/ckpt/step_10")          # new arrays
    dcpp.load(sd, "/ckpt/step_10")                   # in place, like dcp.load
    md = dcpp.read_metadata("/ckpt/step_10")         # what the checkpoint holds

For torch's own API with dcpp doing the I/O, see :mod:`dcpp.torch`.

Errors are raised as subclasses of :class:`DcppError`, each also the
matching built-in exception: :class:`NotFoundError` is a FileNotFoundError,
:class:`CorruptCheckpointError` and :class:`InvalidArgumentError` are
ValueErrors, :class:`AlreadyExistsError` is a FileExistsError, and so on.
Bad arguments detected in Python raise TypeError or ValueError directly.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Literal, Sequence

from . import _dcpp, _groups
from ._dcpp import (
    AbortedError,
    AlreadyExistsError,
    Chunk,
    CorruptCheckpointError,
    DcppError,
    DeadlineExceededError,
    Entry,
    InternalError,
    InvalidArgumentError,
    Metadata,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    StorageInfo,
    StorageMeta,
    UnimplementedError,
)
from ._types import Opaque, Shard, ShardedTensor

__version__ = "0.1.0"

__all__ = [
    "save",
    "async_save",
    "AsyncCheckpointer",
    "load",
    "read_metadata",
    "verify",
    "VerifyReport",
    "known_transforms",
    "Shard",
    "ShardedTensor",
    "convert",
    "Opaque",
    "Metadata",
    "Entry",
    "Chunk",
    "StorageInfo",
    "StorageMeta",
    "DcppError",
    "InvalidArgumentError",
    "NotFoundError",
    "AlreadyExistsError",
    "CorruptCheckpointError",
    "ResourceExhaustedError",
    "AbortedError",
    "UnimplementedError",
    "InternalError",
    "PermissionDeniedError",
    "DeadlineExceededError",
]

#: Called as ``progress(phase, bytes_done, bytes_total, items_done, items_total)``
#: from dcpp's I/O threads (one call at a time, holding the GIL while it runs).
#: An exception it raises is reported as unraisable and does not stop the work.
ProgressCallback = Callable[[str, int, int, int, int], None]


def _path(path: str | os.PathLike) -> str:
    if isinstance(path, bytes):
        return os.fsdecode(path)
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}") from None


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _tensors(tensors: str) -> bool:
    if tensors not in ("numpy", "torch"):
        raise ValueError(f"tensors must be 'numpy' or 'torch', got {tensors!r}")
    if tensors == "torch":
        import torch  # noqa: F401  (loaded tensors are built with it)
    return tensors == "torch"


def save(
    state_dict: dict,
    path: str | os.PathLike,
    *,
    thread_count: int = 1,
    io_threads: int = 0,
    single_file_per_rank: bool = True,
    sync_files: bool = True,
    overwrite: bool = True,
    checksums: bool = True,
    transforms: Sequence[str] = (),
    compression_level: int = 1,
    dedup_to_lowest_rank: bool = False,
    progress: ProgressCallback | None = None,
    lock_timeout: float = 0,
    process_group: Any = None,
    format: Literal["dcp", "safetensors"] = "dcp",
    max_shard_size: int | str = 0,
    fqn_to_index_mapping: dict[str, int] | None = None,
) -> Metadata:
    """Saves ``state_dict`` as a DCP checkpoint in the directory ``path``.

    ``format="safetensors"`` writes a Hugging Face model directory instead,
    as torch's ``HuggingFaceStorageWriter`` does for a rank-0 save:
    ``model-0000i-of-0000N.safetensors`` and ``model.safetensors.index.json``
    (loadable by ``safetensors.torch.load_file``, transformers and torch's
    ``HuggingFaceStorageReader``). Every leaf must be a tensor or array
    (:class:`InvalidArgumentError` names the others); keys are the FQNs.
    ``max_shard_size`` (bytes, or a string such as ``"5GB"`` / ``"500MiB"``
    as transformers takes it) starts a new file before a tensor that would
    take the current one past it; 0 writes one file.
    ``fqn_to_index_mapping`` (FQN -> file 1..N, as torch's writer takes it)
    assigns files instead. Only ``io_threads``,
    ``sync_files``, ``overwrite`` and ``progress`` apply to that format.

    ``state_dict`` is a dict whose values may be dicts, lists and tuples of
    numpy arrays, torch tensors (read without a copy; tensors on other
    devices are copied to the CPU first), :class:`ShardedTensor` (pieces of
    a larger tensor), None, bool, int, float, str and bytes. Other objects
    are pickled with ``torch.save``, as DCP does. At the top level, objects
    with ``state_dict()``/``load_state_dict()`` (modules, optimizers) are
    saved as their state dict. The arrays must not change until save
    returns; the GIL is released meanwhile.

    Options mirror the C++ ``dcpp::SaveOptions``:

    * ``thread_count``: data files per process with ``single_file_per_rank``
      (DCP's FileSystemWriter ``thread_count``); >= 1.
    * ``io_threads``: threads writing them, several within one file where
      they outnumber the files; 0 (default): ``max(thread_count, min(8,
      CPUs))``.
    * ``single_file_per_rank``: False writes one file per item.
    * ``sync_files``: fsync the data, the metadata and the directory.
    * ``overwrite``: False raises :class:`AlreadyExistsError` if ``path``
      holds a checkpoint. True replaces it atomically: the old checkpoint
      stays loadable until the new ``.metadata`` replaces it.
    * ``checksums``: CRC-32 of each record, as torch writes them.
    * ``transforms``: stream transforms for every item, by descriptor:
      ``["stream.zstd/1"]`` compresses as torch's ZStandard extension (torch
      reads it with the ``zstandard`` module installed);
      ``["dcpp.byteshuffle/1", "stream.zstd/1"]`` compresses float data
      better (stock torch reads it with :func:`dcpp.torch.extension_registry`).
    * ``compression_level``: zstd level, 1 (fast) to 19; negative is faster.
    * ``dedup_to_lowest_rank``: DCP's option; no effect for one process.
    * ``progress``: see :data:`ProgressCallback`.
    * ``lock_timeout``: seconds to wait when another save holds the
      directory's lock (``.dcpp.lock``); 0 (default) raises
      :class:`AbortedError` at once, naming the holder.
    * ``process_group``: the processes saving together (see "Process
      groups" below); None (default): this process alone.

    **Process groups.** With ``process_group``, every process of the group
    calls ``save`` with the same ``path`` and its own part of the state,
    and dcpp plans, writes and commits one checkpoint, as ``dcp.save``
    does: each process writes its own data files, rank 0 writes
    ``.metadata``. The group is a ``torch.distributed`` ProcessGroup with a
    CPU (gloo) backend, e.g. ``torch.distributed.group.WORLD`` after
    ``init_process_group("gloo")`` or ``("cpu:gloo,cuda:nccl")``, or a
    ``dist.new_group(backend="gloo")``; or an mpi4py communicator such as
    ``MPI.COMM_WORLD``. dcpp's messages travel through it as bytes.
    ``torch.distributed.tensor.DTensor`` and torch's ``ShardedTensor`` leaves
    are saved as sharded tensors: their global shape, and this process's
    local shard at its global offsets (replicated placements are written
    once; Partial placements are refused). Plain tensors and values are
    taken as replicated: one copy is written. If any process fails, every
    process raises the same error naming the failed ranks (including errors
    in its arguments or state dict found before the save starts), and no
    ``.metadata`` is written. Collectives give up after the group's
    timeout (torch's ``init_process_group(timeout=...)``; 10 minutes for
    mpi4py). Every process must pass a group: one that passes None (or an
    invalid group) does not take part, and the others wait for it until
    the timeout.

    Returns the checkpoint's :class:`Metadata`. On failure nothing that looks
    like a checkpoint is left behind and an existing checkpoint is intact.
    """
    group = _groups.adapt(process_group)
    try:
        keywords = _save_keywords(
            thread_count=thread_count,
            io_threads=io_threads,
            single_file_per_rank=single_file_per_rank,
            sync_files=sync_files,
            overwrite=overwrite,
            checksums=checksums,
            transforms=transforms,
            compression_level=compression_level,
            dedup_to_lowest_rank=dedup_to_lowest_rank,
            progress=progress,
            lock_timeout=lock_timeout,
            format=format,
            max_shard_size=max_shard_size,
            fqn_to_index_mapping=fqn_to_index_mapping,
        )
        checkpoint = _path(path)
    except (TypeError, ValueError) as e:
        _fail_together("save", group, e)
    return _dcpp.save(state_dict, checkpoint, process_group=group, **keywords)


def _fail_together(what: str, group: Any, error: Exception) -> None:
    """Raises ``error``; with a group of several processes, first takes part
    in the call's first collective carrying it, so that every process raises
    the same error instead of the others waiting for this one."""
    if group is None or group.size() == 1:
        raise error
    _dcpp._fail_together(what, group, error)


def _save_keywords(
    *,
    thread_count: int = 1,
    io_threads: int = 0,
    single_file_per_rank: bool = True,
    sync_files: bool = True,
    overwrite: bool = True,
    checksums: bool = True,
    transforms: Sequence[str] = (),
    compression_level: int = 1,
    dedup_to_lowest_rank: bool = False,
    progress: ProgressCallback | None = None,
    lock_timeout: float = 0,
    format: Literal["dcp", "safetensors"] = "dcp",
    max_shard_size: int | str = 0,
    fqn_to_index_mapping: dict[str, int] | None = None,
) -> dict:
    """save()'s keyword options, validated, as _dcpp's save functions take them."""
    if isinstance(transforms, str):
        raise TypeError("transforms must be a sequence of descriptors, e.g. ['stream.zstd/1']")
    return dict(
        thread_count=_int("thread_count", thread_count, 1),
        io_threads=_int("io_threads", io_threads, 0),
        single_file_per_rank=bool(single_file_per_rank),
        sync_files=bool(sync_files),
        overwrite=bool(overwrite),
        checksums=bool(checksums),
        transforms=list(transforms),
        compression_level=_int("compression_level", compression_level, -(1 << 17)),
        dedup_to_lowest_rank=bool(dedup_to_lowest_rank),
        progress=progress,
        lock_timeout_ms=_lock_timeout_ms(lock_timeout),
        format=str(format),
        max_shard_size=_byte_size("max_shard_size", max_shard_size),
        fqn_to_file_index={} if fqn_to_index_mapping is None
        else {str(k): int(v) for k, v in fqn_to_index_mapping.items()},
    )


_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _byte_size(name: str, value: int | str) -> int:
    """Bytes from an int or a transformers-style size string ("5GB", "500MiB")."""
    if isinstance(value, str):
        text = value.strip().upper()
        for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
            if text.endswith(unit):
                number = text[: -len(unit)].strip()
                try:
                    return int(float(number) * _SIZE_UNITS[unit])
                except ValueError:
                    break
        raise ValueError(f"{name}: cannot read {value!r} as a size (e.g. 5GB, 500MiB, 1000000)")
    return _int(name, value, 0)


def _lock_timeout_ms(seconds: float) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ValueError(f"lock_timeout must be a number of seconds >= 0, got {seconds!r}")
    return int(round(seconds * 1000))


def load(
    state_dict_or_path: dict | str | os.PathLike,
    path: str | os.PathLike | None = None,
    *,
    thread_count: int = 0,
    allow_partial_load: bool = False,
    keys: Iterable[str] | None = None,
    tensors: Literal["numpy", "torch"] = "numpy",
    weights_only: bool = True,
    progress: ProgressCallback | None = None,
    verify_checksums: bool = True,
    process_group: Any = None,
) -> Any:
    """Loads a DCP checkpoint.

    ``load(path)`` returns the whole checkpoint as new nested dicts (and
    lists), rebuilt from the metadata; ``keys`` selects entries by FQN or by
    prefix ("model" selects "model.w"). Tensors come back as numpy arrays
    (``tensors="numpy"``; bfloat16 and float8 need ``tensors="torch"``) or
    torch tensors, in memory dcpp allocated, without further copies.

    ``load(state_dict, path)`` loads in place, like ``dcp.load``: every array
    or tensor in ``state_dict`` is filled from the checkpoint (dtype and shape
    must match the saved ones: :class:`InvalidArgumentError` otherwise; a
    :class:`ShardedTensor`'s shards receive their parts of the saved tensor,
    whatever the saved sharding), every other value is replaced by the saved
    one, and top-level objects with ``load_state_dict`` receive their state.
    A key missing from the checkpoint raises :class:`NotFoundError` unless
    ``allow_partial_load``. Returns None.

    Values dcpp does not model (instances of user classes, numpy scalars)
    are unpickled with ``torch.load(weights_only=weights_only)``; under
    ``weights_only=True`` those torch refuses come back as :class:`Opaque`
    (``weights_only=False`` runs code from the checkpoint: trusted files only).

    ``thread_count``: parallel readers, 0 = min(8, hardware threads).

    ``verify_checksums`` (default True) checks the CRC-32 of every torch.save
    archive record read in full (tensor bytes, data.pkl, pickled values),
    zstd frame checksums and, when present, dcpp's sidecar checksum file
    (``.metadata`` and pickled values); a mismatch raises
    :class:`CorruptCheckpointError` naming the FQN, the file and the offset.
    A tensor read only in part (resharding) cannot be checked. False skips
    the checks (about one CRC pass over the bytes read).

    ``process_group``: the processes loading together, as for
    :func:`save`; None (default): this process alone. In place, each
    process asks for its own pieces: DTensor and torch ``ShardedTensor``
    leaves are filled in place, their local shards receiving their parts
    of the saved tensor, whatever the saved sharding and number of
    processes; rank 0 reads ``.metadata`` and shares it. ``load(path)``
    returns the whole checkpoint on every process. Either way, if any
    process fails, every process raises the same error naming the failed
    ranks.

    Raises :class:`NotFoundError` for a missing checkpoint and
    :class:`CorruptCheckpointError` for damaged files.
    """
    group = _groups.adapt(process_group)
    what = "load"
    try:
        if path is None:
            if isinstance(state_dict_or_path, dict):
                raise TypeError("load(state_dict) needs a path: load(state_dict, path)")
            args = dict(
                path=_path(state_dict_or_path),
                thread_count=_int("thread_count", thread_count, 0),
                keys=[] if keys is None else [str(k) for k in keys],
                torch_tensors=_tensors(tensors),
                weights_only=bool(weights_only),
                verify_checksums=bool(verify_checksums),
            )
        else:
            if keys is not None:
                raise TypeError(
                    "keys applies to load(path) only; load(state_dict, path) loads its keys")
            if not isinstance(state_dict_or_path, dict):
                raise TypeError(
                    f"load(state_dict, path): state_dict must be a dict, not "
                    f"{type(state_dict_or_path).__name__}"
                )
            args = dict(
                path=_path(path),
                thread_count=_int("thread_count", thread_count, 0),
                allow_partial_load=bool(allow_partial_load),
                torch_tensors=_tensors(tensors),
                weights_only=bool(weights_only),
                verify_checksums=bool(verify_checksums),
            )
    except (TypeError, ValueError, ImportError) as e:
        _fail_together(what, group, e)
    if path is None:
        return _dcpp.load_all(progress=progress, process_group=group, **args)
    _dcpp.load_into(state_dict_or_path, progress=progress, process_group=group, **args)
    return None


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    to: Literal["dcp", "safetensors", "torch-save"] = "dcp",
    keys: Iterable[str] | None = None,
    dtype: str | None = None,
    max_shard_size: int | str = 0,
    io_threads: int = 0,
    sync_files: bool = True,
    overwrite: bool = True,
    progress: ProgressCallback | None = None,
) -> Metadata:
    """Rewrites the checkpoint ``src`` (a DCP directory, a safetensors
    directory, a single ``.safetensors`` file or a torch.save file:
    detected) as ``to`` in ``dst``, as ``dcpp convert`` does.

    ``keys``: shell globs over FQNs (``"model.*"``); only matching entries are
    written (a pattern matching nothing raises :class:`InvalidArgumentError`).
    ``dtype`` ("bf16", "f16", "f32", "f64") casts floating tensors.
    To safetensors every selected entry must be a tensor
    (:class:`InvalidArgumentError` lists the others); tensors stream through
    32 MiB buffers per thread, so memory does not grow with the checkpoint.
    To DCP every entry is kept as it was (pickled values as their bytes).
    ``to="torch-save"`` writes ``dst`` as one torch.save file holding the
    nested state dict torch's ``dcp_to_torch_save`` writes, streamed
    through 32 MiB row bands per thread.
    Returns the :class:`Metadata` written.
    """
    return _dcpp.convert(
        _path(src),
        _path(dst),
        to=str(to),
        keys=[] if keys is None else [str(k) for k in ([keys] if isinstance(keys, str) else keys)],
        dtype="" if dtype is None else str(dtype),
        max_shard_size=_byte_size("max_shard_size", max_shard_size),
        io_threads=_int("io_threads", io_threads, 0),
        sync_files=bool(sync_files),
        overwrite=bool(overwrite),
        progress=progress,
    )


def read_metadata(path: str | os.PathLike) -> Metadata:
    """Reads and validates ``path/.metadata`` only (no data files).

    Raises :class:`NotFoundError` when there is no checkpoint at ``path`` and
    :class:`CorruptCheckpointError` when the metadata is damaged.
    """
    return _dcpp.read_metadata(_path(path))


@dataclasses.dataclass(frozen=True)
class VerifyProblem:
    """One damaged thing: an entry (``fqn``), or ``.metadata`` / the sidecar
    checksum file (``fqn == ""``), in ``file`` (relative to the checkpoint)."""

    fqn: str
    file: str
    message: str


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` found. ``ok`` is True when nothing is damaged;
    ``unreferenced_files`` (leftovers of killed or replaced saves) are not
    damage. ``str(report)`` is the text ``dcpp verify`` prints."""

    checkpoint: str
    ok: bool
    checksum_file: str
    entries: int
    items: int
    bytes_read: int
    seconds: float
    problems: list[VerifyProblem]
    unreferenced_files: list[str]
    text: str = dataclasses.field(repr=False, default="")

    def __str__(self) -> str:
        return self.text

    def __bool__(self) -> bool:
        return self.ok


def verify(
    path: str | os.PathLike,
    *,
    thread_count: int = 0,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Reads every byte of every item of the checkpoint at ``path`` and
    checks it, as ``dcpp verify`` does: ``.metadata`` (against the sidecar
    checksum file when there is one), that each tensor's chunks tile it,
    every item's bounds, archive structure, dtype and shape, every zip
    record's CRC-32, zstd frame checksums, and that pickled values decode
    (nothing is executed). Works on checkpoints torch wrote.

    Damage is reported in the returned :class:`VerifyReport` (``report.ok``
    is False, ``report.problems`` names each FQN and file), not raised.
    Raises :class:`NotFoundError` when ``path`` holds no checkpoint.
    """
    d = _dcpp.verify(_path(path), thread_count=_int("thread_count", thread_count, 0),
                     progress=progress)
    return VerifyReport(
        checkpoint=d["checkpoint"],
        ok=d["ok"],
        checksum_file=d["checksum_file"],
        entries=d["entries"],
        items=d["items"],
        bytes_read=d["bytes_read"],
        seconds=d["seconds"],
        problems=[VerifyProblem(**p) for p in d["problems"]],
        unreferenced_files=list(d["unreferenced_files"]),
        text=d["text"],
    )


def known_transforms() -> list[str]:
    """The stream transform descriptors this build reads and writes."""
    return list(_dcpp._known_transforms())


from ._async import AsyncCheckpointer, async_save  # noqa: E402  (uses save's helpers above)
