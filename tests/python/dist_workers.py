"""Multi-process side of test_distributed.py: real torch.distributed (gloo,
CPU) processes that save or load DTensor-sharded state with dcp.save /
dcp.load, through dcpp's or torch's storage layer.

    python3 dist_workers.py save IMPL WORLD INIT_FILE CKPT [--zstd] [--seed N]
        WORLD ranks save global_state(N) as DTensors sharded by rows.
    python3 dist_workers.py load IMPL WORLD INIT_FILE CKPT [--seed N]
        WORLD ranks load into DTensors sharded by columns and compare their
        pieces, bit for bit, with global_state(N); a rank that finds a
        difference prints MISMATCH and exits 3.

IMPL is "dcpp" (dcpp.torch.FileSystemWriter/Reader) or "torch" (torch's).
The launcher imports torch once and forks one process per rank; each joins
the group through INIT_FILE (a path that must not exist yet). The launcher
exits 0 only if every rank did; a rank that fails prints its traceback, and
the others are killed after a grace period (they may wait in a collective).
"""
import datetime
import os
import signal
import sys
import time
import traceback

import torch

FQNS_SHARDED = ["model.rows", "model.bf16", "model.ids", "model.f8", "model.narrow"]


def random_bits(shape, dtype, g):
    n = 1
    for s in shape:
        n *= s
    raw = torch.randint(0, 256, (n * dtype.itemsize,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def global_state(seed):
    """The full state every process agrees on; sizes chosen not to divide
    by 2, 3 or 4, so pieces differ in size and some are empty."""
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {
            "rows": random_bits((10, 7), torch.float32, g),
            "bf16": random_bits((9, 5), torch.bfloat16, g),
            "ids": random_bits((13, 3), torch.int64, g),
            "f8": random_bits((6, 9), torch.float8_e4m3fn, g),
            "narrow": random_bits((3, 2), torch.float32, g),  # fewer rows than 4 ranks
            "bias": random_bits((7,), torch.float32, g),  # plain tensor: replicated
        },
        "optim": {"step": 1000 + seed, "lr": 0.1, "names": ["a", "b"]},
    }


def piece(full, dim, rank, world):
    """The local piece of Shard(dim) on `world` ranks, as torch cuts it."""
    chunks = list(torch.chunk(full, world, dim))
    while len(chunks) < world:
        shape = list(full.shape)
        shape[dim] = 0
        chunks.append(full.new_empty(shape))
    return chunks[rank].contiguous()


def sharded_state(seed, dim, rank, world, mesh, fill=None):
    from torch.distributed.tensor import DTensor, Shard

    sd = global_state(seed)
    for fqn in FQNS_SHARDED:
        _, name = fqn.split(".")
        full = sd["model"][name]
        local = piece(full, dim, rank, world)
        if fill is not None:
            local = torch.zeros_like(local)
        sd["model"][name] = DTensor.from_local(
            local, mesh, [Shard(dim)], run_check=False, shape=full.shape, stride=full.stride())
    if fill is not None:
        sd["model"]["bias"] = torch.zeros_like(sd["model"]["bias"])
        sd["optim"] = {"step": 0, "lr": 0.0, "names": []}
    return sd


def same_bits(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def run_rank(role, impl, rank, world, init_file, ckpt, zstd, seed):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh

    import dcpp.torch as dtorch

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    mesh = init_device_mesh("cpu", (world,))
    if role == "save":
        sd = sharded_state(seed, 0, rank, world, mesh)
        if impl == "dcpp":
            writer = dtorch.FileSystemWriter(
                ckpt, thread_count=2, transforms=["stream.zstd/1"] if zstd else None)
        else:
            from torch.distributed.checkpoint._extension import ZStandard

            writer = dcp.FileSystemWriter(ckpt, thread_count=2,
                                          _extensions=[ZStandard()] if zstd else None)
        dcp.save(sd, storage_writer=writer)
        dist.barrier()
        return 0

    sd = sharded_state(seed, 1, rank, world, mesh, fill=0)
    reader = dtorch.FileSystemReader(ckpt) if impl == "dcpp" else dcp.FileSystemReader(ckpt)
    dcp.load(sd, storage_reader=reader)
    expected = global_state(seed)
    bad = []
    for fqn in FQNS_SHARDED:
        _, name = fqn.split(".")
        want = piece(expected["model"][name], 1, rank, world)
        if not same_bits(sd["model"][name].to_local(), want):
            bad.append(fqn)
    if not same_bits(sd["model"]["bias"], expected["model"]["bias"]):
        bad.append("model.bias")
    if sd["optim"] != expected["optim"]:
        bad.append(f"optim ({sd['optim']} != {expected['optim']})")
    dist.barrier()
    if bad:
        print(f"rank {rank}: MISMATCH in {', '.join(bad)}", flush=True)
        return 3
    return 0


def main(argv):
    role, impl, world, init_file, ckpt = argv[:5]
    rest = argv[5:]
    zstd = "--zstd" in rest
    seed = int(rest[rest.index("--seed") + 1]) if "--seed" in rest else 0
    world = int(world)
    children = {}
    for rank in range(world):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run_rank(role, impl, rank, world, init_file, ckpt, zstd, seed)
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
            time.sleep(0.05)
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
