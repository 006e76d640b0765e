"""Multi-process side of test_process_group.py: real torch.distributed (gloo,
CPU) processes calling dcpp.save / dcpp.load with process_group=, on
DTensor, torch ShardedTensor and plain leaves.

    python3 pg_workers.py WORLD INIT_FILE DIR STEP...

runs the STEPs in order on WORLD ranks; checkpoints live in DIR/dcpp (what
dcpp.save wrote) and DIR/torch (what dcp.save wrote). Steps:
  save-dcpp, save-torch   global_state() with the saved placements.
  load-dcpp-from-dcpp, load-torch-from-dcpp, load-dcpp-from-torch
                          load into the load placements (dcpp.load in place
                          then load(path), or dcp.load); every piece is
                          compared bit for bit with global_state(), and a
                          difference prints "MISMATCH <step> rank R: ...".
  async                   dcpp.AsyncCheckpointer / dcpp.async_save with the
                          group: overwritten right after save returns, loaded
                          back resharded, and a failure on one rank.
  failures                one rank fails in turn (an unpicklable object, a
                          bad argument, a bad state dict, a missing
                          checkpoint, a Partial DTensor).
  groups                  dcpp's C++ ProcessGroup over the torch group: every
                          collective, errors, Duplicate used from threads,
                          a timeout.
Steps print "RESULT {json}" lines for the test to check.

The launcher imports torch once and forks one process per rank; each joins
the group through INIT_FILE. It exits 0 if every rank did, 3 if a rank
found a mismatch; once a rank fails, the others are killed after a grace
period.
"""
import datetime
import json
import os
import signal
import sys
import threading
import time
import traceback

import torch

# fqn -> (shape, dtype, placement when saved, placement when loaded). "S0"
# and "S1" shard rows or columns, "R" replicates, None is a plain tensor.
TENSORS = {
    "rows": ((10, 7), torch.float32, "S0", "S1"),
    "cols": ((9, 5), torch.bfloat16, "S1", "R"),
    "rep": ((6, 4), torch.float32, "R", "S0"),
    "narrow": ((2, 2), torch.int64, "S0", "S1"),  # fewer rows than ranks: one is empty
    "bias": ((7,), torch.float32, None, None),
}
# A torch ShardedTensor saved by rows; loaded into a DTensor sharded by
# columns (torch) or a ShardedTensor cut by rows for the new world (dcpp).
ST_SHAPE = (8, 3)


def random_bits(shape, dtype, g):
    n = 1
    for s in shape:
        n *= s
    raw = torch.randint(0, 256, (n * dtype.itemsize,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def global_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = {name: random_bits(shape, dtype, g) for name, (shape, dtype, _, _) in TENSORS.items()}
    model["st"] = random_bits(ST_SHAPE, torch.float32, g)
    return {"model": model, "optim": {"step": 1000 + seed, "lr": 0.1, "names": ["a", "b"]}}


def bounds(n, dim_world, rank):
    """torch.chunk's cut of n elements into dim_world pieces: [start, stop)."""
    chunk = -(-n // dim_world) if n else 0
    start = min(rank * chunk, n)
    return start, min(start + chunk, n)


def piece(full, placement, rank, world):
    if placement in (None, "R"):
        return full.clone()
    dim = int(placement[1])
    start, stop = bounds(full.shape[dim], world, rank)
    return full.narrow(dim, start, stop - start).contiguous()


def make_dtensor(full, placement, mesh, rank, world, zero):
    from torch.distributed.tensor import DTensor, Replicate, Shard

    local = piece(full, placement, rank, world)
    if zero:
        local = torch.zeros_like(local)
    p = Replicate() if placement == "R" else Shard(int(placement[1]))
    return DTensor.from_local(local, mesh, [p], run_check=False, shape=full.shape,
                              stride=full.stride())


def make_sharded_tensor(full, rank, world, zero):
    """A torch ShardedTensor of `full` cut by rows, as torch.chunk cuts."""
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard, init_from_local_shards

    start, stop = bounds(full.shape[0], world, rank)
    local = full[start:stop].clone()
    if zero:
        local.zero_()
    md = ShardMetadata(shard_offsets=[start, 0], shard_sizes=list(local.shape),
                       placement=f"rank:{rank}/cpu")
    return init_from_local_shards([Shard(local, md)], list(full.shape))


def state(which, mesh, rank, world, zero=False, st_as="sharded"):
    """The state dict a rank holds: `which` is "save" or "load" placements;
    zero=True gives the same layout filled with zeros (load targets)."""
    full = global_state()
    sd = {"model": {}, "optim": full["optim"]}
    for name, (_, _, saved, loaded) in TENSORS.items():
        placement = saved if which == "save" else loaded
        t = full["model"][name]
        if placement is None:
            sd["model"][name] = torch.zeros_like(t) if zero else t.clone()
        else:
            sd["model"][name] = make_dtensor(t, placement, mesh, rank, world, zero)
    # As FSDP2 holds them: a DTensor parameter that requires grad.
    sd["model"]["rows"] = torch.nn.Parameter(sd["model"]["rows"])
    st = full["model"]["st"]
    if st_as == "sharded":
        sd["model"]["st"] = make_sharded_tensor(st, rank, world, zero)
    else:
        sd["model"]["st"] = make_dtensor(st, "S1", mesh, rank, world, zero)
    if zero:
        sd["optim"] = {"step": 0, "lr": 0.0, "names": []}
    return sd


def same_bits(a, b):
    return (a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def compare(sd, rank, world, st_as):
    """The names of the entries of a loaded `sd` that differ from global_state()."""
    expected = global_state()
    bad = []
    for name, (_, _, _, placement) in TENSORS.items():
        got = sd["model"][name]
        if placement is not None:
            got = got.to_local()
        if not same_bits(got, piece(expected["model"][name], placement, rank, world)):
            bad.append(name)
    st = sd["model"]["st"]
    if st_as == "sharded":
        start, stop = bounds(ST_SHAPE[0], world, rank)
        want = expected["model"]["st"][start:stop]
        shards = st.local_shards()
        if len(shards) != 1 or not same_bits(shards[0].tensor, want):
            bad.append("st")
    elif not same_bits(st.to_local(), piece(expected["model"]["st"], "S1", rank, world)):
        bad.append("st")
    if sd["optim"] != expected["optim"]:
        bad.append(f"optim ({sd['optim']} != {expected['optim']})")
    return bad


def result(**fields):
    # One write per line: the ranks share the pipe, and a write of less than
    # PIPE_BUF bytes is never interleaved with another.
    sys.stdout.flush()
    os.write(1, ("RESULT " + json.dumps(fields) + "\n").encode())


def outcome(fn):
    """What fn() raised, as a dict; {"ok": True} when it returned."""
    try:
        fn()
        return {"ok": True}
    except Exception as e:
        cause = e.__cause__
        return {"ok": False, "type": type(e).__name__, "message": str(e),
                "cause": type(cause).__name__ if cause is not None else None}


def step_save(impl, rank, world, ckpt, mesh):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    import dcpp

    sd = state("save", mesh, rank, world)
    if impl == "dcpp":
        md = dcpp.save(sd, ckpt, process_group=dist.group.WORLD)
        # Every rank returns the committed metadata.
        mine = repr([(e.fqn, e.kind, len(e.chunks)) for e in md.entries])
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        assert len(set(everyone)) == 1, everyone
        result(case="save-dcpp", rank=rank,
               chunks={e.fqn: len(e.chunks) for e in md.entries if e.kind == "tensor"})
    else:
        dcp.save(sd, checkpoint_id=ckpt)
    dist.barrier()
    return []


def step_load(impl, rank, world, ckpt, mesh):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    import dcpp

    st_as = "sharded" if impl == "dcpp" else "dtensor"
    sd = state("load", mesh, rank, world, zero=True, st_as=st_as)
    if impl == "dcpp":
        dcpp.load(sd, ckpt, process_group=dist.group.WORLD)
    else:
        dcp.load(sd, checkpoint_id=ckpt)
    bad = compare(sd, rank, world, st_as)
    if impl == "dcpp":
        # load(path): the whole checkpoint on every rank.
        everything = dcpp.load(ckpt, process_group=dist.group.WORLD, tensors="torch")
        expected = global_state()
        for name, want in expected["model"].items():
            if not same_bits(everything["model"][name], want):
                bad.append(f"load-all {name}")
        if everything["optim"] != expected["optim"]:
            bad.append("load-all optim")
    dist.barrier()
    return bad


def step_async(rank, world, root, mesh):
    """dcpp.AsyncCheckpointer / dcpp.async_save with the group: the pieces
    are overwritten as soon as save returns, and what loads back (resharded)
    is what they held at the call."""
    import torch.distributed as dist

    import dcpp

    group = dist.group.WORLD
    bad = []
    with dcpp.AsyncCheckpointer(process_group=group) as ckpt:
        for attempt in range(2):  # the second save reuses the pool and the duplicate
            sd = state("save", mesh, rank, world)
            path = os.path.join(root, f"async-{attempt}")
            future = ckpt.save(sd, path)
            for value in sd["model"].values():
                local = value.to_local() if hasattr(value, "to_local") else value
                if hasattr(value, "local_shards"):
                    local = value.local_shards()[0].tensor
                with torch.no_grad():
                    local.fill_(7)
            md = future.result(timeout=60)
            target = state("load", mesh, rank, world, zero=True)
            dcpp.load(target, path, process_group=group)
            bad += [f"async {attempt} {b}" for b in compare(target, rank, world, "sharded")]
        result(case="async", rank=rank, entries=len(md.entries))
        # A bad state dict on one rank: save itself raises, on every rank.
        sd = {"w": torch.ones(2), "hook": (lambda: 0)} if rank == 2 else {"w": torch.ones(2)}
        result(case="async-failure", rank=rank,
               **outcome(lambda: ckpt.save(sd, os.path.join(root, "async-bad"))))
    # dcpp.async_save keeps a checkpointer per group.
    sd = state("save", mesh, rank, world)
    md = dcpp.async_save(sd, os.path.join(root, "async-default"), process_group=group).result(60)
    target = state("load", mesh, rank, world, zero=True)
    dcpp.load(target, os.path.join(root, "async-default"), process_group=group)
    bad += [f"async_save {b}" for b in compare(target, rank, world, "sharded")]
    dist.barrier()
    return bad


def step_failures(rank, world, ckpt, mesh):
    import torch.distributed as dist

    import dcpp

    group = dist.group.WORLD
    good = {"w": torch.arange(6.0), "step": 1}

    # An object dcpp cannot save (torch.save cannot pickle a lambda) on rank 1.
    sd = dict(good, hook=(lambda: 0)) if rank == 1 else dict(good)
    result(case="object", rank=rank,
           **outcome(lambda: dcpp.save(sd, ckpt, process_group=group)))
    result(case="object-committed", rank=rank, value=os.path.exists(os.path.join(ckpt, ".metadata")))
    dist.barrier()

    # A bad argument, found by the package's checks on the last rank.
    path = 12345 if rank == world - 1 else ckpt
    result(case="path", rank=rank,
           **outcome(lambda: dcpp.save(good, path, process_group=group)))

    # The group still works: a good save, then a load where rank 0 passes
    # something that is not a state dict.
    dcpp.save({"w": torch.arange(6.0) + rank, "step": 1}, ckpt, process_group=group)
    target = ["not", "a", "dict"] if rank == 0 else {"w": torch.zeros(6), "step": 0}
    result(case="load-into", rank=rank,
           **outcome(lambda: dcpp.load(target, ckpt, process_group=group)))

    # load(path) where one rank's path holds no checkpoint.
    where = ckpt + "-missing" if rank == 0 else ckpt
    result(case="load-all", rank=rank,
           **outcome(lambda: dcpp.load(where, process_group=group)))

    # A DTensor with a Partial placement cannot be saved (DCP refuses it too).
    from torch.distributed.tensor import DTensor, Partial, Shard

    local = torch.ones(2, 3)
    placement = Partial() if rank == 1 else Shard(0)
    dt = DTensor.from_local(local, mesh, [placement], run_check=False,
                            shape=(2 * world, 3) if rank != 1 else (2, 3),
                            stride=(3, 1))
    result(case="partial", rank=rank,
           **outcome(lambda: dcpp.save({"dt": dt}, ckpt + "-partial", process_group=group)))
    dist.barrier()
    return []


def step_groups(rank, world, ckpt, mesh):
    import torch.distributed as dist

    import dcpp
    from dcpp import _dcpp, _groups

    g = _dcpp._ProcessGroup(_groups.adapt(dist.group.WORLD))
    assert (g.rank, g.size, g.kind) == (rank, world, "torch.distributed"), (g.rank, g.size, g.kind)
    mine = bytes([rank]) * (rank * 1000)  # sizes differ; rank 0 sends nothing
    allg = g.all_gather(mine)
    assert allg == [bytes([r]) * (r * 1000) for r in range(world)]
    root = world - 1
    got = g.gather(mine, root)
    assert got == (allg if rank == root else []), [len(x) for x in got]
    assert g.broadcast(b"from root" if rank == 1 else b"ignored", 1) == b"from root"
    assert g.broadcast(b"", 0) == b""
    parts = [b"part %d" % r * (r + 1) for r in range(world)] if rank == 1 else []
    assert g.scatter(parts, 1) == b"part %d" % rank * (rank + 1)
    g.barrier()
    result(case="collectives", rank=rank, ok=True)

    result(case="bad-root", rank=rank, **outcome(lambda: g.broadcast(b"x", world)))
    result(case="bad-scatter", rank=rank,
           **outcome(lambda: g.scatter([b"x"] if rank == 0 else [], 0)))
    # Ranks calling different collectives: every rank fails alike, and the
    # group stays usable.
    result(case="mismatch", rank=rank,
           **outcome(lambda: g.broadcast(b"x", 0) if rank == 0 else g.all_gather(b"y")))
    assert g.all_gather(b"%d" % rank) == [b"%d" % r for r in range(world)]

    # Duplicates are independent: rank r runs the original's and a
    # duplicate's collectives on two threads, in opposite orders on even
    # and odd ranks, so any cross-talk mixes the payloads or deadlocks.
    d1 = g.duplicate()
    d2 = g.duplicate()
    out = {}

    def run(name, grp, delay):
        time.sleep(delay)
        out[name] = [grp.all_gather(b"%s-%d-%d" % (name.encode(), rank, i)) for i in range(3)]

    threads = [threading.Thread(target=run, args=("orig", g, 0.05 * (rank % 2))),
               threading.Thread(target=run, args=("dup1", d1, 0.05 * ((rank + 1) % 2))),
               threading.Thread(target=run, args=("dup2", d2, 0.02))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name in ("orig", "dup1", "dup2"):
        want = [[b"%s-%d-%d" % (name.encode(), r, i) for r in range(world)] for i in range(3)]
        assert out.get(name) == want, (name, out.get(name))
    assert (d1.rank, d1.size) == (rank, world)
    result(case="duplicate", rank=rank, ok=True)

    # A whole save through a duplicate's adapter.
    dup = _groups.adapt(dist.group.WORLD).duplicate()
    dcpp.save({"x": torch.arange(4.0) * rank}, ckpt, process_group=dup)

    # A rank that never joins: the others give up after the group's timeout
    # with DeadlineExceededError instead of hanging.
    short = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=1))
    if rank == 0:
        t0 = time.monotonic()
        r = outcome(lambda: dcpp.save({"x": torch.zeros(2)}, ckpt + "-t", process_group=short))
        result(case="timeout", rank=rank, seconds=time.monotonic() - t0, **r)
    dist.barrier()
    return []


def run_rank(rank, world, init_file, root, steps):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    mesh = init_device_mesh("cpu", (world,))
    code = 0
    for step in steps:
        t0 = time.monotonic()
        if step.startswith("save-"):
            impl = step[len("save-"):]
            bad = step_save(impl, rank, world, os.path.join(root, impl), mesh)
        elif step.startswith("load-"):
            impl, _, source = step[len("load-"):].split("-")
            bad = step_load(impl, rank, world, os.path.join(root, source), mesh)
        elif step == "async":
            bad = step_async(rank, world, root, mesh)
        elif step == "failures":
            bad = step_failures(rank, world, os.path.join(root, "failures"), mesh)
        elif step == "groups":
            bad = step_groups(rank, world, os.path.join(root, "groups"), mesh)
        else:
            raise ValueError(f"unknown step {step}")
        if bad:
            print(f"MISMATCH {step} rank {rank}: {', '.join(bad)}", flush=True)
            code = 3
        result(case="step", step=step, rank=rank, seconds=round(time.monotonic() - t0, 3))
    dist.barrier()
    dist.destroy_process_group()
    return code


def main(argv):
    world, init_file, root = argv[:3]
    steps = argv[3:]
    world = int(world)
    # Imported once, before the fork: each costs seconds.
    import torch.distributed._shard.sharded_tensor  # noqa: F401
    import torch.distributed.checkpoint  # noqa: F401
    import torch.distributed.tensor  # noqa: F401
    import torch._dynamo  # noqa: F401  (DTensor.from_local imports it)

    import dcpp  # noqa: F401

    children = {}
    for rank in range(world):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run_rank(rank, world, init_file, root, steps)
            except BaseException:
                print(f"rank {rank} failed:\n{traceback.format_exc()}", flush=True)
            finally:
                sys.stdout.flush()
                os._exit(code)
        children[pid] = rank
    codes = {}
    deadline = None
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            if deadline is not None and time.time() > deadline:
                for p in children:
                    os.kill(p, signal.SIGKILL)
            time.sleep(0.02)
            continue
        rank = children.pop(pid)
        codes[rank] = os.waitstatus_to_exitcode(status)
        if codes[rank] != 0 and deadline is None:
            deadline = time.time() + 10
    worst = max(codes.values())
    print(f"exit codes by rank: {dict(sorted(codes.items()))}", flush=True)
    return worst if worst > 0 else (1 if any(c != 0 for c in codes.values()) else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
