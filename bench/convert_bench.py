#!/usr/bin/env python3
"""`dcpp convert` (DCP -> DCP, the CLI users call) against torch's dcp.load +
dcp.save of the same checkpoint and against the machine's limits, in one run.

    python3 bench/convert_bench.py --dcpp build/tools/dcpp/dcpp \\
        [--baseline-dcpp OLD_BINARY] [--large-mib 1024] [--small-count 20000] \\
        [--reps 2] [--dir /tmp/convert_bench] [--write-docs docs/benchmarks.md]

Cases: (a) large: 16 tensors, half bfloat16 and half float32, --large-mib in
all; (b) small: --small-count tensors of 4-64 KiB (float32, sizes drawn with
a fixed seed). Each source is written by torch's dcp.save (FileSystemWriter,
its defaults: one file, CRC-32s); each conversion writes a fresh directory
with fsync, the source's page cache warm (read once before every run):
  - dcpp: `dcpp convert SRC DST --quiet`, the whole process under
    /usr/bin/time (wall seconds, peak RSS);
  - torch: a child process that builds the empty state dict from the
    metadata, then dcp.load + dcp.save(FileSystemWriter(DST)); timed inside
    the child from the load to the end of the save (imports excluded), peak
    RSS from /usr/bin/time;
  - limit: `dd if=/dev/zero of=F bs=16M conv=fdatasync` of the source's
    bytes plus a warm `dd` read of the source files: what one pass of
    reading and durably writing those bytes costs here.
Best of --reps for each. The dcpp outputs are checked: torch loads them with
every tensor equal to the source.

--write-docs replaces the section between `<!-- convertbench:begin -->` and
`<!-- convertbench:end -->` in the given file.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

BEGIN, END = "<!-- convertbench:begin -->", "<!-- convertbench:end -->"

TORCH_CONVERT = r"""
import sys, time, torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
src, dst = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
md = FileSystemReader(src).read_metadata()
state = {k: torch.empty(v.size, dtype=v.properties.dtype)
         for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
dcp.load(state, storage_reader=FileSystemReader(src))
dcp.save(state, storage_writer=FileSystemWriter(dst))
print("SECS", time.perf_counter() - t0)
"""

MAKE_SOURCE = r"""
import sys, random, torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
kind, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
g = torch.Generator().manual_seed(0)
state = {}
if kind == "large":
    per = n * (1 << 20) // 16
    for i in range(16):
        dt = torch.bfloat16 if i % 2 == 0 else torch.float32
        cols = 4096
        rows = max(1, per // (cols * (2 if dt == torch.bfloat16 else 4)))
        state[f"model.layers.{i}.w"] = torch.randn(rows, cols, generator=g).to(dt)
else:
    rnd = random.Random(0)
    for i in range(n):
        elems = rnd.randint(1024, 16384)  # 4-64 KiB of float32
        state[f"model.block{i // 100}.p{i % 100}"] = torch.randn(elems, generator=g)
dcp.save(state, storage_writer=FileSystemWriter(path))
"""

CHECK = r"""
import sys, torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
a, b = sys.argv[1], sys.argv[2]
md = FileSystemReader(a).read_metadata()
def empty():
    return {k: torch.empty(v.size, dtype=v.properties.dtype)
            for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
x, y = empty(), empty()
dcp.load(x, storage_reader=FileSystemReader(a))
dcp.load(y, storage_reader=FileSystemReader(b))
bad = [k for k in x if not torch.equal(x[k], y[k])]
print("EQUAL" if not bad else "DIFFER " + ",".join(bad[:5]))
"""


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def timed(cmd):
    """Wall seconds, peak RSS (MiB) and stdout of `cmd` under /usr/bin/time."""
    p = run(["/usr/bin/time", "-f", "TIME %e %M"] + cmd)
    line = [x for x in p.stderr.splitlines() if x.startswith("TIME ")][-1]
    _, secs, kb = line.split()
    return float(secs), int(kb) / 1024, p.stdout


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def warm(path):
    for f in sorted(os.listdir(path)):
        with open(os.path.join(path, f), "rb") as h:
            while h.read(1 << 24):
                pass


def limit(src, scratch):
    """Seconds of a warm read of `src` plus a dd fdatasync write of its bytes."""
    warm(src)
    t0 = time.perf_counter()
    for f in sorted(os.listdir(src)):
        run(["dd", f"if={os.path.join(src, f)}", "of=/dev/null", "bs=16M"])
    read = time.perf_counter() - t0
    mib = max(1, (dir_bytes(src) + (1 << 20) - 1) >> 20)
    out = os.path.join(scratch, "dd.out")
    t0 = time.perf_counter()
    run(["dd", "if=/dev/zero", f"of={out}", "bs=1M", f"count={mib}", "conv=fdatasync"])
    write = time.perf_counter() - t0
    os.remove(out)
    return read, write


def bench_case(name, src, a, scratch):
    res = {"bytes": dir_bytes(src),
           "files": sum(f.endswith(".distcp") for f in os.listdir(src))}
    best = {}
    binaries = [("dcpp", a.dcpp)] + ([("before", a.baseline_dcpp)] if a.baseline_dcpp else [])
    for rep in range(a.reps):
        for label, binary in binaries:
            dst = os.path.join(scratch, f"{name}_{label}")
            shutil.rmtree(dst, ignore_errors=True)
            warm(src)
            secs, mib, _ = timed([binary, "convert", src, dst, "--quiet"])
            if label not in best or secs < best[label][0]:
                best[label] = (secs, mib)
            if rep == 0 and label == "dcpp":
                out = run([sys.executable, "-c", CHECK, src, dst]).stdout.strip()
                if out != "EQUAL":
                    raise SystemExit(f"{name}: dcpp's output differs from the source: {out}")
            shutil.rmtree(dst, ignore_errors=True)
        dst = os.path.join(scratch, f"{name}_torch")
        shutil.rmtree(dst, ignore_errors=True)
        warm(src)
        _, mib, out = timed([sys.executable, "-c", TORCH_CONVERT, src, dst])
        secs = float([x for x in out.splitlines() if x.startswith("SECS")][-1].split()[1])
        if "torch" not in best or secs < best["torch"][0]:
            best["torch"] = (secs, mib)
        shutil.rmtree(dst, ignore_errors=True)
        r, w = limit(src, scratch)
        if "limit" not in best or r + w < best["limit"][0]:
            best["limit"] = (r + w, 0, r, w)
    res.update(best)
    return res


def table(results, a):
    gib = lambda b: b / (1 << 30)
    lines = [
        "| case | source | dcpp convert | torch load+save | dcpp vs torch | limit (dd write + warm read) "
        "| dcpp / limit | peak RSS dcpp / torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        d, t, l = r["dcpp"], r["torch"], r["limit"]
        lines.append(
            f"| {name} | {gib(r['bytes']):.2f} GiB, {r['files']} data file{'s' if r['files'] != 1 else ''} | {d[0]:.2f} s | {t[0]:.2f} s "
            f"| **{t[0] / d[0]:.2f}x** | {l[0]:.2f} s ({l[3]:.2f} + {l[2]:.2f}) | {d[0] / l[0]:.2f}x "
            f"| {d[1]:.0f} / {t[1]:.0f} MiB |")
    if a.baseline_dcpp:
        lines.append("")
        lines.append("Before (LoadAll + Save, the binary given as --baseline-dcpp), same run:")
        lines.append("")
        for name, r in results.items():
            b, t = r["before"], r["torch"]
            lines.append(f"- {name}: {b[0]:.2f} s ({t[0] / b[0]:.2f}x torch), peak RSS {b[1]:.0f} MiB")
    return "\n".join(lines)


def write_docs(path, text):
    block = f"{BEGIN}\n{text}\n{END}"
    body = open(path).read() if os.path.exists(path) else ""
    if BEGIN in body and END in body:
        body = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip("\n") + "\n\n## Convert (`bench/convert_bench.py`)\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(body)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dcpp", required=True, help="the dcpp CLI binary")
    ap.add_argument("--baseline-dcpp", help="another dcpp binary to time beside it (before/after)")
    ap.add_argument("--large-mib", type=int, default=1024)
    ap.add_argument("--small-count", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--only", choices=["large", "small"])
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "convert_bench"))
    ap.add_argument("--write-docs", metavar="MD")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    results = {}
    cases = [("large", a.large_mib), ("small", a.small_count)]
    for kind, n in cases:
        if a.only and kind != a.only:
            continue
        src = os.path.join(a.dir, f"src_{kind}")
        shutil.rmtree(src, ignore_errors=True)
        run([sys.executable, "-c", MAKE_SOURCE, kind, src, str(n)])
        label = (f"large ({a.large_mib} MiB, 16 bf16/f32 tensors)" if kind == "large"
                 else f"small ({n} tensors of 4-64 KiB)")
        results[label] = bench_case(kind, src, a, a.dir)
        shutil.rmtree(src, ignore_errors=True)
        print(label, results[label], flush=True)
    text = table(results, a)
    print(text)
    if a.write_docs:
        head = (f"Command: `python3 bench/convert_bench.py --dcpp build/tools/dcpp/dcpp"
                f"{' --baseline-dcpp OLD' if a.baseline_dcpp else ''} --reps {a.reps}"
                f" --write-docs docs/benchmarks.md` (best of {a.reps}; sources written by "
                f"torch's dcp.save; fsync on for every writer; page cache warm).\n\n")
        write_docs(a.write_docs, head + text)


if __name__ == "__main__":
    main()
