"""mpirun side of test_process_group.py: dcpp.save / dcpp.load with
process_group=MPI.COMM_WORLD (mpi4py initializes MPI; dcpp does not).

    mpirun -np N python3 pg_mpi_worker.py CKPT

Saves global_arrays() sharded by rows, loads it back sharded by columns
and whole, saves asynchronously (dcpp.AsyncCheckpointer over the
communicator's duplicate), exercises dcpp's C++ group over the communicator (collectives,
Duplicate from two threads at once) and a failure on one rank. Prints
"RESULT {json}" lines; exits non-zero on any difference.
"""
import json
import os
import sys
import threading

import numpy as np

import dcpp
from dcpp import _dcpp, _groups


def global_arrays():
    rng = np.random.default_rng(7)
    return {"rows": rng.standard_normal((10, 6)).astype(np.float32),
            "ids": rng.integers(0, 1 << 40, size=(5, 3), dtype=np.int64),
            "bias": rng.standard_normal(7).astype(np.float32)}


def cut(n, world, rank):
    chunk = -(-n // world)
    start = min(rank * chunk, n)
    return start, min(start + chunk, n)


def sharded(full, dim, rank, world, zero=False):
    start, stop = cut(full.shape[dim], world, rank)
    index = [slice(None)] * full.ndim
    index[dim] = slice(start, stop)
    local = np.array(full[tuple(index)], copy=True)  # never a view of `full`
    if zero:
        local = np.zeros_like(local)
    offsets = [0] * full.ndim
    offsets[dim] = start
    return dcpp.ShardedTensor(full.shape, [dcpp.Shard(local, offsets)])


def result(**fields):
    # One write per line: the ranks share the pipe, and a write of less than
    # PIPE_BUF bytes is never interleaved with another.
    sys.stdout.flush()
    os.write(1, ("RESULT " + json.dumps(fields) + "\n").encode())


def main(ckpt):
    from mpi4py import MPI  # initializes MPI (not at import: the test imports global_arrays)

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    full = global_arrays()
    bad = []

    sd = {"model": {"rows": sharded(full["rows"], 0, rank, world),
                    "ids": sharded(full["ids"], 0, rank, world),
                    "bias": full["bias"]},
          "step": 42}
    md = dcpp.save(sd, ckpt, process_group=comm)
    result(case="save", rank=rank, chunks=len(md["model.rows"].chunks))

    # In place, resharded by columns.
    target = {"model": {"rows": sharded(full["rows"], 1, rank, world, zero=True),
                        "ids": sharded(full["ids"], 1, rank, world, zero=True),
                        "bias": np.zeros_like(full["bias"])},
              "step": 0}
    dcpp.load(target, ckpt, process_group=comm)
    for name in ("rows", "ids"):
        want = sharded(full[name], 1, rank, world).shards[0].tensor
        if not np.array_equal(target["model"][name].shards[0].tensor, want):
            bad.append(f"load {name}")
    if not np.array_equal(target["model"]["bias"], full["bias"]) or target["step"] != 42:
        bad.append("load bias/step")
    everything = dcpp.load(ckpt, process_group=comm)
    for name, want in full.items():
        if not np.array_equal(everything["model"][name], want):
            bad.append(f"load-all {name}")

    # The C++ group over the communicator.
    g = _dcpp._ProcessGroup(_groups.adapt(comm))
    assert (g.rank, g.size, g.kind) == (rank, world, "mpi4py")
    payload = bytes([rank + 1]) * (1000 * rank)
    if g.all_gather(payload) != [bytes([r + 1]) * (1000 * r) for r in range(world)]:
        bad.append("all_gather")
    if g.broadcast(b"root says" if rank == world - 1 else b"", world - 1) != b"root says":
        bad.append("broadcast")
    parts = [b"to %d" % r for r in range(world)] if rank == 0 else []
    if g.scatter(parts, 0) != b"to %d" % rank:
        bad.append("scatter")
    got = g.gather(b"from %d" % rank, 0)
    if got != ([b"from %d" % r for r in range(world)] if rank == 0 else []):
        bad.append("gather")
    g.barrier()

    # A duplicate runs alongside the original on another thread, in the
    # opposite order on odd ranks.
    d = g.duplicate()
    out = {}

    def run(name, grp):
        out[name] = [grp.all_gather(b"%s %d %d" % (name.encode(), rank, i)) for i in range(3)]

    order = [("orig", g), ("dup", d)] if rank % 2 == 0 else [("dup", d), ("orig", g)]
    threads = [threading.Thread(target=run, args=item) for item in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name in ("orig", "dup"):
        want = [[b"%s %d %d" % (name.encode(), r, i) for r in range(world)] for i in range(3)]
        if out.get(name) != want:
            bad.append(f"duplicate {name}: {out.get(name)}")

    # An async save over the communicator's duplicate; the pieces change
    # as soon as save returns.
    ckpt_async = ckpt + "-async"
    with dcpp.AsyncCheckpointer(process_group=comm) as checkpointer:
        pieces = {"rows": sharded(full["rows"], 0, rank, world),
                  "ids": sharded(full["ids"], 1, rank, world)}
        future = checkpointer.save({"model": pieces}, ckpt_async)
        for st in pieces.values():
            st.shards[0].tensor[...] = 0
        future.result(timeout=60)
    back = dcpp.load(ckpt_async, process_group=comm)
    for name in ("rows", "ids"):
        if not np.array_equal(back["model"][name], full[name]):
            bad.append(f"async {name}")

    # A bad argument on the last rank: every rank raises the same error.
    try:
        dcpp.save(sd, ckpt + "-bad", process_group=comm,
                  thread_count=0 if rank == world - 1 else 1)
        result(case="failure", rank=rank, ok=True)
    except dcpp.DcppError as e:
        result(case="failure", rank=rank, ok=False, type=type(e).__name__, message=str(e))

    if bad:
        print(f"MISMATCH rank {rank}: {bad}", flush=True)
    comm.Barrier()
    return 3 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
