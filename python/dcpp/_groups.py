"""Process groups for ``dcpp.save`` / ``dcpp.load(process_group=...)``.

dcpp's engine runs its collectives through a C++ ``dcpp::ProcessGroup``;
python/src/process_groups.cc implements one whose collectives call the
adapters below, holding the GIL, from the thread running the save or load
(one collective at a time per adapter). Payloads are ``bytes``.

Every collective starts with the same step on every backend: an all-gather
of a small header (magic, sequence number, collective, root, payload size,
aux) from each rank. It tells every rank the payload sizes (so the data
moves in one padded transfer), and lets every rank detect, alike, ranks
that called different collectives or roots (:class:`GroupError`, the group
stays usable) or that are out of step (the group is broken). The numbers
match dcpp's C++ MPI group (src/dcpp/collective/collective_op.h).

Errors: an adapter raises :class:`GroupError` (with a dcpp status code) for
what every rank detected alike; any other exception means the transport
failed or timed out, and the C++ side marks the group broken.
"""

from __future__ import annotations

import sys
import time
from typing import Any

_MAGIC = 0x64637070  # "dcpp"
BARRIER, GATHER, BROADCAST, ALL_GATHER, SCATTER = 1, 2, 3, 4, 5
_NAMES = {BARRIER: "Barrier", GATHER: "Gather", BROADCAST: "Broadcast",
          ALL_GATHER: "AllGather", SCATTER: "Scatter"}
_HEADER_WORDS = 6
_W_MAGIC, _W_SEQ, _W_OP, _W_ROOT, _W_SIZE, _W_AUX = range(_HEADER_WORDS)

#: How long an mpi4py adapter waits for the other ranks to reach a
#: collective before giving up (torch groups use their own timeout).
MPI_TIMEOUT_S = 600.0


class GroupError(Exception):
    """A collective failed alike on every rank. ``code`` is a dcpp status
    code name; ``broken`` says whether the ranks are out of step (the group
    cannot be used again)."""

    def __init__(self, code: str, message: str, broken: bool = False):
        super().__init__(message)
        self.code = code
        self.broken = broken


def _describe(header) -> str:
    name = _NAMES.get(header[_W_OP], f"unknown collective {header[_W_OP]}")
    if header[_W_OP] in (GATHER, BROADCAST, SCATTER):
        name += f"(root {header[_W_ROOT]})"
    return name


class _Adapter:
    """The collectives dcpp calls, over one primitive per backend: an
    all-gather of the fixed-size header, then the data transfers."""

    kind = "python"

    def __init__(self) -> None:
        self._seq = 0

    # -- subclasses provide ------------------------------------------------
    def rank(self) -> int:
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError

    def _all_gather_header(self, header: list[int]) -> list[list[int]]:
        raise NotImplementedError

    def _gather(self, data: bytes, root: int, sizes: list[int]) -> list[bytes]:
        raise NotImplementedError

    def _broadcast(self, data: bytes, root: int, size: int) -> bytes:
        raise NotImplementedError

    def _all_gather(self, data: bytes, sizes: list[int]) -> list[bytes]:
        raise NotImplementedError

    def _scatter(self, parts: list[bytes] | None, root: int, max_part: int) -> bytes:
        raise NotImplementedError

    def duplicate(self) -> "_Adapter":
        raise NotImplementedError

    # -- the collectives ---------------------------------------------------
    def _exchange(self, op: int, root: int, size: int, aux: int = 0) -> list[list[int]]:
        seq = self._seq
        self._seq += 1
        mine = [_MAGIC, seq, op, root, size, aux]
        headers = self._all_gather_header(mine)
        for r, h in enumerate(headers):
            if h[_W_MAGIC] != _MAGIC:
                raise GroupError("INTERNAL", f"collective #{seq}: rank {r} sent a malformed header",
                                 broken=True)
            if h[_W_SEQ] != seq:
                raise GroupError(
                    "INTERNAL",
                    f"collective mismatch: rank {self.rank()} is at collective #{seq} "
                    f"({_describe(mine)}) but rank {r} is at #{h[_W_SEQ]} ({_describe(h)})",
                    broken=True)
        first = headers[0]
        for r, h in enumerate(headers[1:], 1):
            if h[_W_OP] != first[_W_OP] or h[_W_ROOT] != first[_W_ROOT]:
                raise GroupError(
                    "INTERNAL",
                    f"collective mismatch at collective #{seq}: rank 0 called {_describe(first)} "
                    f"but rank {r} called {_describe(h)}")
        return headers

    def barrier(self) -> None:
        self._exchange(BARRIER, -1, 0)

    def gather(self, data: bytes, root: int) -> list[bytes]:
        headers = self._exchange(GATHER, root, len(data))
        return self._gather(data, root, [h[_W_SIZE] for h in headers])

    def broadcast(self, data: bytes, root: int) -> bytes:
        headers = self._exchange(BROADCAST, root, len(data) if self.rank() == root else 0)
        return self._broadcast(data, root, headers[root][_W_SIZE])

    def all_gather(self, data: bytes) -> list[bytes]:
        headers = self._exchange(ALL_GATHER, -1, len(data))
        return self._all_gather(data, [h[_W_SIZE] for h in headers])

    def scatter(self, parts: list[bytes], root: int) -> bytes:
        me = self.rank() == root
        max_part = max((len(p) for p in parts), default=0) if me else 0
        headers = self._exchange(SCATTER, root, max_part, len(parts) if me else 0)
        count = headers[root][_W_AUX]
        if count != self.size():
            # Every rank sees the root's header: all fail alike, in step.
            raise GroupError("INVALID_ARGUMENT", f"root {root} passed {count} parts "
                             f"for {self.size()} ranks")
        return self._scatter(parts if me else None, root, headers[root][_W_SIZE])


# -- torch.distributed --------------------------------------------------------

# Duplicates made so far per rank set: every member makes its k-th
# duplicate of a set in the same position of its call sequence (Duplicate is
# collective), so k names the duplicate alike on every member.
_torch_duplicates: dict[tuple[int, ...], int] = {}


class TorchGroup(_Adapter):
    """Collectives on a torch.distributed group's CPU (gloo) backend, as byte
    tensors: the header all-gather gives every size, so each payload moves in
    one padded transfer (DCP's object collectives pickle and send sizes
    separately)."""

    def __init__(self, group: Any, global_ranks: list[int] | None = None):
        super().__init__()
        import torch
        import torch.distributed as dist

        self._torch = torch
        self._dist = dist
        self._pg = group
        self._rank = group.rank()
        self._size = group.size()
        self._global_ranks = (global_ranks if global_ranks is not None
                              else dist.get_process_group_ranks(group))
        self.kind = "torch.distributed"

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    def _bytes_tensor(self, data: bytes, length: int):
        import numpy as np

        t = self._torch.empty(length, dtype=self._torch.uint8)
        if data:
            t.numpy()[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        return t

    @staticmethod
    def _wait(work) -> None:
        work.wait()

    def _all_gather_header(self, header: list[int]) -> list[list[int]]:
        torch = self._torch
        mine = torch.tensor(header, dtype=torch.int64)
        out = [torch.empty(_HEADER_WORDS, dtype=torch.int64) for _ in range(self._size)]
        self._wait(self._pg.allgather([out], [mine]))
        return [t.tolist() for t in out]

    def _all_gather(self, data: bytes, sizes: list[int]) -> list[bytes]:
        longest = max(sizes)
        if longest == 0:
            return [b""] * self._size
        torch = self._torch
        out = [torch.empty(longest, dtype=torch.uint8) for _ in range(self._size)]
        self._wait(self._pg.allgather([out], [self._bytes_tensor(data, longest)]))
        return [t.numpy()[:n].tobytes() for t, n in zip(out, sizes)]

    def _gather(self, data: bytes, root: int, sizes: list[int]) -> list[bytes]:
        longest = max(sizes)
        if longest == 0:
            return [b""] * self._size if self._rank == root else []
        torch = self._torch
        opts = self._dist.GatherOptions()
        opts.rootRank = root
        out = ([[torch.empty(longest, dtype=torch.uint8) for _ in range(self._size)]]
               if self._rank == root else [])
        self._wait(self._pg.gather(out, [self._bytes_tensor(data, longest)], opts))
        if self._rank != root:
            return []
        return [t.numpy()[:n].tobytes() for t, n in zip(out[0], sizes)]

    def _broadcast(self, data: bytes, root: int, size: int) -> bytes:
        if size == 0:
            return b""
        opts = self._dist.BroadcastOptions()
        opts.rootRank = root
        opts.rootTensor = 0
        t = self._bytes_tensor(data if self._rank == root else b"", size)
        self._wait(self._pg.broadcast([t], opts))
        return data if self._rank == root else t.numpy().tobytes()

    def _scatter(self, parts: list[bytes] | None, root: int, max_part: int) -> bytes:
        torch = self._torch
        # Each part travels with its length in front (8 bytes, little endian).
        width = max_part + 8
        opts = self._dist.ScatterOptions()
        opts.rootRank = root
        inputs = []
        if parts is not None:
            inputs = [[self._bytes_tensor(len(p).to_bytes(8, "little") + p, width) for p in parts]]
        out = torch.empty(width, dtype=torch.uint8)
        self._wait(self._pg.scatter([out], inputs, opts))
        if parts is not None:
            return parts[self._rank]
        raw = out.numpy()
        n = int.from_bytes(raw[:8].tobytes(), "little")
        if n > max_part:
            raise GroupError("INTERNAL", f"root {root} sent a part of {n} bytes, more "
                             f"than the largest it announced ({max_part})", broken=True)
        return raw[8 : 8 + n].tobytes()

    def duplicate(self) -> "TorchGroup":
        """A gloo group over the same ranks on a store prefix of its own.

        ``dist.new_group`` cannot do this for a subgroup: without
        ``use_local_synchronization`` every rank of the world must call it,
        and with it the group's name is a hash of its ranks, so a second
        group over the same ranks is refused.
        """
        dist = self._dist
        import datetime

        from torch.distributed import distributed_c10d as c10d

        ranks = tuple(self._global_ranks)
        k = _torch_duplicates.get(ranks, 0)
        _torch_duplicates[ranks] = k + 1
        try:
            store = c10d._get_process_group_store(self._pg)
        except Exception:
            store = c10d._get_default_store()
        timeout = datetime.timedelta(minutes=10)
        try:
            timeout = self._pg._get_backend(self._torch.device("cpu")).options._timeout
        except Exception:
            pass
        prefix = f"dcpp/duplicate/{','.join(map(str, ranks))}/{k}/"
        backend = dist.ProcessGroupGloo(dist.PrefixStore(prefix, store), self._rank, self._size,
                                        timeout)
        return TorchGroup(backend, global_ranks=list(ranks))


# -- mpi4py -------------------------------------------------------------------


class MpiGroup(_Adapter):
    """Collectives on an mpi4py intracommunicator. The header all-gather is
    non-blocking and polled, so a rank that never arrives makes the others
    give up after MPI_TIMEOUT_S (the pending request cannot be cancelled:
    the communicator is then unusable, and the process should exit)."""

    def __init__(self, comm: Any, timeout: float | None = None, owned: bool = False):
        super().__init__()
        self._comm = comm
        self._owned = owned  # a duplicate: freed with the adapter
        self._rank = comm.Get_rank()
        self._size = comm.Get_size()
        self._timeout = MPI_TIMEOUT_S if timeout is None else timeout
        self.kind = "mpi4py"

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    def _all_gather_header(self, header: list[int]) -> list[list[int]]:
        import numpy as np
        from mpi4py import MPI

        mine = np.array(header, dtype=np.int64)
        out = np.empty((self._size, _HEADER_WORDS), dtype=np.int64)
        request = self._comm.Iallgather([mine, MPI.INT64_T], [out, MPI.INT64_T])
        deadline = time.monotonic() + self._timeout
        pause = 0.0
        while not request.Test():
            if time.monotonic() > deadline:
                raise TimeoutError(f"mpi4py {_describe(header)} timed out after "
                                   f"{self._timeout:g} s waiting for the other ranks")
            time.sleep(pause)
            pause = min(0.01, pause + 0.0002)
        return out.tolist()

    def _gather(self, data: bytes, root: int, sizes: list[int]) -> list[bytes]:
        out = self._comm.gather(data, root=root)
        return out if self._rank == root else []

    def _broadcast(self, data: bytes, root: int, size: int) -> bytes:
        if size == 0:
            return b""
        return self._comm.bcast(data if self._rank == root else None, root=root)

    def _all_gather(self, data: bytes, sizes: list[int]) -> list[bytes]:
        return self._comm.allgather(data)

    def _scatter(self, parts: list[bytes] | None, root: int, max_part: int) -> bytes:
        return self._comm.scatter(parts, root=root)

    def duplicate(self) -> "MpiGroup":
        return MpiGroup(self._comm.Dup(), self._timeout, owned=True)

    def __del__(self) -> None:
        if not getattr(self, "_owned", False):
            return
        try:
            from mpi4py import MPI

            if not MPI.Is_finalized():
                self._comm.Free()
        except Exception:  # at interpreter exit: nothing left to free
            pass


# -- what dcpp.save / dcpp.load accept ----------------------------------------


def adapt(process_group: Any) -> _Adapter | None:
    """The adapter for a ``process_group=`` argument: None (this process
    alone), a torch.distributed ProcessGroup with a CPU (gloo) backend, or
    an mpi4py intracommunicator. TypeError / ValueError otherwise."""
    if process_group is None:
        return None
    if isinstance(process_group, _Adapter):
        return process_group
    torch_dist = sys.modules.get("torch.distributed")
    if torch_dist is not None and hasattr(torch_dist, "ProcessGroup") and isinstance(
            process_group, torch_dist.ProcessGroup):
        if not torch_dist.is_initialized():
            raise ValueError("process_group: torch.distributed is not initialized")
        try:
            has_cpu = any(d.type == "cpu" for d in process_group._device_types)
        except AttributeError:  # a torch without _device_types: let gloo decide
            has_cpu = True
        if not has_cpu:
            raise ValueError(
                "process_group: this torch.distributed group has no CPU backend; dcpp exchanges "
                "its plans on the CPU: pass a gloo group (dist.new_group(backend='gloo')) or "
                "initialize with backend='cpu:gloo,cuda:nccl'")
        return TorchGroup(process_group)
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and isinstance(process_group, mpi.Comm):
        if not isinstance(process_group, mpi.Intracomm):
            raise TypeError("process_group: an mpi4py intercommunicator cannot be used; pass an "
                            "intracommunicator such as MPI.COMM_WORLD")
        if process_group == mpi.COMM_NULL:
            raise ValueError("process_group: MPI.COMM_NULL")
        return MpiGroup(process_group)
    raise TypeError(
        "process_group must be None, a torch.distributed ProcessGroup (e.g. "
        "torch.distributed.group.WORLD) or an mpi4py communicator, not "
        f"{type(process_group).__module__}.{type(process_group).__qualname__}")
