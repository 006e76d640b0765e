"""Async checkpointing: how long the training loop stalls, how fast the
background write goes, and how much the steps running beside it slow down,
for dcpp and torch's dcp.async_save on the same state in the same run.

    python3 bench/async_bench.py                        # 1 GiB, 3 repeats
    python3 bench/async_bench.py --size-mib 256 --saves 100 --reps 2
    python3 bench/async_bench.py --write-docs docs/benchmarks.md

Measured (every stall is the wall time of the call that returns control to
the training loop; medians of --reps, after one warm-up save that maps the
pools):
* memcpy bound: one thread copying every tensor into preallocated,
  already-faulted tensors (torch's copy_, one thread) -- the cheapest a
  snapshot can be on one core; and the same with all cores.
* dcpp.AsyncCheckpointer.save / dcpp.async_save stall.
* torch 2.13 dcp.async_save stall with its default stager (torch's
  FileSystemWriter) and with dcpp.torch.Stager (dcpp's writer).
* background write time of dcpp's async save vs a sync dcpp.save of the same
  state (throughput ratio).
* step slowdown: a fixed compute step (a torch matmul on one thread, like a
  training step competing for the CPU) timed alone and while a background
  save is writing.
* RSS over --saves consecutive async saves of a smaller state: growth after
  the first, and peak RSS vs state + pool.

--write-docs replaces the section between `<!-- asyncbench:begin -->` and
`<!-- asyncbench:end -->` in the given markdown file (appending it if absent).
"""
import argparse
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.distributed.checkpoint as dcp

import dcpp
import dcpp.torch as dtorch

warnings.filterwarnings("ignore", message="torch.distributed is disabled")

BEGIN, END = "<!-- asyncbench:begin -->", "<!-- asyncbench:end -->"


def make_state(size_mib, n_tensors=64):
    """A model-like state: n_tensors float32 tensors summing to size_mib,
    plus a few scalars."""
    per = (size_mib << 20) // n_tensors // 4
    g = torch.Generator().manual_seed(0)
    sd = {"model": {f"layer{i}.weight": torch.randn(per, generator=g) for i in range(n_tensors)}}
    sd["step"] = 0
    sd["lr"] = 1e-3
    return sd


def nbytes(sd):
    return sum(t.numel() * t.element_size() for t in sd["model"].values())


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def memcpy_bound(sd, threads):
    """Copies every tensor into preallocated, faulted tensors on `threads`
    threads (torch's copy_ releases the GIL; each tensor on one thread)."""
    from concurrent.futures import ThreadPoolExecutor

    dst = {k: torch.empty_like(v) for k, v in sd["model"].items()}
    for k, v in dst.items():
        v.copy_(sd["model"][k])  # fault the pages in
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    keys = list(dst)
    try:
        with ThreadPoolExecutor(threads) as pool:
            def copy():
                list(pool.map(lambda k: dst[k].copy_(sd["model"][k]), keys))
            return min(timed(copy)[0] for _ in range(3))
    finally:
        torch.set_num_threads(prev)


def compute_step(a, b):
    torch.mm(a, b)


def step_time(a, b, n=5):
    times = []
    for _ in range(n):
        times.append(timed(lambda: compute_step(a, b))[0])
    return statistics.median(times)


def touch(sd, i):
    # What a training step does to the state: every tensor changes.
    for v in sd["model"].values():
        v[0] = float(i)


def run(args):
    root = tempfile.mkdtemp(prefix="dcpp-async-bench-", dir=args.dir)
    sd = make_state(args.size_mib, args.tensors)
    size = nbytes(sd)
    cores = os.cpu_count() or 1
    rows = []
    res = {}
    try:
        res["memcpy1"] = memcpy_bound(sd, 1)
        res["memcpyN"] = memcpy_bound(sd, cores)

        # dcpp: warm-up (maps the pool), then repeats.
        ckpt = dcpp.AsyncCheckpointer()
        first = None
        stalls, writes = [], []
        for r in range(args.reps + 1):
            touch(sd, r)
            os.sync()
            t, fut = timed(lambda: ckpt.save(sd, os.path.join(root, "dcpp"), sync_files=args.sync))
            fut.result()
            if r == 0:
                first = t
            else:
                stalls.append(t)
                writes.append(fut.stats()["write_seconds"])
        res["dcpp_first"] = first
        res["dcpp_stall"] = statistics.median(stalls)
        res["dcpp_write"] = statistics.median(writes)

        syncs = []
        for r in range(args.reps):
            os.sync()
            syncs.append(timed(lambda: dcpp.save(sd, os.path.join(root, "sync"),
                                                 sync_files=args.sync))[0])
        res["dcpp_sync"] = statistics.median(syncs)

        # torch, default stager and torch's writer.
        tstalls = []
        for r in range(args.reps + 1):
            d = os.path.join(root, f"torch{r}")
            os.sync()
            t, fut = timed(lambda: dcp.async_save(
                sd, storage_writer=dcp.FileSystemWriter(d, sync_files=args.sync)))
            fut.result()
            shutil.rmtree(d, ignore_errors=True)
            if r > 0:
                tstalls.append(t)
        res["torch_stall"] = statistics.median(tstalls)

        # torch's async_save with dcpp's stager and writer.
        stager = dtorch.Stager()
        sstalls = []
        for r in range(args.reps + 1):
            d = os.path.join(root, "stager")
            os.sync()
            t, fut = timed(lambda: dcp.async_save(
                sd, storage_writer=dtorch.FileSystemWriter(d, sync_files=args.sync),
                async_stager=stager))
            fut.result()
            if r > 0:
                sstalls.append(t)
        stager.close()
        res["stager_stall"] = statistics.median(sstalls)

        # Step slowdown: one-thread matmul steps alone and beside a save.
        torch.set_num_threads(1)
        a = torch.randn(args.step_n, args.step_n)
        b = torch.randn(args.step_n, args.step_n)
        alone = step_time(a, b, 7)
        beside = []
        for r in range(args.reps):
            os.sync()
            fut = ckpt.save(sd, os.path.join(root, "dcpp"), sync_files=args.sync)
            while not fut.done():
                beside.append(timed(lambda: compute_step(a, b))[0])
            fut.result()
        torch.set_num_threads(cores)
        res["step_alone"] = alone
        res["step_beside"] = statistics.median(beside) if beside else alone
        res["steps_beside"] = len(beside)
        ckpt.close()

        # RSS across many saves of a smaller state.
        small = make_state(args.rss_mib, 16)
        small_bytes = nbytes(small)
        with dcpp.AsyncCheckpointer() as c:
            c.save(small, os.path.join(root, "rss"), sync_files=False).result()
            after_first = rss()
            for i in range(args.saves - 1):
                touch(small, i)
                c.save(small, os.path.join(root, "rss"), sync_files=False).result()
            res["rss_growth"] = rss() - after_first
            res["rss_pool"] = c.pool_bytes
        res["rss_small"] = small_bytes
        res["rss_now"] = rss()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    gib = size / (1 << 30)
    def rate(s):
        return f"{size / s / (1 << 30):.2f} GiB/s"
    rows = [
        ("memcpy, 1 thread, into faulted memory (bound)", res["memcpy1"], rate(res["memcpy1"]), "1.00x"),
        (f"memcpy, {cores} threads", res["memcpyN"], rate(res["memcpyN"]),
         f"{res['memcpyN'] / res['memcpy1']:.2f}x"),
        ("dcpp AsyncCheckpointer.save stall (pool reused)", res["dcpp_stall"], rate(res["dcpp_stall"]),
         f"{res['dcpp_stall'] / res['memcpy1']:.2f}x"),
        ("dcpp first save stall (pool mapped, pages fault in)", res["dcpp_first"], rate(res["dcpp_first"]),
         f"{res['dcpp_first'] / res['memcpy1']:.2f}x"),
        ("torch dcp.async_save stall (default stager)", res["torch_stall"], rate(res["torch_stall"]),
         f"{res['torch_stall'] / res['memcpy1']:.2f}x"),
        ("torch dcp.async_save + dcpp.torch.Stager stall", res["stager_stall"], rate(res["stager_stall"]),
         f"{res['stager_stall'] / res['memcpy1']:.2f}x"),
    ]
    lines = [
        f"State: {gib:.2f} GiB in {args.tensors} float32 tensors; fsync {'on' if args.sync else 'off'}; "
        f"{args.reps} repeats (median), after a warm-up save. {platform.machine()}, {cores} CPUs, "
        f"torch {torch.__version__}.",
        "",
        "| Stall (call returns to the loop) | seconds | rate | vs 1-thread memcpy |",
        "|---|---:|---:|---:|",
    ]
    for name, s, r, x in rows:
        lines.append(f"| {name} | {s:.3f} | {r} | {x} |")
    lines += [
        "",
        f"- Stall: dcpp is **{res['torch_stall'] / res['dcpp_stall']:.1f}x** shorter than torch's "
        f"dcp.async_save; torch's async_save with dcpp.torch.Stager is "
        f"{res['torch_stall'] / res['stager_stall']:.1f}x shorter than with its default stager.",
        f"- Background write: {res['dcpp_write']:.3f} s vs a sync dcpp.save of the same state "
        f"{res['dcpp_sync']:.3f} s: **{res['dcpp_sync'] / res['dcpp_write'] * 100:.0f}%** of the "
        f"sync throughput.",
        f"- Step slowdown: a one-thread {args.step_n}x{args.step_n} matmul step took "
        f"{res['step_alone'] * 1e3:.1f} ms alone and {res['step_beside'] * 1e3:.1f} ms (median of "
        f"{res['steps_beside']} steps) while a background save was writing: "
        f"**{(res['step_beside'] / res['step_alone'] - 1) * 100:+.0f}%**.",
        f"- Memory: {args.saves} consecutive async saves of a {res['rss_small'] >> 20} MiB state: RSS "
        f"grew {res['rss_growth'] / (1 << 20):+.1f} MiB after the first save; pool "
        f"{res['rss_pool'] >> 20} MiB; process RSS at the end {res['rss_now'] >> 20} MiB "
        f"(includes the {gib:.2f} GiB state above and torch).",
    ]
    return "\n".join(lines)


def write_docs(path, text):
    block = f"{BEGIN}\n{text}\n{END}"
    body = open(path).read() if os.path.exists(path) else ""
    if BEGIN in body and END in body:
        body = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip("\n") + "\n\n## Async save (`bench/async_bench.py`)\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(body)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024, help="state size (default 1024)")
    p.add_argument("--tensors", type=int, default=64, help="tensors in the state (default 64)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--saves", type=int, default=100, help="saves in the RSS run (default 100)")
    p.add_argument("--rss-mib", type=int, default=64, help="state size of the RSS run (default 64)")
    p.add_argument("--step-n", type=int, default=384, help="matmul size of a compute step")
    p.add_argument("--no-sync", dest="sync", action="store_false", help="fsync off for every writer")
    p.add_argument("--dir", default=None, help="scratch directory (default: the system's temp)")
    p.add_argument("--write-docs", metavar="MD", help="replace the async section of this file")
    args = p.parse_args()
    text = run(args)
    print(text)
    if args.write_docs:
        write_docs(args.write_docs, f"Command: `python3 bench/async_bench.py "
                   f"{' '.join(sys.argv[1:]).replace('--write-docs ' + args.write_docs, '').strip()}`\n\n"
                   + text)


if __name__ == "__main__":
    main()
