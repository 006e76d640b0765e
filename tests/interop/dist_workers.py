"""torch's side of the multi-process interop tests (test_distributed_interop.py):
real torch.distributed processes (gloo, CPU) that save or load DTensor-sharded
state with torch.distributed.checkpoint.

    python3 dist_workers.py torch-save WORLD INIT_FILE CKPT
        WORLD ranks save global_state() as DTensors laid out by SAVE_LAYOUT.
    python3 dist_workers.py torch-load WORLD INIT_FILE [--expect-mismatch FQN] CKPT ...
        WORLD ranks load each checkpoint into DTensors laid out by LOAD_LAYOUT
        and compare their local pieces, bit for bit, with global_state().
        A checkpoint after --expect-mismatch FQN was saved from a state with
        one element of FQN changed: the ranks must find exactly that
        difference, which shows the comparison can fail.

The launcher imports torch once and forks one worker per rank (importing
torch costs seconds per process; forking before any torch work is the
pattern DataLoader workers rely on). Each worker joins the group through
INIT_FILE (a path that must not exist yet), prints a traceback prefixed with
its rank on failure, and exits nonzero. The launcher exits 0 only when every
rank did; after a rank fails the others get a few seconds to report their own
errors and are then killed, since they may be waiting for it in a collective.

Every process builds the same global state from a fixed seed, so the workers
and the pytest side agree on every value without exchanging data.
"""
import datetime
import os
import signal
import sys
import time
import traceback

import torch

from state_dicts import random_bits

# Ranks of the scenarios in test_distributed_interop.py.
SAVE_WORLD = 4
LOAD_WORLD = 2

# The FQN whose element test_distributed_interop.py changes for the
# --expect-mismatch run.
PERTURBED_FQN = "model.rows"


def global_state(seed=0):
    """The full (unsharded) state every process agrees on. Row counts are
    chosen not to divide by the rank counts; random bit patterns (NaNs
    included) make any misplaced element visible."""
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {
            "rows": random_bits((10, 7), torch.float32, g),  # 3, 3, 3, 1 rows over 4 ranks
            "few_rows": random_bits((3, 5), torch.bfloat16, g),  # fewer rows than ranks: one empty piece
            "table": random_bits((13, 6), torch.int64, g),
            "cols": random_bits((5, 3), torch.float32, g),  # 3 columns over 4 ranks
            "grid": random_bits((6, 5), torch.float32, g),
            "vec": random_bits((9,), torch.bfloat16, g),
            "emb": random_bits((5, 4), torch.bfloat16, g),
            "bias": random_bits((7,), torch.float32, g),  # a plain tensor: replicated
        },
        "scalar": torch.tensor(0.5, dtype=torch.float32),
        "optim": {"step": 1000, "lr": 0.1, "ids": torch.arange(6, dtype=torch.int64)},
    }


# How torch holds each tensor: (mesh shape, placements) for a DTensor; FQNs
# not listed stay plain tensors (replicated on every rank).
def _layouts():
    from torch.distributed.tensor import Replicate, Shard

    save = {
        "model.rows": ((4,), [Shard(0)]),
        "model.few_rows": ((4,), [Shard(0)]),
        "model.table": ((2, 2), [Shard(0), Shard(0)]),  # rows split twice: 4, 3, 3, 3
        "model.cols": ((4,), [Shard(1)]),  # the last rank's piece is empty
        "model.grid": ((2, 2), [Shard(0), Shard(1)]),
        "model.vec": ((4,), [Shard(0)]),
        "model.emb": ((4,), [Replicate()]),
    }
    # dcpp saves row (or column) pieces; torch asks for other cuts.
    load = {
        "model.rows": ((2,), [Shard(1)]),
        "model.few_rows": ((2,), [Replicate()]),
        "model.table": ((2,), [Shard(1)]),
        "model.cols": ((2,), [Shard(0)]),
        "model.grid": ((2,), [Shard(1)]),
        "model.vec": ((2,), [Shard(0)]),
        "model.emb": ((2,), [Shard(0)]),
    }
    return save, load


def _flat(sd, prefix=""):
    for k, v in sd.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _map(sd, fn, prefix=""):
    """A copy of the nested dict `sd` with fn(fqn, leaf) for every leaf."""
    return {k: _map(v, fn, f"{prefix}{k}.") if isinstance(v, dict) else fn(f"{prefix}{k}", v)
            for k, v in sd.items()}


def _meshes(layout, world):
    from torch.distributed.device_mesh import DeviceMesh

    shapes = {shape for shape, _ in layout.values()}
    ranks = torch.arange(world)
    return {s: DeviceMesh("cpu", ranks.reshape(s)) for s in sorted(shapes)}


def _bits(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _difference(want, got):
    """None when `got` equals `want` bit for bit, else what differs."""
    if want.dtype != got.dtype or want.shape != got.shape:
        return f"expected {want.dtype} {list(want.shape)}, loaded {got.dtype} {list(got.shape)}"
    size = want.element_size()
    differ = (_bits(want).view(-1, size) != _bits(got).view(-1, size)).any(dim=1).nonzero()
    if len(differ) == 0:
        return None
    i = differ[0].item()
    return (f"{len(differ)} of {want.numel()} elements differ; first at flat index {i}: "
            f"expected {want.reshape(-1)[i].item()!r}, loaded {got.reshape(-1)[i].item()!r}")


def torch_save(rank, world, ckpt):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import distribute_tensor

    layout, _ = _layouts()
    meshes = _meshes(layout, world)

    def place(fqn, v):
        if fqn not in layout:
            return v
        shape, placements = layout[fqn]
        return distribute_tensor(v, meshes[shape], placements)  # scattered from rank 0

    dcp.save(_map(global_state(), place), checkpoint_id=ckpt)


def torch_load(rank, world, checkpoints):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor, distribute_tensor

    _, layout = _layouts()
    meshes = _meshes(layout, world)
    full = global_state()

    def piece(fqn, v, zero):
        if not isinstance(v, torch.Tensor):
            return None if zero else v
        if zero:
            v = torch.zeros_like(v)
        if fqn not in layout:
            return v
        shape, placements = layout[fqn]
        return distribute_tensor(v, meshes[shape], placements, src_data_rank=None)  # no traffic

    expected = dict(_flat(_map(full, lambda f, v: piece(f, v, False))))
    for ckpt, expect_mismatch in checkpoints:
        target = _map(full, lambda f, v: piece(f, v, True))
        dcp.load(target, checkpoint_id=ckpt)
        loaded = dict(_flat(target))
        assert sorted(loaded) == sorted(expected), f"{ckpt}: FQNs {sorted(loaded)}"
        mismatches = []
        for fqn, want in expected.items():
            got = loaded[fqn]
            if isinstance(want, torch.Tensor):
                if isinstance(want, DTensor):
                    assert isinstance(got, DTensor) and got.placements == want.placements, \
                        f"{ckpt}: {fqn} came back as {type(got).__name__}"
                    want, got = want.to_local(), got.to_local()
                diff = _difference(want, got)
            elif type(got) is not type(want) or got != want:
                diff = f"expected {want!r}, loaded {got!r}"
            else:
                diff = None
            if diff:
                mismatches.append((fqn, diff))
        everyone = [None] * world
        dist.all_gather_object(everyone, [fqn for fqn, _ in mismatches])
        found = sorted({fqn for per_rank in everyone for fqn in per_rank})
        if expect_mismatch is None:
            assert not mismatches, f"{ckpt}: rank {rank} loaded other values:\n" + "\n".join(
                f"  {fqn}: {diff}" for fqn, diff in mismatches)
        else:
            assert found == [expect_mismatch], \
                f"{ckpt}: saved with {expect_mismatch} changed, the ranks found differences in {found}"


def _worker(rank, world, init_file, fn, args):
    import torch.distributed as dist

    torch.set_num_threads(1)  # WORLD processes share a few cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        fn(rank, world, *args)
        dist.barrier()  # nobody exits while a peer still needs it
    finally:
        dist.destroy_process_group()


def _launch(world, init_file, fn, args, grace_s=5.0):
    pids = {}
    for rank in range(world):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _worker(rank, world, init_file, fn, args)
                code = 0
            except BaseException:  # noqa: B036 - every failure becomes an exit status
                lines = traceback.format_exc().rstrip().splitlines()
                sys.stderr.write("".join(f"[rank {rank}] {line}\n" for line in lines))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids[pid] = rank
    failed, deadline = [], None
    while pids:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            if deadline is not None and time.monotonic() > deadline:
                for p, r in pids.items():
                    os.kill(p, signal.SIGKILL)
                    failed.append(f"rank {r} killed after a peer failed")
                for p in list(pids):
                    os.waitpid(p, 0)
                break
            time.sleep(0.02)
            continue
        rank = pids.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            failed.append(f"rank {rank} exited with {code}")
            if deadline is None:
                deadline = time.monotonic() + grace_s
    if failed:
        sys.stderr.write(f"{fn.__name__} on {world} ranks failed: {'; '.join(failed)}\n")
        return 1
    return 0


def main(argv):
    if len(argv) < 4 or argv[0] not in ("torch-save", "torch-load"):
        sys.stderr.write(__doc__)
        return 2
    role, world, init_file, rest = argv[0], int(argv[1]), argv[2], argv[3:]
    if role == "torch-save":
        fn, args = torch_save, (rest[0],)
    else:
        checkpoints, i = [], 0
        while i < len(rest):
            if rest[i] == "--expect-mismatch":
                checkpoints.append((rest[i + 2], rest[i + 1]))
                i += 3
            else:
                checkpoints.append((rest[i], None))
                i += 1
        fn, args = torch_load, (checkpoints,)
    # Imported once here so that the forked workers do not each pay for it
    # (distribute_tensor imports torch._dynamo on first use).
    import torch._dynamo  # noqa: F401
    import torch.distributed.checkpoint  # noqa: F401
    import torch.distributed.tensor  # noqa: F401

    return _launch(world, init_file, fn, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
