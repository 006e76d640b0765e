"""torch.distributed.checkpoint's side of bench/run_benchmarks.py.

Times one torch DCP operation on a state given as an image file plus a JSON
index (written by run_benchmarks.py; the same bytes `dcpp bench` reads) and
prints one JSON line with the same fields as `dcpp bench`: op, seconds,
bytes, tensors, ranks, threads, transforms, rss_before_bytes, max_rss_bytes,
verified.

    python3 torch_side.py save --image I --index X --ckpt D [--threads T] [--no-fsync] [--zstd]
    python3 torch_side.py load --image I --index X --ckpt D
    python3 torch_side.py dist-save --world N --image I --index X --ckpt D [--threads T]
                                    [--no-fsync]
    python3 torch_side.py dist-load --world M --image I --index X --ckpt D
    python3 torch_side.py idle

save/load run in this process without a process group (DCP's single-process
mode). dist-save/dist-load fork WORLD gloo processes holding DTensors: Shard(0)
for tensors with at least WORLD rows when saving; when loading Shard(1) where
dimension 1 has at least WORLD entries, else Shard(0), else a plain
(replicated) tensor. Their time runs from a barrier before dcp.save/dcp.load
to a barrier after it (the slowest rank's); their RSS figures are sums over
the ranks. `idle` reports the RSS of a process that imported what the others
import, for the baseline.

Only the operation is timed: tensors are read from the image into memory
(save) or allocated and filled (load) first; loaded values are compared bit
for bit with the image afterwards, and peak RSS is taken before that
comparison. The image is read with plain reads, not mapped, so that the
mapping's pages do not count in the RSS.
"""
import argparse
import datetime
import json
import os
import signal
import sys
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.distributed.tensor  # noqa: F401  (imported before timing, as DTensor use would)
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_FILL = 0xA5  # loaded tensors start as this byte, so a value never loaded cannot match


def _dtype(name):
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in the index")
    return dt


def read_index(path):
    with open(path) as f:
        index = json.load(f)
    return index["tensors"]


def _current_rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss():
    """VmHWM: the peak RSS of this process image. (ru_maxrss would include
    the RSS of the process that forked this one: Linux keeps it over exec.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _bytes_of(t):
    return t.reshape(-1).view(torch.uint8)


def _read_into(f, offset, t):
    """Fills the contiguous tensor `t` with the image bytes at `offset`."""
    n = t.numel() * t.element_size()
    if n == 0:
        return
    view = _bytes_of(t).numpy()
    f.seek(offset)
    got = f.readinto(view)
    if got != n:
        raise ValueError(f"image ends before byte {offset + n}")


def _read_full(f, entry):
    t = torch.empty(entry["shape"], dtype=_dtype(entry["dtype"]))
    _read_into(f, entry["offset"], t)
    return t


def _nest(flat):
    """{'a.b': x} -> {'a': {'b': x}}: the nesting the FQNs describe."""
    root = {}
    for fqn, v in flat.items():
        *parents, leaf = fqn.split(".")
        d = root
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = v
    return root


def _same_bits(want, got):
    if want.dtype != got.dtype or want.shape != got.shape:
        return False
    as_int = _INT_OF_SIZE[want.element_size()]
    return torch.equal(want.view(as_int), got.view(as_int))


def _writer(args):
    extensions = None
    if args.zstd:
        from torch.distributed.checkpoint._extension import ZStandard
        extensions = [ZStandard()]
    return FileSystemWriter(args.ckpt, thread_count=args.threads, sync_files=not args.no_fsync,
                            _extensions=extensions)


def _result(op, args, entries, seconds, rss_before, max_rss, verified, ranks=1):
    return {
        "op": op,
        "seconds": seconds,
        "bytes": sum(_nbytes(e) for e in entries),
        "tensors": len(entries),
        "ranks": ranks,
        "threads": getattr(args, "threads", 0),
        "transforms": ["stream.zstd/1"] if getattr(args, "zstd", False) else [],
        "compression_level": 3 if getattr(args, "zstd", False) else 0,  # zstandard's default
        "rss_before_bytes": rss_before,
        "max_rss_bytes": max_rss,
        "verified": verified,
    }


def _nbytes(entry):
    n = _dtype(entry["dtype"]).itemsize
    for d in entry["shape"]:
        n *= d
    return n


def save(args):
    entries = read_index(args.index)
    with open(args.image, "rb") as f:
        state = _nest({e["fqn"]: _read_full(f, e) for e in entries})
    writer = _writer(args)
    rss_before = _current_rss()
    t0 = time.perf_counter()
    dcp.save(state, storage_writer=writer)
    seconds = time.perf_counter() - t0
    return _result("save", args, entries, seconds, rss_before, _peak_rss(), False)


def load(args):
    entries = read_index(args.index)
    flat = {}
    for e in entries:
        t = torch.empty(e["shape"], dtype=_dtype(e["dtype"]))
        _bytes_of(t).fill_(_FILL)
        flat[e["fqn"]] = t
    state = _nest(flat)
    reader = FileSystemReader(args.ckpt)
    rss_before = _current_rss()
    t0 = time.perf_counter()
    dcp.load(state, storage_reader=reader)
    seconds = time.perf_counter() - t0
    peak = _peak_rss()
    with open(args.image, "rb") as f:
        for e in entries:
            if not _same_bits(_read_full(f, e), flat[e["fqn"]]):
                raise AssertionError(f"torch loaded {e['fqn']} with values that differ from "
                                     "the image")
    return _result("load", args, entries, seconds, rss_before, peak, True)


# --- multi-process (gloo) ---------------------------------------------------

def _place(entry, world, loading):
    """The Shard dimension for this tensor, or None for a plain tensor."""
    shape = entry["shape"]
    if loading and len(shape) >= 2 and shape[1] >= world:
        return 1
    if len(shape) >= 1 and shape[0] >= world:
        return 0
    return None


def _contiguous_stride(shape):
    stride, s = [], 1
    for d in reversed(shape):
        stride.append(s)
        s *= d
    return tuple(reversed(stride))


def _dist_body(rank, world, args, loading):
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh = DeviceMesh("cpu", list(range(world)))
    entries = read_index(args.index)
    flat, pieces = {}, {}
    with open(args.image, "rb") as f:
        for e in entries:
            dt, shape = _dtype(e["dtype"]), e["shape"]
            dim = _place(e, world, loading)
            if dim is None:
                t = torch.empty(shape, dtype=dt)
                if loading:
                    _bytes_of(t).fill_(_FILL)
                else:
                    _read_into(f, e["offset"], t)
                flat[e["fqn"]] = t
                pieces[e["fqn"]] = (None, 0, t)
                continue
            placements = [Shard(dim)]
            local_shape, offsets = compute_local_shape_and_global_offset(shape, mesh, placements)
            local = torch.empty(local_shape, dtype=dt)
            if loading:
                _bytes_of(local).fill_(_FILL)
            else:  # row shards are contiguous in the image
                row = _nbytes(e) // shape[0]
                _read_into(f, e["offset"] + offsets[0] * row, local)
            flat[e["fqn"]] = DTensor.from_local(local, mesh, placements, run_check=False,
                                                shape=torch.Size(shape),
                                                stride=_contiguous_stride(shape))
            pieces[e["fqn"]] = (dim, offsets[dim], local)
    state = _nest(flat)
    dist.barrier()
    rss_before = _current_rss()
    t0 = time.perf_counter()
    if loading:
        dcp.load(state, storage_reader=FileSystemReader(args.ckpt))
    else:
        dcp.save(state, storage_writer=_writer(args))
    dist.barrier()
    seconds = time.perf_counter() - t0
    peak = _peak_rss()
    dist.barrier()  # peaks are taken before any rank starts comparing
    if loading:
        with open(args.image, "rb") as f:
            for e in entries:
                dim, start, local = pieces[e["fqn"]]
                want = _read_full(f, e)
                if dim is not None:
                    want = want.narrow(dim, start, local.shape[dim])
                if not _same_bits(want, local):
                    raise AssertionError(f"rank {rank} loaded its piece of {e['fqn']} with values "
                                         "that differ from the image")
    return {"seconds": seconds, "rss_before_bytes": rss_before, "max_rss_bytes": peak}


def _worker(rank, world, init_file, out_dir, args, loading):
    torch.set_num_threads(1)  # WORLD processes share a few cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=600))
    try:
        r = _dist_body(rank, world, args, loading)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(r, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def dist_run(args, loading):
    """Forks one process per rank (torch is imported once, here) and combines
    their reports; exits nonzero, with every failed rank's traceback on
    stderr, if any rank fails."""
    world = args.world
    with tempfile.TemporaryDirectory(prefix="torch-side-", dir=args.tmp) as tmp:
        init_file = os.path.join(tmp, "init")
        pids = {}
        for rank in range(world):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    _worker(rank, world, init_file, tmp, args, loading)
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
                    deadline = time.monotonic() + 5.0
        if failed:
            raise RuntimeError(f"{'dist-load' if loading else 'dist-save'} on {world} ranks "
                               f"failed: {'; '.join(failed)}")
        reports = []
        for rank in range(world):
            with open(os.path.join(tmp, f"rank{rank}.json")) as f:
                reports.append(json.load(f))
    entries = read_index(args.index)
    return _result("load" if loading else "save", args, entries,
                   max(r["seconds"] for r in reports),
                   sum(r["rss_before_bytes"] for r in reports),
                   sum(r["max_rss_bytes"] for r in reports), loading, ranks=world)


def idle(args):
    return {"op": "idle", "seconds": 0.0, "bytes": 0, "tensors": 0, "ranks": 1, "threads": 0,
            "transforms": [], "compression_level": 0, "rss_before_bytes": _current_rss(),
            "max_rss_bytes": _peak_rss(), "verified": False, "torch": torch.__version__}


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("op", choices=["save", "load", "dist-save", "dist-load", "idle"])
    p.add_argument("--image")
    p.add_argument("--index")
    p.add_argument("--ckpt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--zstd", action="store_true")
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--tmp", default=None, help="where the gloo rendezvous file goes")
    args = p.parse_args(argv)
    if args.op != "idle" and not (args.image and args.index and args.ckpt):
        p.error(f"{args.op} needs --image, --index and --ckpt")
    if args.op == "load" and args.zstd:
        args.zstd = False  # the reader finds the transforms in the metadata
    fn = {"save": save, "load": load, "idle": idle,
          "dist-save": lambda a: dist_run(a, loading=False),
          "dist-load": lambda a: dist_run(a, loading=True)}[args.op]
    print(json.dumps(fn(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
