"""Asynchronous saves: dcpp.async_save and dcpp.AsyncCheckpointer.

    ckpt = dcpp.AsyncCheckpointer()
    for step in range(steps):
        train_step()                                  # changes the tensors
        if step % 100 == 0:
            fut = ckpt.save(model.state_dict(), f"/ckpt/step_{step}")
            # training goes on at once; the checkpoint holds this step's values
    fut.result()                                      # Metadata, or raises
    ckpt.close()                                      # waits for the save in flight

``save`` copies every array and tensor into the checkpointer's staging pool
(memory it keeps and reuses from save to save, on C++ threads, without the
GIL) and returns a :class:`concurrent.futures.Future`; the files are then
written in the background exactly as :func:`dcpp.save` writes them. The
future's result is the checkpoint's :class:`dcpp.Metadata`; a failure
raises the same error :func:`dcpp.save` would, and leaves no ``.metadata``.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from . import _dcpp, _groups


class AsyncCheckpointer:
    """Saves in the background from a staging pool reused across saves.

    * ``max_staging_bytes``: most bytes the pool may hold; a larger state
      fails that save with :class:`dcpp.ResourceExhaustedError` (0: no cap).
    * ``lock_memory``: ``mlock`` the pool (needs a large enough
      ``ulimit -l``).
    * ``staging_threads``: threads copying into the pool; 0: min(8, CPUs).
    * ``process_group``: the processes saving together, as for
      :func:`dcpp.save` (a torch.distributed group or an mpi4py
      communicator; None: this process alone). Creating the checkpointer
      is then collective: it duplicates the group (torch: a gloo group over
      the same ranks; mpi4py: ``Dup()``), and background saves talk only
      through the duplicate, never interleaving with the program's own use
      of the group. Every process calls :meth:`save` at the same point; an
      error in one process's arguments or state dict is raised by
      :meth:`save` itself on every process, naming the rank; errors while
      writing resolve every process's future to the same error.

    One save is in flight at a time: :meth:`save` first waits for the
    previous one, whose bytes are still being written from the pool. Use it
    as a context manager, or call :meth:`close`, to wait for the last save.
    CUDA tensors are first copied (``non_blocking``, one synchronize) into
    page-locked host buffers the checkpointer keeps and reuses; dcpp stages
    those.
    """

    def __init__(
        self,
        *,
        max_staging_bytes: int = 0,
        lock_memory: bool = False,
        staging_threads: int = 0,
        process_group: Any = None,
    ) -> None:
        from . import _int

        self._group = _groups.adapt(process_group)
        self._impl = _dcpp._AsyncCheckpointer(
            max_staging_bytes=_int("max_staging_bytes", max_staging_bytes, 0),
            lock_memory=bool(lock_memory),
            staging_threads=_int("staging_threads", staging_threads, 0),
            process_group=self._group,
        )
        # Resolves the futures: waits on the C++ handle without the GIL.
        self._waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dcpp-async-save")
        self._lock = threading.Lock()
        self._last: Future | None = None
        self._pinned = _PinnedCopies()

    def save(self, state_dict: dict, path: str | os.PathLike, **options: Any) -> Future:
        """Stages ``state_dict`` and writes it to ``path`` in the background.

        ``options`` are :func:`dcpp.save`'s keywords (``thread_count``,
        ``transforms``, ``overwrite``, ``progress``, ...). Returns once the
        arrays may change; the future's result is the :class:`dcpp.Metadata`.
        The future also has ``stats()``: ``staged_bytes``, ``stage_seconds``
        (the stall), ``write_seconds`` (once done) and ``pool_grew``.
        """
        from . import _fail_together, _path, _save_keywords

        try:
            if not isinstance(state_dict, dict):
                raise TypeError(f"state_dict must be a dict, not {type(state_dict).__name__}")
            if "process_group" in options:
                raise TypeError("AsyncCheckpointer.save takes no process_group: the "
                                "checkpointer's own (AsyncCheckpointer(process_group=...)) is used")
            keywords = _save_keywords(**options)
            checkpoint = _path(path)
        except (TypeError, ValueError) as e:
            _fail_together("save", self._group, e)
        with self._lock:
            if self._impl is None:
                raise ValueError("this AsyncCheckpointer is closed")
            if self._last is not None:
                # The pinned buffers below may still be read by the save in
                # flight (the C++ side would wait for it anyway).
                concurrent.futures.wait([self._last])
            state_dict = self._pinned.copy_device_tensors(state_dict)
            handle = self._impl.save(state_dict, checkpoint, process_group=self._group,
                                     **keywords)
            future = self._waiter.submit(handle.wait)
            future.stats = handle.stats  # type: ignore[attr-defined]
            self._last = future
        return future

    @property
    def pool_bytes(self) -> int:
        """Bytes the staging pool holds (0 before the first save)."""
        return 0 if self._impl is None else self._impl.pool_bytes

    def close(self) -> None:
        """Waits for the save in flight and frees the pool. Idempotent."""
        with self._lock:
            impl, self._impl = self._impl, None
        if impl is not None:
            impl.close()
            self._waiter.shutdown(wait=True)
            self._pinned = _PinnedCopies()

    def __enter__(self) -> "AsyncCheckpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _PinnedCopies:
    """Host copies of device (CUDA) tensors, in page-locked memory reused
    from save to save: each device tensor is copied with non_blocking=True
    into its buffer, then one synchronize, and the host copy is what dcpp
    stages. Buffers are matched by the tensor's position in the state dict
    and its dtype and shape. CPU tensors and arrays pass through untouched."""

    def __init__(self) -> None:
        self._buffers: dict = {}

    def copy_device_tensors(self, state_dict: dict) -> dict:
        torch = sys.modules.get("torch")
        # Without CUDA there is nothing to pin: other devices' tensors are
        # copied to the CPU by the converter. Skipping the walk saves ~1 us
        # per leaf of the stall.
        if torch is None or not torch.cuda.is_available():
            return state_dict
        copied: list = []
        out = self._walk(state_dict, (), copied, torch)
        if not copied:
            return state_dict
        for device in {t.device for t in copied}:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return out

    def _walk(self, obj: Any, where: tuple, copied: list, torch: Any) -> Any:
        if isinstance(obj, torch.Tensor) and type(obj) in (torch.Tensor, torch.nn.Parameter):
            if obj.device.type == "cpu":
                return obj
            key = (where, obj.dtype, tuple(obj.shape))
            buf = self._buffers.get(key)
            if buf is None:
                pin = obj.device.type == "cuda"
                buf = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=pin)
                self._buffers[key] = buf
            buf.copy_(obj.detach(), non_blocking=True)
            copied.append(obj)
            return buf
        if isinstance(obj, dict):
            new = {k: self._walk(v, where + (k,), copied, torch) for k, v in obj.items()}
            changed = any(new[k] is not v for k, v in obj.items())
            return new if changed else obj
        if type(obj) in (list, tuple):
            new = [self._walk(v, where + (i,), copied, torch) for i, v in enumerate(obj)]
            changed = any(a is not b for a, b in zip(new, obj))
            return type(obj)(new) if changed else obj
        return obj


_default: AsyncCheckpointer | None = None
_default_lock = threading.Lock()


def async_save(state_dict: dict, path: str | os.PathLike, *, process_group: Any = None,
               **options: Any) -> Future:
    """:func:`dcpp.save`, in the background: returns a
    :class:`concurrent.futures.Future` of the :class:`dcpp.Metadata` once
    ``state_dict`` has been copied into a staging pool (the arrays may then
    change). Takes :func:`dcpp.save`'s keyword options. Uses one
    process-wide :class:`AsyncCheckpointer` (so a call waits for the
    previous call's save to finish); saves in flight are waited for at exit.
    With ``process_group``, one checkpointer per group object, created
    (collectively, see :class:`AsyncCheckpointer`) by the first call that
    passes it.
    """
    global _default
    with _default_lock:
        if process_group is None:
            if _default is None:
                _default = AsyncCheckpointer()
                atexit.register(_default.close)
            checkpointer = _default
        else:
            # Keyed by identity; the entry keeps the group alive, so the id
            # is never reused while it is here.
            entry = _per_group.get(id(process_group))
            if entry is None:
                entry = (process_group, AsyncCheckpointer(process_group=process_group))
                _per_group[id(process_group)] = entry
                atexit.register(entry[1].close)
            checkpointer = entry[1]
    return checkpointer.save(state_dict, path, **options)


_per_group: dict[int, tuple[Any, AsyncCheckpointer]] = {}
