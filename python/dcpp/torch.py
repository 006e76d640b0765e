"""dcpp as the storage layer of torch.distributed.checkpoint.

:class:`FileSystemWriter` and :class:`FileSystemReader` are drop-in
replacements for torch's classes of the same names: torch keeps its planners,
process groups, resharding and async staging; dcpp does the bytes, in C++,
in parallel, without the GIL::

    import torch.distributed.checkpoint as dcp
    import dcpp.torch

    dcp.save(state_dict, storage_writer=dcpp.torch.FileSystemWriter(path, thread_count=4))
    dcp.load(state_dict, storage_reader=dcpp.torch.FileSystemReader(path))
    dcp.async_save(state_dict, storage_writer=dcpp.torch.FileSystemWriter(path),
                   async_stager=dcpp.torch.Stager())  # short stall: dcpp's staging pool

The checkpoints are torch's format (the same ``.metadata``, the same data
files, named ``__{rank}_{n}.{tag}.distcp`` with a tag unique to each save so
that a save never writes over a file another checkpoint needs): torch's own
FileSystemReader loads what :class:`FileSystemWriter` writes and
:class:`FileSystemReader` loads what torch's FileSystemWriter writes,
including zstd-compressed checkpoints. Unlike torch's, the writer commits
atomically, excludes concurrent saves into one directory and reclaims what
replaced checkpoints and killed saves leave; the reader never unpickles
``.metadata`` (a hostile file cannot run code through it). :class:`ByteShuffle` and
:func:`extension_registry` let stock torch read checkpoints written with
dcpp's ``dcpp.byteshuffle/1`` transform.

A path may also be an S3 location, ``s3://bucket/prefix`` (configured from
the ``AWS_*`` variables, docs/s3.md): the same objects, the same commit
(``.metadata`` written last, one PUT) and lock (a lock object), and torch's
``FsspecReader``/``FsspecWriter`` read and write the same buckets.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import fcntl
import io
import os
import pickle
import secrets
import socket
import stat
import time
import uuid
import weakref
from pathlib import Path
from typing import IO, Any, Sequence

import numpy as np
import torch
from torch.distributed.checkpoint._extension import (
    ExtensionRegistry,
    StreamTransformExtension,
    ZStandard,
)
from torch.distributed.checkpoint.filesystem import (
    FileSystem,
    SerializationFormat,
    _StorageInfo,
)
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from . import _dcpp, _torch_metadata
from ._dcpp import AbortedError, AlreadyExistsError, CorruptCheckpointError, InvalidArgumentError

__all__ = ["FileSystemWriter", "FileSystemReader", "Stager", "HuggingFaceStorageReader",
           "HuggingFaceStorageWriter", "ByteShuffle", "extension_registry"]

_METADATA = ".metadata"
_SUFFIX = ".distcp"
_CHECKSUMS_PREFIX = ".checksums."
_LOCK = ".dcpp.lock"
_DCP_VERSION = "1.0.0"


def _metadata_name(rank: int | None) -> str:
    return _METADATA if rank is None else f"__{rank}{_METADATA}"


def _item_nbytes(item: WriteItem) -> int:
    n = 1
    for s in item.tensor_data.size:
        n *= s
    return n * torch._utils._element_size(item.tensor_data.properties.dtype)


def _split_by_size_and_type(bins: int, items: list[WriteItem]) -> list[list[WriteItem]]:
    """torch's bucketing: byte items round-robin, tensors by size onto the lightest bin."""
    if bins == 1:
        return [items]
    buckets: list[list[WriteItem]] = [[] for _ in range(bins)]
    sizes = [0] * bins
    byte_items = [wi for wi in items if wi.type == WriteItemType.BYTE_IO]
    tensor_items = sorted(
        (wi for wi in items if wi.type != WriteItemType.BYTE_IO), key=_item_nbytes, reverse=True
    )
    for i, wi in enumerate(byte_items):
        buckets[i % bins].append(wi)
    for wi in tensor_items:
        i = min(range(bins), key=sizes.__getitem__)
        buckets[i].append(wi)
        sizes[i] += _item_nbytes(wi)
    return buckets


def _descriptors_from_extensions(extensions: Sequence[StreamTransformExtension]) -> list[str]:
    out = []
    for ex in extensions:
        descriptor = ex.get_descriptor()
        if isinstance(ex, ZStandard) and descriptor == "stream.zstd/1":
            out.append(descriptor)
        elif isinstance(ex, ByteShuffle) and descriptor == "dcpp.byteshuffle/1":
            # dcpp shuffles each item by its own element size; the width the
            # Python object was given only matters to torch's writer.
            out.append(descriptor)
        else:
            raise ValueError(
                f"dcpp cannot apply the extension {type(ex).__name__} "
                f"({descriptor}); it applies {', '.join(_dcpp._known_transforms())}"
            )
    return out


def _read_regular_file(path: str) -> bytes:
    """The bytes of ``path``; refuses anything but a regular file (a FIFO
    would block the reader forever, a device never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CorruptCheckpointError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class _SaveFiles:
    """What the coordinator tells each rank in its SavePlan's storage_data:
    name your data files ``{prefix}{n}.{tag}.distcp``. The tag is new for
    every save, so a save never writes over a file another checkpoint (the
    one it replaces, or a save that was killed) may still need."""

    prefix: str
    tag: str

    def data_file(self, n: int) -> str:
        return f"{self.prefix}{n}.{self.tag}{_SUFFIX}"


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The file names one save owns in the checkpoint directory: all of it
    (``rank`` None, a coordinated save), or one rank's files (torch's
    ``use_collectives=False``, where every rank commits its own
    ``__{rank}.metadata``)."""

    rank: int | None

    @property
    def metadata(self) -> str:
        return _metadata_name(self.rank)

    @property
    def lock(self) -> str:
        return _LOCK if self.rank is None else f"__{self.rank}{_LOCK}"

    def metadata_tmp(self, tag: str) -> str:
        return f"{self.metadata}.{tag}.tmp"

    @staticmethod
    def data_prefix(rank: int) -> str:
        return f"__{rank}_"

    def reclaimable(self, name: str) -> bool:
        """A data file or temporary metadata of a save in this layout's scope."""
        data = "__" if self.rank is None else f"__{self.rank}_"
        return (
            name.startswith(data) and name.endswith(_SUFFIX) and len(name) > len(data + _SUFFIX)
        ) or (name.startswith(self.metadata) and name.endswith(".tmp"))

    def is_checksum_file(self, name: str) -> bool:
        """A sidecar checksum file (``.checksums.<save_id>``, see
        docs/format.md), written only by the coordinator of a collective save."""
        return self.rank is None and name.startswith(_CHECKSUMS_PREFIX)


def _new_tag(names: Sequence[str]) -> str:
    """A random tag that none of ``names`` (the location's entries) carries yet."""
    while True:
        tag = secrets.token_hex(4)
        if not any(f".{tag}." in name for name in names):
            return tag


def _holder_line(tag: str) -> str:
    """Who holds a lock: ``pid=<pid> host=<hostname> started=<UTC ISO-8601>
    save=<tag>``, the C++ Save's line (an object store's lock parses the pid
    and host to take over from a dead holder of this host)."""
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"pid={os.getpid()} host={socket.gethostname()} started={started} save={tag}"


_LOCK_ADVICE = (
    "Another save is writing this checkpoint: wait for it to finish, save elsewhere, "
    "or set lock_timeout to wait for it. The lock is released when its holder exits, "
    "so a holder that is gone never blocks a save"
)


class _DirectoryLock:
    """An exclusive lock on a checkpoint directory, held by the one process
    that commits a save (torch's coordinator) from global planning until its
    ``finish`` ends.

    The protocol is the C++ Save's: ``flock(LOCK_EX | LOCK_NB)`` on the file
    ``.dcpp.lock`` in the directory (created if missing, never removed); the
    holder then writes one line naming itself, ``pid=<pid> host=<hostname>
    started=<UTC ISO-8601> save=<tag>``, which a save that finds the lock
    taken quotes in its error (an empty file is read again for a moment: the
    holder has not written its line yet). Releasing empties the file (which
    the C++ Save does not: harmless, its line is then just stale), then
    closes the descriptor, which drops the lock: on :meth:`release`, when
    this object is collected (a save that failed on another rank never
    reaches ``finish``); a process that dies drops it too, leaving its line
    until the next holder overwrites it. Locks exclude across processes and
    across threads of one process.
    """

    def __init__(self, path: str, tag: str, timeout: float) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
        fd = os.open(path, flags, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CorruptCheckpointError(f"{path} (the lock file) is not a regular file")
            self._wait(fd, path, timeout)
            line = _holder_line(tag) + "\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, line.encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._close = weakref.finalize(self, _DirectoryLock._unlock, fd)

    @staticmethod
    def _unlock(fd: int) -> None:
        # Still holding the lock: clear the line, so that no later contender
        # reads it as the name of a holder that has gone.
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)

    @staticmethod
    def _wait(fd: int, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.25)
        # The C++ Save's message, but for the option's name.
        holder = _DirectoryLock._holder(path)
        waited = f"; still held after waiting {timeout:g} s" if timeout > 0 else ""
        raise AbortedError(
            f"{os.path.dirname(path)} is locked by another save ({path}: {holder}){waited}. "
            + _LOCK_ADVICE
        )

    @staticmethod
    def _holder(path: str) -> str:
        """The holder's line. A holder names itself just after it locks: an
        empty file is read again for a moment."""
        deadline = time.monotonic() + 1.0
        while True:
            try:
                with open(path, "rb") as f:
                    line = f.read(4096).decode(errors="replace").strip()
            except OSError as e:
                return f"a holder whose line is unreadable ({e})"
            if line or time.monotonic() > deadline:
                return line or "holder not recorded yet"
            time.sleep(0.01)

    def release(self) -> None:
        self._close()  # closes the descriptor once, however often called


class _StorageLock:
    """The lock of a location reached through dcpp's storage layer (an
    object store): the C++ Save's protocol, ``Storage::TryLock`` (on S3 a
    lock object created with a conditional PUT, holding the holder's line,
    deleted on release; see docs/s3.md), retried until ``timeout``. Released
    by :meth:`release` or when this object is collected; a process that dies
    leaves an S3 lock object behind, which the next save on the same host
    takes over and a save on another host reports, naming the object."""

    def __init__(self, location: "_StorageLocation", name: str, tag: str, timeout: float) -> None:
        line = _holder_line(tag)
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            try:
                lock = location.storage.try_lock(name, line)
                break
            except AbortedError as e:
                left = deadline - time.monotonic()
                if left <= 0:
                    waited = f"; still held after waiting {timeout:g} s" if timeout > 0 else ""
                    raise AbortedError(f"{e}{waited}. {_LOCK_ADVICE} (on object storage, "
                                       "only a holder on this host: see the lock object "
                                       "named above)") from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.25)
        self._close = weakref.finalize(self, lock.release)

    def release(self) -> None:
        self._close()


class _LocalDirectory:
    """A checkpoint directory through Python's own file functions: what the
    writer and reader do besides the data files (which dcpp's C++ core
    writes and reads for every location)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def describe(self, name: str) -> str:
        return os.path.join(self.root, name)

    def create(self) -> None:
        Path(self.root).mkdir(parents=True, exist_ok=True)

    def exists(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.root, name))

    def names(self) -> list[str]:
        """The entries; none when the directory is missing."""
        try:
            return os.listdir(self.root)
        except FileNotFoundError:
            return []

    def remove_quietly(self, name: str) -> None:
        try:
            os.remove(os.path.join(self.root, name))
        except OSError:
            pass

    def read(self, name: str) -> bytes:
        return _read_regular_file(os.path.join(self.root, name))

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        with open(os.path.join(self.root, name), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def lock(self, name: str, tag: str, timeout: float) -> "_DirectoryLock | _StorageLock":
        return _DirectoryLock(os.path.join(self.root, name), tag, timeout)

    def write_checksum_file(self, data: bytes, sync: bool) -> str | None:
        return _dcpp._write_checksum_file(self.root, data, sync=sync)

    def commit(self, name: str, tmp: str, data: bytes, sync: bool) -> None:
        """Publishes ``data`` as ``name`` atomically: written to ``tmp``,
        renamed over ``name`` (fsyncs first and after, with ``sync``)."""
        tmp_path = os.path.join(self.root, tmp)
        with open(tmp_path, "xb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp_path, os.path.join(self.root, name))
        if sync:
            _fsync_dir(self.root)


class _StorageLocation:
    """A checkpoint location given as a URL (``s3://bucket/prefix``,
    ``file://dir``), reached through dcpp's storage layer
    (``_dcpp._Storage``, what ``dcpp.save`` uses): the same operations as
    :class:`_LocalDirectory`. On an object store entries appear whole when
    written and there is no rename: ``.metadata`` is written directly, one
    PUT, after every data object is complete."""

    def __init__(self, location: str) -> None:
        self.root = location
        self.storage = _dcpp._Storage(location)

    def describe(self, name: str) -> str:
        return self.storage.describe(name)

    def create(self) -> None:
        self.storage.create_location()

    def exists(self, name: str) -> bool:
        return self.storage.exists(name)

    def names(self) -> list[str]:
        try:
            return self.storage.list()
        except FileNotFoundError:  # nothing under the prefix yet
            return []

    def remove_quietly(self, name: str) -> None:
        try:
            self.storage.remove(name)
        except (OSError, _dcpp.DcppError):
            pass

    def read(self, name: str) -> bytes:
        return self.storage.read(name)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        return self.storage.read(name, offset, length)

    def lock(self, name: str, tag: str, timeout: float) -> "_DirectoryLock | _StorageLock":
        return _StorageLock(self, name, tag, timeout)

    def write_checksum_file(self, data: bytes, sync: bool) -> str | None:
        return _dcpp._write_checksum_file(self.root, data, sync=sync)

    def commit(self, name: str, tmp: str, data: bytes, sync: bool) -> None:
        if self.storage.publishes_on_close:
            self.storage.write(name, data, sync=sync)  # whole or not at all
            return
        try:
            self.storage.write(tmp, data, sync=sync)
            self.storage.rename(tmp, name)
        except BaseException:
            self.remove_quietly(tmp)
            raise
        if sync:
            self.storage.sync_directory()


def _is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a location by URL (``s3://...``): reached
    through dcpp's storage layer rather than Python's file functions."""
    return isinstance(path, str) and "://" in path


def _location(path: str | os.PathLike) -> "_LocalDirectory | _StorageLocation":
    if _is_url(path):
        return _StorageLocation(path)  # type: ignore[arg-type]
    return _LocalDirectory(os.fspath(path))


def _reclaim(location: "_LocalDirectory | _StorageLocation", layout: _Layout,
             referenced: set[str], sidecar: str | None = None) -> None:
    """Removes the data files and temporary metadata in ``layout``'s scope
    that the committed metadata does not reference, and sidecar checksum
    files other than ``sidecar`` (the committed one's): the replaced
    checkpoint's and those of killed saves. Best effort: the checkpoint is
    committed, and whatever stays is reclaimed by the next save."""
    for name in location.names():
        stale_sidecar = layout.is_checksum_file(name) and name != sidecar
        if (layout.reclaimable(name) and name not in referenced) or stale_sidecar:
            location.remove_quietly(name)


class _FileSystemPath:
    """What torch asks a filesystem storage writer or reader about its path."""

    path: str | os.PathLike

    @property
    def checkpoint_id(self) -> str | os.PathLike:
        return self.path

    def _init_path(self, path: str | os.PathLike) -> str | os.PathLike:
        # A URL stays a string (a Path would fold "s3://" into "s3:/").
        return path if _is_url(path) else self.fs.init_path(path)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        if _is_url(checkpoint_id):
            return str(checkpoint_id).startswith(("s3://", "file://"))
        return FileSystem.validate_checkpoint_id(checkpoint_id)


class FileSystemWriter(_FileSystemPath, StorageWriter):
    """torch.distributed.checkpoint StorageWriter whose I/O runs in dcpp's C++ core.

    The positional arguments are torch's FileSystemWriter's; the rest are
    keyword-only.

    Saves are atomic and exclusive, as dcpp's own save: every save writes its
    data files under names of its own (``__{rank}_{n}.{tag}.distcp``, a
    random tag per save) and its metadata to ``.metadata.{tag}.tmp``, then
    commits by renaming that to ``.metadata`` (fsyncs first and after, with
    ``sync_files``). Until then a checkpoint already in ``path`` stays intact
    and loadable; after it, the coordinator removes the data files and
    temporary metadata the new ``.metadata`` does not reference (the replaced
    checkpoint's and those of killed saves), and nothing else. From global
    planning until that is done the coordinator holds an exclusive lock on
    ``path/.dcpp.lock`` (see ``lock_timeout``), so saves through this writer
    or dcpp's own never run into one directory at once (torch's writer takes
    no lock). Without collectives
    (``dcp.save(..., use_collectives=False)``) each rank does all of this for
    its own files, ``__{rank}.metadata`` and the lock ``__{rank}.dcpp.lock``.

    On an object store (``s3://bucket/prefix``) an object appears only when
    it is complete, and there is no rename: ``.metadata`` is written
    directly, one PUT, after every data object is published, which is the
    same commit; a save that fails leaves no ``.metadata``. The lock is the
    object ``.dcpp.lock``, created with a conditional PUT and deleted when
    the save ends (a holder that died on another host leaves it: the error
    names the object to delete).

    Args:
        path: the checkpoint directory (created if needed), or
            ``s3://bucket/prefix`` (the bucket must exist).
        single_file_per_rank: True (default): ``thread_count`` data files per
            rank; False: one file per item. As torch's writer.
        sync_files: fsync every data file, the metadata and the directory.
        thread_count: data files per rank (torch's meaning of the option);
            >= 1.
        io_threads: threads writing this rank's files, without the GIL: the
            files in parallel, and several threads within one file where
            they outnumber the files (uncompressed items go straight to
            offsets computed beforehand). 0 (default): min(8, CPUs), and at
            least ``thread_count``.
        per_thread_copy_ahead: accepted for compatibility with torch's
            writer; unused (tensors on other devices are copied to the CPU
            before writing starts).
        cache_staged_state_dict: accepted for compatibility with torch's
            writer; unused (this writer does not stage for dcp.async_save).
        overwrite: False raises :class:`dcpp.AlreadyExistsError` (a
            FileExistsError) in planning when ``path`` holds a checkpoint.
        serialization_format: only torch's default,
            ``SerializationFormat.TORCH_SAVE``.
        lock_timeout: seconds the coordinator waits for another save to
            release the directory; 0 (default): fail at once. Then
            :class:`dcpp.AbortedError` names the holder (its pid, host, start
            time and save tag).
        transforms: stream transforms by descriptor, in application order,
            e.g. ``["stream.zstd/1"]`` (torch reads it with zstandard
            installed) or ``["dcpp.byteshuffle/1", "stream.zstd/1"]`` (torch
            reads it through :func:`extension_registry`).
        compression_level: zstd level, 1 (fast) to 19.
        checksums: CRC-32 of each tensor archive record, as torch.save writes.
        _extensions: torch-style extension objects (``ZStandard()``,
            :class:`ByteShuffle`), mapped to ``transforms``; for drop-in use.

    Raises the dcpp exceptions (see :mod:`dcpp`) from ``write_data``; under
    ``dcp.save`` they reach the caller inside torch's CheckpointException.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        single_file_per_rank: bool = True,
        sync_files: bool = True,
        thread_count: int = 1,
        per_thread_copy_ahead: int = 10_000_000,
        cache_staged_state_dict: bool = False,
        overwrite: bool = True,
        _extensions: Sequence[StreamTransformExtension] | None = None,
        serialization_format: SerializationFormat = SerializationFormat.TORCH_SAVE,
        *,
        transforms: Sequence[str] | None = None,
        compression_level: int = 1,
        checksums: bool = True,
        io_threads: int = 0,
        lock_timeout: float = 0.0,
    ) -> None:
        super().__init__()
        if serialization_format != SerializationFormat.TORCH_SAVE:
            raise ValueError(f"dcpp writes torch.save items only, not {serialization_format}")
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) \
                or not lock_timeout >= 0:
            raise ValueError(f"lock_timeout must be a number of seconds >= 0, got {lock_timeout!r}")
        if isinstance(thread_count, bool) or not isinstance(thread_count, int) or thread_count < 1:
            raise ValueError(f"thread_count must be an int >= 1, got {thread_count!r}")
        if isinstance(io_threads, bool) or not isinstance(io_threads, int) or io_threads < 0:
            raise ValueError(f"io_threads must be an int >= 0, got {io_threads!r}")
        if transforms is not None and _extensions is not None:
            raise ValueError("pass transforms or _extensions, not both")
        if isinstance(transforms, str):
            raise TypeError("transforms must be a sequence of descriptors, e.g. ['stream.zstd/1']")
        self.fs = FileSystem()
        self.path = self._init_path(path)
        self.single_file_per_rank = single_file_per_rank
        self.sync_files = sync_files
        self.thread_count = thread_count
        self.io_threads = max(io_threads or min(8, os.cpu_count() or 1), thread_count)
        self.per_thread_copy_ahead = per_thread_copy_ahead
        self.overwrite = overwrite
        self.transforms = (
            _descriptors_from_extensions(_extensions)
            if _extensions is not None
            else list(transforms or ())
        )
        self.compression_level = compression_level
        self.checksums = checksums
        self.lock_timeout = float(lock_timeout)
        self.save_id = str(uuid.uuid4())
        self.rank: int | None = None
        self.use_collectives = True
        self._lock: _DirectoryLock | None = None  # held by the coordinator during a save
        self._tag = ""  # the tag of the save this coordinator prepared

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        self._release_lock()
        if checkpoint_id:
            self.path = self._init_path(checkpoint_id)
        self.save_id = str(uuid.uuid4())

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        # A lock still held here is left from an earlier save through this
        # writer that failed on another rank (torch then skips finish).
        self._release_lock()
        self.rank = kwargs.get("rank")
        self.use_collectives = kwargs.get("use_collectives", True)

    def _layout(self) -> _Layout:
        return _Layout(None if self.use_collectives or self.rank is None else self.rank)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        location = _location(self.path)
        location.create()
        # torch's early check, on every rank; the coordinator checks again
        # under the lock.
        existing = _metadata_name(None if self.use_collectives else 0)
        if not self.overwrite and location.exists(existing):
            raise AlreadyExistsError(f"{self.path} already holds a checkpoint and overwrite=False")
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """On the coordinator: locks the directory, picks this save's tag and
        tells every rank the names of its data files."""
        location = _location(self.path)
        layout = self._layout()
        self._tag = _new_tag(location.names())
        self._lock = location.lock(layout.lock, self._tag, self.lock_timeout)
        try:
            if not self.overwrite and location.exists(layout.metadata):
                raise AlreadyExistsError(
                    f"{location.root} already holds a checkpoint and overwrite=False")
        except BaseException:
            self._release_lock()
            raise
        ranks = [layout.rank] if layout.rank is not None else range(len(plans))
        return [
            dataclasses.replace(plan, storage_data=_SaveFiles(layout.data_prefix(r), self._tag))
            for r, plan in zip(ranks, plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        try:
            return self._write_data(plan, planner)
        except BaseException:
            self._release_lock()  # torch calls nothing more on a failed save
            raise

    def _write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        save_files: _SaveFiles = plan.storage_data
        if self.single_file_per_rank:
            buckets = _split_by_size_and_type(self.thread_count, plan.items)
        else:
            buckets = [[item] for item in plan.items]
        # Empty buckets still get their (empty) file, as torch's writer does.

        files = []  # (name, [(fqn, kind, data)]) for the C++ writer
        order = []  # the WriteItems of each file, in the order they are written
        for i, bucket in enumerate(buckets):
            name = save_files.data_file(i)
            # As torch's writer: a file's pickled values first, then its tensors.
            written = [wi for wi in bucket if wi.type == WriteItemType.BYTE_IO]
            written += [wi for wi in bucket if wi.type != WriteItemType.BYTE_IO]
            items = []
            for wi in written:
                data = planner.resolve_data(wi)
                if wi.type == WriteItemType.BYTE_IO:
                    if not isinstance(data, io.BytesIO):
                        raise TypeError(f"{wi.index.fqn}: resolve_data must give io.BytesIO")
                    items.append((wi.index.fqn, "bytes", data.getbuffer()))
                else:
                    t = data.detach()
                    if t.device.type != "cpu":
                        t = t.cpu()
                    if t.untyped_storage().nbytes() != t.nbytes:
                        t = t.clone()  # torch's writer saves only the view
                    items.append((wi.index.fqn, "tensor", t))
            files.append((name, items))
            order.append(written)

        root = os.fspath(self.path)  # a directory or a URL: the C++ core opens either
        try:
            results = _dcpp._write_files(
                root,
                files,
                checksums=self.checksums,
                sync=self.sync_files,
                transforms=self.transforms,
                compression_level=self.compression_level,
                threads=self.io_threads,
            )
        except BaseException:
            location = _location(self.path)
            for name, _ in files:
                location.remove_quietly(name)
            raise
        finally:
            # Release the BytesIO buffers.
            for _, items in files:
                for item in items:
                    if isinstance(item[2], memoryview):
                        item[2].release()

        write_results = []
        for (name, _), written, per_file in zip(files, order, results):
            for wi, (offset, length, descriptors) in zip(written, per_file):
                write_results.append(
                    WriteResult(
                        index=wi.index,
                        size_in_bytes=length,
                        storage_data=_StorageInfo(
                            name, offset, length, transform_descriptors=descriptors or None
                        ),
                    )
                )
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(write_results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """On the coordinator: commits the checkpoint, reclaims what the
        replaced checkpoint and killed saves left, and releases the lock.

        ``.metadata`` (torch's pickle) is written to ``.metadata.{tag}.tmp``
        and renamed over ``.metadata``: the commit point.
        """
        try:
            metadata.version = _DCP_VERSION
            metadata.storage_data = {wr.index: wr.storage_data for rs in results for wr in rs}
            metadata.storage_meta = self.storage_meta()
            location = _location(self.path)
            layout = self._layout()
            data = pickle.dumps(metadata)
            # The sidecar checksum file covers these exact bytes and the
            # pickled values; it goes first, named after this save, so a
            # crash before the commit leaves it merely unreferenced.
            sidecar = None
            if layout.rank is None:
                sidecar = location.write_checksum_file(data, self.sync_files)
            location.commit(layout.metadata, layout.metadata_tmp(self._tag), data,
                            self.sync_files)
            referenced = {info.relative_path for info in metadata.storage_data.values()}
            _reclaim(location, layout, referenced, sidecar)
        finally:
            self._release_lock()

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.checkpoint_id, save_id=self.save_id)



class FileSystemReader(_FileSystemPath, StorageReader):
    """torch.distributed.checkpoint StorageReader whose I/O runs in dcpp's C++ core.

    Each saved chunk is read once, whatever number of requests it feeds,
    and only the byte ranges the requests need when it is not compressed;
    tensors are filled in place (no torch.load), in parallel on
    ``thread_count`` threads (0: min(8, CPUs)) without the GIL. Items whose
    transforms dcpp does not know are read the way torch reads them,
    through ``_extension_registry`` (as torch's reader's argument). ``path``
    is a checkpoint directory or ``s3://bucket/prefix``.

    Corrupt data raises :class:`dcpp.CorruptCheckpointError`; a missing or
    unreadable ``.metadata`` raises FileNotFoundError /
    :class:`dcpp.CorruptCheckpointError`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        _extension_registry: ExtensionRegistry | None = None,
        *,
        thread_count: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(thread_count, bool) or not isinstance(thread_count, int) or thread_count < 0:
            raise ValueError(f"thread_count must be an int >= 0, got {thread_count!r}")
        self.fs = FileSystem()
        self.path = self._init_path(path)
        self.thread_count = thread_count or min(8, os.cpu_count() or 1)
        self.extension_registry = _extension_registry or extension_registry()
        self.storage_data: dict[MetadataIndex, Any] = {}
        self.metadata: Metadata | None = None
        self.load_id = str(uuid.uuid4())
        self.rank: int | None = None
        self.use_collectives = True
        # From the last read_metadata: the Metadata it returned and the
        # tensors in it whose chunks do not tile them (FQN -> message).
        self._decoded: Metadata | None = None
        self._bad_tilings: dict[str, str] = {}

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        self.storage_data = {}
        self.metadata = None
        if checkpoint_id:
            self.path = self._init_path(checkpoint_id)
        self.load_id = str(uuid.uuid4())

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """``.metadata`` (or ``__{rank}.metadata``) as torch's Metadata.

        Parsed by dcpp's safe decoder, never unpickled (see
        :mod:`dcpp._torch_metadata`): a file holding anything but DCP's
        metadata classes, or chunks of the wrong rank or outside their
        tensor, raises :class:`dcpp.CorruptCheckpointError`.
        """
        location = _location(self.path)
        name = _metadata_name(kwargs.get("rank"))
        metadata, self._bad_tilings = _torch_metadata.decode(location.read(name),
                                                             location.describe(name))
        self._decoded = metadata
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        if metadata.storage_data is None:
            raise CorruptCheckpointError("the checkpoint metadata has no storage_data")
        self.metadata = metadata
        self.storage_data = metadata.storage_data
        self.rank = kwargs.get("rank")
        self.use_collectives = kwargs.get("use_collectives", True)

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        # As dcpp.load: a tensor whose saved chunks overlap or leave holes
        # cannot be loaded (torch's reader would leave the holes as they were).
        if self.metadata is self._decoded:
            for req in plan.items:
                problem = self._bad_tilings.get(req.storage_index.fqn)
                if problem is not None and req.type != LoadItemType.BYTE_IO:
                    raise CorruptCheckpointError(problem)
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def _chunk(self, index: MetadataIndex):
        md = self.metadata.state_dict_metadata[index.fqn]
        chunks = md.chunks
        offsets = tuple(index.offset)
        if index.index is not None and 0 <= index.index < len(chunks):
            c = chunks[index.index]
            if tuple(c.offsets) == offsets:
                return md, c
        for c in chunks:
            if tuple(c.offsets) == offsets:
                return md, c
        raise CorruptCheckpointError(
            f"'{index.fqn}': the metadata has no chunk at offsets {list(offsets)}"
        )

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        known = set(_dcpp._known_transforms())
        chunk_jobs: dict[tuple, list] = {}
        byte_jobs, byte_reqs = [], []
        committed = []  # (ReadItem, destination tensor)
        staged = []  # (destination, CPU tensor of the saved dtype filled for it)
        fallback = []  # items whose transforms only Python extensions know
        for req in plan.items:
            sinfo = self.storage_data[req.storage_index]
            descriptors = list(getattr(sinfo, "transform_descriptors", None) or ())
            if any(d not in known for d in descriptors):
                fallback.append(req)
                continue
            storage = (sinfo.relative_path, sinfo.offset, sinfo.length, descriptors,
                       bool(getattr(sinfo, "raw", False)))
            fqn = req.storage_index.fqn
            if req.type == LoadItemType.BYTE_IO:
                # Decompression cap against hostile data, as dcpp's loader uses.
                cap = min(sinfo.length, 1 << 32) * 64 + (64 << 20)
                byte_jobs.append((fqn, storage, cap))
                byte_reqs.append(req)
                continue
            md, chunk = self._chunk(req.storage_index)
            target = planner.resolve_tensor(req).detach()
            if list(target.shape) != list(req.lengths):
                raise ValueError(
                    f"req {req.storage_index} mismatch sizes {tuple(target.shape)} vs "
                    f"{tuple(req.lengths)}"
                )
            dst = target
            if target.dtype != md.properties.dtype:
                # torch's reader converts through copy_: so do we.
                dst = torch.empty(tuple(req.lengths), dtype=md.properties.dtype)
                staged.append((target, dst))
            key = (fqn, tuple(chunk.offsets))
            job = chunk_jobs.get(key)
            if job is None:
                job = [fqn, str(md.properties.dtype), list(chunk.offsets), list(chunk.sizes),
                       storage, []]
                chunk_jobs[key] = job
            box = [o + s for o, s in zip(chunk.offsets, req.storage_offsets)]
            job[5].append((dst, box, list(req.lengths)))
            committed.append((req, target))

        root = os.fspath(self.path)  # a directory or a URL: the C++ core opens either
        blobs = _dcpp._read(root, list(chunk_jobs.values()), byte_jobs, threads=self.thread_count)
        for target, dst in staged:
            target.copy_(dst)
        for req, target in committed:
            planner.commit_tensor(req, target)
        for req, blob in zip(byte_reqs, blobs):
            planner.load_bytes(req, io.BytesIO(blob))
        for req in fallback:
            self._read_with_extensions(req, planner)

        fut: Future = Future()
        fut.set_result(None)
        return fut

    def _read_with_extensions(self, req: ReadItem, planner: LoadPlanner) -> None:
        """torch's way, for items stored through transforms only Python knows."""
        sinfo = self.storage_data[req.storage_index]
        data = _location(self.path).read_range(sinfo.relative_path, sinfo.offset, sinfo.length)
        stream: IO[bytes] = io.BytesIO(data)
        for ex in self.extension_registry.from_descriptor_list(sinfo.transform_descriptors):
            if isinstance(ex, StreamTransformExtension):
                stream = ex.transform_from(stream)
        data = io.BytesIO(stream.read(-1))
        if req.type == LoadItemType.BYTE_IO:
            planner.load_bytes(req, data)
            return
        from torch.distributed._shard._utils import narrow_tensor_by_index

        tensor = torch.load(data, map_location="cpu", weights_only=True)
        tensor = narrow_tensor_by_index(tensor, req.storage_offsets, req.lengths)
        target = planner.resolve_tensor(req).detach()
        target.copy_(tensor)
        planner.commit_tensor(req, target)



@dataclasses.dataclass(frozen=True)
class _RawStorageInfo:
    """Where a safetensors tensor's bytes are (read as they are, no archive)."""

    relative_path: str
    offset: int
    length: int
    transform_descriptors: tuple = ()
    raw: bool = True


class HuggingFaceStorageReader(FileSystemReader):
    """Drop-in for torch's ``HuggingFaceStorageReader``: loads a Hugging Face
    safetensors directory (``*.safetensors`` with or without
    ``model.safetensors.index.json``, or torch's ``save_distributed`` shards
    with ``DCP_SHARDING_INFO``) through ``dcp.load``, with dcpp's reader.

    The metadata comes from the files' headers (dcpp's parser, which refuses
    damaged headers with :class:`dcpp.CorruptCheckpointError`); each request
    reads only the byte ranges it needs (a row band is one read, a column
    band one read per row), on ``thread_count`` threads (0: min(8, CPUs))
    without the GIL, straight into the destination tensors.
    """

    def __init__(self, path: str | os.PathLike, thread_count: int = 0) -> None:
        super().__init__(path, thread_count=thread_count)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        from torch.distributed.checkpoint.metadata import (
            ChunkStorageMetadata,
            TensorProperties,
            TensorStorageMetadata,
        )

        md = _dcpp.read_metadata(os.fspath(self.path))
        state_dict_metadata = {}
        storage_data = {}
        for e in md.entries:
            chunks = []
            for c in e.chunks:
                chunks.append(ChunkStorageMetadata(offsets=torch.Size(c.offsets),
                                                   sizes=torch.Size(c.sizes)))
                s = c.storage
                storage_data[MetadataIndex(fqn=e.fqn, offset=list(c.offsets))] = _RawStorageInfo(
                    s.relative_path, s.offset, s.length, tuple(s.transform_descriptors), s.raw)
            state_dict_metadata[e.fqn] = TensorStorageMetadata(
                properties=TensorProperties(dtype=getattr(torch, e.dtype)),
                size=torch.Size(e.size),
                chunks=chunks,
            )
        metadata = Metadata(state_dict_metadata=state_dict_metadata, storage_data=storage_data)
        metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        self._decoded = metadata
        self._bad_tilings = {}
        return metadata

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return os.path.isdir(checkpoint_id)


class HuggingFaceStorageWriter(_FileSystemPath, StorageWriter):
    """Drop-in for torch's ``HuggingFaceStorageWriter`` in its rank-0 form
    (one process saving whole tensors): ``dcp.save(state_dict,
    storage_writer=HuggingFaceStorageWriter(path, fqn_to_index_mapping))``
    writes ``model-0000i-of-0000N.safetensors`` and
    ``model.safetensors.index.json`` with dcpp's writer (headers first, each
    tensor straight from its memory by positional writes, files in
    parallel), byte-identical per file to what the safetensors package
    writes. ``thread_count`` is the number of writer threads.

    ``save_distributed=True`` (each rank's shards, then consolidation) is not
    offered here: use ``dcpp.save(..., format="safetensors")`` with a process
    group, or save DCP and ``dcpp.convert(..., to="safetensors")``. Values
    other than tensors raise :class:`dcpp.InvalidArgumentError` naming them.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fqn_to_index_mapping: dict[str, int] | None = None,
        thread_count: int = 1,
        save_distributed: bool = False,
        enable_consolidation: bool = False,
        thread_count_consolidation: int = 1,
    ) -> None:
        super().__init__()
        if save_distributed or enable_consolidation:
            raise NotImplementedError(
                "dcpp.torch.HuggingFaceStorageWriter writes rank-0 saves; for a distributed "
                "save use dcpp.save(..., format='safetensors') with a process group, or save DCP "
                "and dcpp.convert(src, dst, to='safetensors')")
        self.path = Path(path)
        self.fqn_to_index_mapping = fqn_to_index_mapping
        self.thread_count = max(1, int(thread_count))
        self.is_coordinator = True

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        if checkpoint_id:
            self.path = Path(checkpoint_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return plans

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        from torch.distributed.checkpoint.filesystem import _StorageInfo

        tensors = {}
        others = []
        for item in plan.items:
            if item.type == WriteItemType.BYTE_IO:
                others.append(item.index.fqn)
                continue
            t = planner.resolve_data(item).detach()
            if tuple(item.tensor_data.chunk.sizes) != tuple(item.tensor_data.size):
                raise NotImplementedError(
                    f"'{item.index.fqn}' is a shard: this writer saves whole tensors (rank-0 "
                    "saves); see the class documentation for distributed saves")
            tensors[item.index.fqn] = t.cpu() if t.device.type != "cpu" else t
        if others:
            raise InvalidArgumentError(
                "safetensors holds only tensors; the state dict also has "
                + ", ".join(repr(f) for f in others[:10]))
        results = []
        if tensors:
            md = _dcpp.save(tensors, os.fspath(self.path), thread_count=1,
                            io_threads=self.thread_count, single_file_per_rank=True,
                            sync_files=True, overwrite=True, checksums=False, transforms=[],
                            compression_level=1, dedup_to_lowest_rank=False, progress=None,
                            format="safetensors",
                            fqn_to_file_index=dict(self.fqn_to_index_mapping or {}))
            where = {e.fqn: e.chunks[0].storage for e in md.entries}
            for item in plan.items:
                s = where[item.index.fqn]
                results.append(WriteResult(
                    index=item.index, size_in_bytes=s.length,
                    storage_data=_StorageInfo(s.relative_path, s.offset, s.length)))
        fut: Future = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        # The index was written with the files (model.safetensors.index.json).
        return None

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.checkpoint_id, save_id=str(uuid.uuid4()))

    @property
    def metadata_path(self) -> str:
        return "model.safetensors.index.json"


# --- dcpp.byteshuffle/1 for stock torch ------------------------------------

_SHUFFLE_MAX_WIDTH = 16
_SHUFFLE_MAX_BLOCK_LOG2 = 30
_SHUFFLE_DEFAULT_BLOCK_LOG2 = 18


def _shuffle_blocks(data: np.ndarray, width: int, block: int, inverse: bool) -> np.ndarray:
    """(Un)shuffles ``data`` (uint8) in blocks of ``block`` bytes of ``width``-byte values."""
    out = np.empty_like(data)
    n = data.size
    full = n // block * block
    if full and width > 1:
        count = block // width
        blocks = data[:full].reshape((-1, width, count) if inverse else (-1, count, width))
        out[:full] = blocks.transpose(0, 2, 1).reshape(-1)
    else:
        out[:full] = data[:full]
    tail = data[full:]
    values = tail.size // width * width
    if values and width > 1:
        count = values // width
        shaped = tail[:values].reshape((width, count) if inverse else (count, width))
        out[full : full + values] = shaped.T.reshape(-1)
    else:
        out[full : full + values] = tail[:values]
    out[full + values :] = tail[values:]
    return out


class _ShuffleWriter(io.RawIOBase):
    def __init__(self, output: IO[bytes], width: int, block_log2: int) -> None:
        super().__init__()
        self._output = output
        self._width = width
        self._block = width << block_log2
        self._buffer = bytearray()
        output.write(bytes([width, block_log2]))

    def writable(self) -> bool:
        return True

    def _emit(self, block: bytes) -> None:
        data = np.frombuffer(block, dtype=np.uint8)
        self._output.write(_shuffle_blocks(data, self._width, self._block, False).tobytes())

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        self._buffer += view
        while len(self._buffer) >= self._block:
            self._emit(bytes(self._buffer[: self._block]))
            del self._buffer[: self._block]
        return len(view)

    def close(self) -> None:
        if not self.closed:
            if self._buffer:
                self._emit(bytes(self._buffer))
                self._buffer.clear()
            self._output.close()
        super().close()


def _unshuffle(stored: bytes) -> bytes:
    if len(stored) < 2:
        raise ValueError("dcpp.byteshuffle/1: the stream is shorter than its 2-byte header")
    width, block_log2 = stored[0], stored[1]
    if not 1 <= width <= _SHUFFLE_MAX_WIDTH or block_log2 > _SHUFFLE_MAX_BLOCK_LOG2:
        raise ValueError(
            f"dcpp.byteshuffle/1: invalid header (value width {width}, block 2^{block_log2})"
        )
    data = np.frombuffer(stored, dtype=np.uint8, offset=2)
    return _shuffle_blocks(data, width, width << block_log2, True).tobytes()


class ByteShuffle(StreamTransformExtension):
    """torch extension for dcpp's ``dcpp.byteshuffle/1`` stream transform.

    Reading (``transform_from``) undoes the shuffle of checkpoints dcpp wrote
    with ``transforms=["dcpp.byteshuffle/1", "stream.zstd/1"]``; register it
    with :func:`extension_registry` so stock torch can load them::

        reader = torch.distributed.checkpoint.FileSystemReader(
            path, _extension_registry=dcpp.torch.extension_registry())

    Writing (``transform_to``) shuffles ``width``-byte values (torch's
    writer does not tell an extension the element size, so pick the width
    of the tensors that matter, e.g. 2 for bfloat16; any width is valid).
    The stream: a 2-byte header [width][block exponent e], then blocks of
    ``width << e`` bytes, each holding byte 0 of every value, then byte 1,
    ...; the last block may be shorter, its bytes past the last whole value
    unchanged (docs/format.md, "Stream transforms").
    """

    def __init__(self, width: int = 1, block_log2: int = _SHUFFLE_DEFAULT_BLOCK_LOG2) -> None:
        super().__init__()
        if not 1 <= width <= _SHUFFLE_MAX_WIDTH:
            raise ValueError(f"width must be in [1, {_SHUFFLE_MAX_WIDTH}], got {width}")
        if not 0 <= block_log2 <= 24:
            raise ValueError(f"block_log2 must be in [0, 24], got {block_log2}")
        self.width = width
        self.block_log2 = block_log2

    @staticmethod
    def registry_name() -> str:
        return "dcpp.byteshuffle"

    @staticmethod
    def from_descriptor(version: str) -> "ByteShuffle":
        if version.partition(".")[0] != "1":
            raise ValueError(f"Unknown extension version dcpp.byteshuffle/{version}")
        return ByteShuffle()

    def get_descriptor(self) -> str:
        return f"{self.registry_name()}/1"

    def transform_to(self, output: IO[bytes]) -> IO[bytes]:
        return _ShuffleWriter(output, self.width, self.block_log2)  # type: ignore[return-value]

    def transform_from(self, input: IO[bytes]) -> IO[bytes]:
        return io.BytesIO(_unshuffle(input.read(-1)))


def extension_registry() -> ExtensionRegistry:
    """torch's ExtensionRegistry with :class:`ByteShuffle` registered (zstd is built in)."""
    registry = ExtensionRegistry()
    registry.register(ByteShuffle)
    return registry


class Stager:
    """torch's ``AsyncStager`` for ``dcp.async_save``, staging into dcpp's pool::

        stager = dcpp.torch.Stager()
        fut = dcp.async_save(sd, storage_writer=dcpp.torch.FileSystemWriter(path),
                             async_stager=stager)
        ...
        stager.close()  # after the last save

    ``stage`` copies every tensor of the state dict into host memory that
    dcpp keeps and reuses across saves (on C++ threads, without the GIL, big
    tensors split across threads) and returns the same structure holding the
    copies; DTensor leaves keep their mesh and placements around a staged
    local tensor; other values are deep-copied. Memory still referenced by a
    save in flight is never reused: the pool then maps more (at most
    ``max_staging_bytes`` in all, 0 = no cap). Tensors on other devices are
    copied to the CPU through torch first.
    """

    # stage() is synchronous: nothing for torch to wait on afterwards.
    _synchronize_after_execute = False

    def __init__(self, *, max_staging_bytes: int = 0, lock_memory: bool = False,
                 staging_threads: int = 0) -> None:
        from . import _int

        self._pool = _dcpp._StagingPool(
            max_bytes=_int("max_staging_bytes", max_staging_bytes, 0), lock_memory=bool(lock_memory)
        )
        self._threads = _int("staging_threads", staging_threads, 0)

    @property
    def should_synchronize_after_execute(self) -> bool:
        return False

    def stage(self, state_dict: dict) -> dict:
        if self._pool is None:
            raise ValueError("this Stager is closed")
        tensors: list = []
        skeleton = _collect(state_dict, tensors)
        staged = self._pool.stage([t[0] for t in tensors], self._threads) if tensors else []
        return _rebuild(skeleton, staged, tensors)

    def synchronize_staging(self) -> None:
        """Nothing to wait for: :meth:`stage` returns staged."""

    def close(self) -> None:
        """Drops the pool (memory still referenced by staged tensors stays
        valid until they are gone)."""
        self._pool = None

    @property
    def pool_bytes(self) -> int:
        return 0 if self._pool is None else self._pool.total_bytes


class _Slot:
    """Where a staged tensor goes back in the rebuilt tree."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _collect(obj: Any, tensors: list) -> Any:
    """The tree with each tensor replaced by a _Slot, appending (tensor, wrap)
    to ``tensors``; ``wrap`` rebuilds a DTensor around its staged local."""
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        mesh, placements, shape, stride = obj.device_mesh, obj.placements, obj.shape, obj.stride()

        def wrap(local: torch.Tensor) -> DTensor:
            return DTensor.from_local(local, mesh, placements, run_check=False, shape=shape,
                                      stride=stride)

        tensors.append((obj.to_local().detach(), wrap, False))
        return _Slot(len(tensors) - 1)
    if type(obj) is torch.Tensor or type(obj) is torch.nn.Parameter:
        # requires_grad is kept: DCP records it in the metadata.
        tensors.append((obj.detach(), None, obj.requires_grad))
        return _Slot(len(tensors) - 1)
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) is not dict else {}
        for k, v in obj.items():
            out[k] = _collect(v, tensors)
        return out
    if type(obj) in (list, tuple):
        return type(obj)(_collect(v, tensors) for v in obj)
    return copy.deepcopy(obj)


def _rebuild(skeleton: Any, staged: list, tensors: list) -> Any:
    if isinstance(skeleton, _Slot):
        t = staged[skeleton.index]
        _, wrap, requires_grad = tensors[skeleton.index]
        if requires_grad:
            t.requires_grad_(True)
        return wrap(t) if wrap is not None else t
    if isinstance(skeleton, dict):
        for k, v in skeleton.items():
            skeleton[k] = _rebuild(v, staged, tensors)
        return skeleton
    if type(skeleton) in (list, tuple):
        return type(skeleton)(_rebuild(v, staged, tensors) for v in skeleton)
    return skeleton
