"""Multi-process save and load of DTensor state over gloo, three ways, in the
same run: dcpp.save / dcpp.load(process_group=) (dcpp plans; its messages
go through torch's group from C++ via Python), dcp.save / dcp.load with
dcpp.torch.FileSystemWriter/Reader (torch plans, dcpp writes), and torch's
own dcp.save / dcp.load.

    python3 bench/process_group_bench.py --world 4 --size-mib 256 --repeats 3

Each rank holds Shard(0) pieces of --tensors float32 tensors (--size-mib in
all); loads go into Shard(1) DTensors (every rank reads parts of every
saved chunk). Saves fsync (all three default to it). Reported: the median
and best wall time over the repeats, measured on rank 0 between barriers,
and the median time of the group's collectives alone (an empty state dict
saved with dcpp.save), which is the cost dcpp's planning messages add.
"""
import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time


def rank_main(rank, world, init, args, out):
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    import dcpp
    import dcpp.torch as dtorch

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=5))
    mesh = init_device_mesh("cpu", (world,))
    group = dist.group.WORLD
    numel = args.size_mib * (1 << 20) // 4 // args.tensors
    cols = 1024
    rows = max(world, numel // cols)
    g = torch.Generator().manual_seed(0)

    def state(dim, fill):
        sd = {}
        for i in range(args.tensors):
            full_shape = (rows, cols)
            local = list(full_shape)
            chunk = -(-full_shape[dim] // world)
            start = min(rank * chunk, full_shape[dim])
            local[dim] = min(chunk, full_shape[dim] - start)
            t = (torch.rand(local, generator=g) if not fill else torch.zeros(local))
            sd[f"layer{i}.weight"] = DTensor.from_local(t, mesh, [Shard(dim)], run_check=False,
                                                        shape=full_shape,
                                                        stride=(cols, 1))
        return {"model": sd, "step": 1}

    saved = state(0, False)
    target = state(1, True)

    def timed(fn):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        dist.barrier()
        return time.perf_counter() - t0

    root = args.dir
    results = {}
    for rep in range(args.repeats):
        for name, save, load in [
            ("dcpp.save/load(process_group)",
             lambda p: dcpp.save(saved, p, process_group=group),
             lambda p: dcpp.load(target, p, process_group=group)),
            ("dcp + dcpp.torch writer/reader",
             lambda p: dcp.save(saved, storage_writer=dtorch.FileSystemWriter(p)),
             lambda p: dcp.load(target, storage_reader=dtorch.FileSystemReader(p))),
            ("dcp (torch's FileSystemWriter/Reader)",
             lambda p: dcp.save(saved, checkpoint_id=p),
             lambda p: dcp.load(target, checkpoint_id=p)),
        ]:
            path = os.path.join(root, f"{rep}-{name.split()[0]}")
            if rank == 0:
                os.sync()
            s = timed(lambda: save(path))
            l = timed(lambda: load(path))
            results.setdefault(name, ([], []))
            results[name][0].append(s)
            results[name][1].append(l)
            if rank == 0:
                shutil.rmtree(path, ignore_errors=True)
    empty = [timed(lambda: dcpp.save({}, os.path.join(root, "empty"), process_group=group,
                                     sync_files=False)) for _ in range(max(3, args.repeats))]
    if rank == 0:
        lines = [f"{world} gloo ranks, {args.tensors} float32 tensors, {args.size_mib} MiB "
                 f"(Shard(0) saved, Shard(1) loaded), {args.repeats} repeats, "
                 f"{os.cpu_count()} CPUs",
                 "| path | save median (best) s | load median (best) s |",
                 "|---|---|---|"]
        for name, (s, l) in results.items():
            lines.append(f"| {name} | {statistics.median(s):.3f} ({min(s):.3f}) | "
                         f"{statistics.median(l):.3f} ({min(l):.3f}) |")
        lines.append(f"dcpp.save of an empty state dict (the collectives alone): "
                     f"{statistics.median(empty) * 1e3:.1f} ms median")
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")
    dist.barrier()
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where checkpoints go (default: a temp dir)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dcpp-pg-bench-")
    args.dir = args.dir or tmp
    init = os.path.join(tmp, "init")
    out = os.path.join(tmp, "result.txt")
    import torch.distributed.checkpoint  # noqa: F401  (before the fork)
    import torch.distributed.tensor  # noqa: F401
    import torch._dynamo  # noqa: F401

    pids = []
    for rank in range(args.world):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                rank_main(rank, args.world, init, args, out)
                code = 0
            finally:
                sys.stdout.flush()
                os._exit(code)
        pids.append(pid)
    ok = all(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) == 0 for p in pids)
    if ok:
        print(open(out).read(), end="")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
