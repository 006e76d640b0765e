"""dcpp's C++ core (the extension module). Use the dcpp package, not this module."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

class DcppError(Exception):
    """Base class of every error dcpp raises."""

    code: str
    """The status code name, e.g. 'DATA_LOSS'."""

class InvalidArgumentError(DcppError, ValueError): ...
class NotFoundError(DcppError, FileNotFoundError): ...
class AlreadyExistsError(DcppError, FileExistsError): ...
class CorruptCheckpointError(DcppError, ValueError): ...
class ResourceExhaustedError(DcppError, MemoryError): ...
class AbortedError(DcppError): ...
class UnimplementedError(DcppError, NotImplementedError): ...
class InternalError(DcppError): ...
class PermissionDeniedError(DcppError, PermissionError): ...
class DeadlineExceededError(DcppError, TimeoutError): ...

_Progress = Callable[[str, int, int, int, int], None]


class StorageInfo:
    """
    Where one stored item's bytes are: [offset, offset + length) of relative_path, after undoing transform_descriptors (first outermost).
    """

    @property
    def relative_path(self) -> str: ...

    @property
    def offset(self) -> int: ...

    @property
    def length(self) -> int: ...

    @property
    def transform_descriptors(self) -> list[str]: ...

    @property
    def raw(self) -> bool:
        """
        True for a tensor stored as its bare elements (a safetensors tensor), False for a torch.save archive (DCP).
        """

    def __repr__(self) -> str: ...

class Chunk:
    """One saved piece of a tensor: global offsets, sizes, storage."""

    @property
    def offsets(self) -> list[int]: ...

    @property
    def sizes(self) -> list[int]: ...

    @property
    def storage(self) -> StorageInfo: ...

    def __repr__(self) -> str: ...

class Entry:
    """
    One flattened state dict entry (one FQN): a tensor, with its global size and saved chunks, or a pickled value ('bytes') with its storage.
    """

    @property
    def fqn(self) -> str: ...

    @property
    def kind(self) -> str:
        """'tensor' or 'bytes'."""

    @property
    def path(self) -> list[str | int]:
        """
        The keys and list indices leading to the entry from the state dict root (empty when the checkpoint does not record them).
        """

    @property
    def dtype(self) -> str | None:
        """
        torch's dtype name ('float32', 'bfloat16', ...) for tensors, else None.
        """

    @property
    def size(self) -> list[int]:
        """Global shape (tensors)."""

    @property
    def requires_grad(self) -> bool: ...

    @property
    def memory_format(self) -> str: ...

    @property
    def pin_memory(self) -> bool: ...

    @property
    def chunks(self) -> list[Chunk]: ...

    @property
    def storage(self) -> StorageInfo | None:
        """Where a 'bytes' entry is stored (None for tensors)."""

    def __repr__(self) -> str: ...

class StorageMeta:
    @property
    def checkpoint_id(self) -> str | None: ...

    @property
    def save_id(self) -> str | None: ...

    @property
    def load_id(self) -> str | None: ...

    @property
    def modules(self) -> list[str]: ...

class Metadata:
    """
    What a checkpoint's .metadata says: its entries in save order. Index it by FQN: md['model.weight'].
    """

    @property
    def entries(self) -> list[Entry]: ...

    @property
    def storage_meta(self) -> StorageMeta | None: ...

    @property
    def version(self) -> str | None: ...

    def keys(self) -> list[str]:
        """The FQNs, in save order."""

    def __len__(self) -> int: ...

    def __contains__(self, arg: str, /) -> bool: ...

    def __getitem__(self, arg: str, /) -> Entry: ...

    def __repr__(self) -> str: ...

def save(state_dict: dict, path: str, thread_count: int, io_threads: int, single_file_per_rank: bool, sync_files: bool, overwrite: bool, checksums: bool, transforms: Sequence[str], compression_level: int, dedup_to_lowest_rank: bool, progress: _Progress | None, lock_timeout_ms: int = 0, format: str = 'dcp', max_shard_size: int = 0, fqn_to_file_index: Mapping[str, int] = {}) -> Metadata: ...

def convert(src: str, dst: str, to: str = 'dcp', keys: Sequence[str] = [], dtype: str = '', max_shard_size: int = 0, io_threads: int = 0, sync_files: bool = True, overwrite: bool = True, progress: _Progress | None = None) -> Metadata: ...

def load_into(state_dict: dict, path: str, thread_count: int, allow_partial_load: bool, progress: _Progress | None, torch_tensors: bool, weights_only: bool, verify_checksums: bool = True) -> None: ...

def load_all(path: str, thread_count: int, keys: Sequence[str], progress: _Progress | None, torch_tensors: bool, weights_only: bool, verify_checksums: bool = True) -> dict[str, Any]: ...

def verify(path: str, thread_count: int = 0, progress: _Progress | None = None) -> dict[str, Any]: ...

def _write_checksum_file(dir: str, metadata_bytes: bytes, sync: bool = True) -> str | None: ...

def read_metadata(path: str) -> Metadata: ...

def _write_files(dir: str, files: Sequence[tuple[str, Sequence[tuple[str, str, Any]]]], checksums: bool, sync: bool, transforms: Sequence[str], compression_level: int, threads: int) -> list[list[tuple[int, int, list[str]]]]: ...

def _read(dir: str, chunk_jobs: Sequence[tuple], byte_jobs: Sequence[tuple], threads: int, buffer_limit: int = ...) -> list[bytes]: ...

def _known_transforms() -> list[str]: ...

def _torch_metadata(data: bytes, where: str, table: dict[tuple[str, str], tuple[str, Any, frozenset[str] | None]]) -> tuple[Any, dict[str, str]]:
    """Checks ``data`` (a .metadata file) as dcpp.read_metadata does and builds its
    objects through ``table`` only; returns (root object, {fqn: message} for tensors
    whose chunks do not tile them). See python/src/metadata_bindings.cc."""
    ...
