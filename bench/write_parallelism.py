#!/usr/bin/env python3
"""How several threads should write one rank's bytes: the ways a writer can
split the work, on the same bytes in the same run.

    python3 bench/write_parallelism.py                 # 1 GiB, 2 and 4 threads
    python3 bench/write_parallelism.py --mib 256 --threads 2,8 --reps 1
    python3 bench/write_parallelism.py --write-docs docs/benchmarks.md

Layouts (each thread writes 1 MiB pwrite calls from one in-memory buffer,
which is touched beforehand; os.pwrite releases the GIL, so the threads
run in parallel in the kernel):
  one thread, one file           the baseline
  threads per file, one fd       T threads, disjoint ranges of one file
                                 through one descriptor (dcpp's layout
                                 before: items of one file at their offsets)
  ranges, separate fds           the same ranges, each thread opening the
                                 file itself
  files per thread               T files, one per thread
  slices, one fd                 T threads taking 512 KiB slices in turn
                                 (each write holds the inode lock briefly)
with fdatasync at the end (sync) and without (page cache). Each case writes
fresh files after os.sync(). The medians of --reps runs are reported with
dd's rate for the same bytes.

--write-docs replaces the section between `<!-- writepar:begin -->` and
`<!-- writepar:end -->` of the given markdown file.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

BEGIN, END = "<!-- writepar:begin -->", "<!-- writepar:end -->"
MIB = 1 << 20
IO = MIB


def _write_ranges(paths_for_thread, buf, total, threads, sync, mode):
    """Runs the threads; returns seconds (open to last fdatasync)."""
    per = total // threads
    fds = {}
    lock = threading.Lock()
    next_slice = [0]
    errors = []

    def work(t):
        try:
            if mode == "files":
                fd = os.open(paths_for_thread(t), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                base, start, end = 0, t * per, (t + 1) * per
            elif mode == "separate":
                fd = os.open(paths_for_thread(0), os.O_WRONLY)
                base, start, end = t * per, t * per, (t + 1) * per
            else:
                fd = fds[0]
                base, start, end = t * per, t * per, (t + 1) * per
            mv = memoryview(buf)
            if mode == "slices":
                step = 512 << 10
                while True:
                    with lock:
                        at = next_slice[0]
                        next_slice[0] += step
                    if at >= total:
                        break
                    os.pwrite(fd, mv[at:min(at + step, total)], at)
            else:
                at = start
                while at < end:
                    n = min(IO, end - at)
                    os.pwrite(fd, mv[at:at + n], base + (at - start))
                    at += n
            if sync and mode in ("files", "separate"):
                os.fdatasync(fd)
            if mode in ("files", "separate"):
                os.close(fd)
        except OSError as e:
            errors.append(e)

    t0 = time.perf_counter()
    if mode != "files":
        fds[0] = os.open(paths_for_thread(0), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if mode != "files":
        if sync:
            os.fdatasync(fds[0])
        os.close(fds[0])
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return seconds


def dd(path, mib, sync):
    os.sync()
    args = ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}"]
    if sync:
        args.append("conv=fdatasync")
    p = subprocess.run(args, capture_output=True, text=True)
    m = re.search(r"copied, ([0-9.e+-]+) s", p.stderr)
    os.remove(path)
    return float(m.group(1)) if m else float("nan")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--threads", default="2,4")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="256 MiB, one repetition")
    p.add_argument("--dir", default="/tmp/dcpp-writepar")
    p.add_argument("--write-docs", metavar="MD")
    a = p.parse_args(argv)
    if a.quick:
        a.mib, a.reps = min(a.mib, 256), 1
    os.makedirs(a.dir, exist_ok=True)
    total = a.mib * MIB
    buf = bytearray(os.urandom(MIB)) * a.mib  # touched, not compressible
    modes = [("threads per file, one fd", "shared"), ("ranges, separate fds", "separate"),
             ("files per thread", "files"), ("slices, one fd", "slices")]
    rows = []
    try:
        for sync in (True, False):
            d = statistics.median(dd(os.path.join(a.dir, "dd"), a.mib, sync) for _ in range(a.reps))
            rows.append((sync, "dd (one stream)", 1, d))
            base = []
            for _ in range(a.reps):
                shutil.rmtree(a.dir, ignore_errors=True)
                os.makedirs(a.dir)
                os.sync()
                base.append(_write_ranges(lambda t: os.path.join(a.dir, f"f{t}"), buf, total, 1,
                                          sync, "shared"))
            rows.append((sync, "one thread, one file", 1, statistics.median(base)))
            for threads in [int(t) for t in a.threads.split(",")]:
                for label, mode in modes:
                    runs = []
                    for _ in range(a.reps):
                        shutil.rmtree(a.dir, ignore_errors=True)
                        os.makedirs(a.dir)
                        os.sync()
                        runs.append(_write_ranges(lambda t: os.path.join(a.dir, f"f{t}"), buf,
                                                  total, threads, sync, mode))
                    rows.append((sync, label, threads, statistics.median(runs)))
                    print(f"sync={sync} {label} x{threads}: {rows[-1][3]:.3f} s", flush=True)
    finally:
        shutil.rmtree(a.dir, ignore_errors=True)
    lines = [BEGIN, "", "### Write parallelism (generated by bench/write_parallelism.py)", "",
             f"`python3 bench/write_parallelism.py --mib {a.mib} --threads {a.threads} "
             f"--reps {a.reps}` ({os.cpu_count()} CPUs; medians). GB/s of {a.mib} MiB written "
             "from one touched buffer in 1 MiB pwrite calls.", "",
             "| layout | threads | fdatasync: s | GB/s | page cache: s | GB/s |",
             "|---|---:|---:|---:|---:|---:|"]
    keyed = {}
    for sync, label, threads, s in rows:
        keyed.setdefault((label, threads), {})[sync] = s
    for (label, threads), v in keyed.items():
        cells = []
        for sync in (True, False):
            s = v.get(sync)
            cells += [f"{s:.3f}", f"{total / s / 1e9:.2f}"] if s else ["-", "-"]
        lines.append(f"| {label} | {threads} | " + " | ".join(cells) + " |")
    lines += ["", END]
    section = "\n".join(lines)
    print(section)
    if a.write_docs:
        with open(a.write_docs) as f:
            text = f.read()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            text = head + section + rest.split(END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        with open(a.write_docs + ".tmp", "w") as f:
            f.write(text)
        os.replace(a.write_docs + ".tmp", a.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
