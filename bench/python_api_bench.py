"""torch's own dcp.save / dcp.load, with torch's FileSystemWriter/Reader
versus dcpp.torch's, on the same state dict in the same run; dcpp's native
Python API (dcpp.save / dcpp.load) for reference.

    python3 bench/python_api_bench.py                       # 256 MiB, bf16
    python3 bench/python_api_bench.py --size-mib 1024 --thread-count 4 --zstd
    python3 bench/python_api_bench.py --write-docs docs/benchmarks.md

Each repeat saves to a fresh directory (fsync on, as both writers default
to; --no-sync turns it off for all) and loads into preallocated tensors
(page cache warm: the data was just written). Runs alternate between the
implementations so drift in machine load hits both; the table shows the
best and the median of the repeats and the speedup of dcpp over torch by
medians. Every save and load starts after os.sync(), so no earlier write is
flushed inside it. Loaded tensors are checked against the saved ones once per
implementation. The last row is the machine's own bound for the same bytes:
dd writing one file (with conv=fdatasync when the writers sync) and reading
it from the page cache; its "speedup" is the most any storage layer could
gain over torch's here.

--write-docs replaces the section between `<!-- pybench:begin -->` and
`<!-- pybench:end -->` in the given markdown file (appending it if absent).
"""
import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._extension import ZStandard

import dcpp
import dcpp.torch as dtorch

warnings.filterwarnings("ignore", message="torch.distributed is disabled")

BEGIN, END = "<!-- pybench:begin -->", "<!-- pybench:end -->"


def make_state(size_mib, n_tensors, dtype, seed=0):
    """A model-like state dict: tensors of mixed sizes summing to size_mib,
    with normal(0, 0.02) values (compressible as real weights are), plus an
    optimizer step and a few plain values."""
    g = torch.Generator().manual_seed(seed)
    total = size_mib << 20
    elem = torch.empty((), dtype=dtype).element_size()
    weights = [1 + (i % 7) for i in range(n_tensors)]  # uneven sizes
    model = {}
    for i, w in enumerate(weights):
        numel = max(1, total * w // sum(weights) // elem)
        cols = 1024 if numel >= 1024 else numel
        rows = max(1, numel // cols)
        model[f"layers.{i}.weight"] = (torch.randn(rows, cols, generator=g) * 0.02).to(dtype)
    return {"model": model, "step": 1000, "config": {"lr": 3e-4, "name": "bench"}}


def zeros_like(sd):
    if isinstance(sd, dict):
        return {k: zeros_like(v) for k, v in sd.items()}
    if isinstance(sd, torch.Tensor):
        return torch.zeros_like(sd)
    return None


def check(expected, got, where="state"):
    if isinstance(expected, dict):
        for k, v in expected.items():
            check(v, got[k], f"{where}.{k}")
    elif isinstance(expected, torch.Tensor):
        if not torch.equal(expected, got):
            raise SystemExit(f"loaded {where} differs from what was saved")
    elif expected != got:
        raise SystemExit(f"loaded {where} = {got!r}, saved {expected!r}")


def nbytes(sd):
    return sum(t.numel() * t.element_size() for t in sd["model"].values())


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


class Impl:
    def __init__(self, name, save, load):
        self.name, self.save, self.load = name, save, load
        self.save_s, self.load_s, self.stored = [], [], 0


def implementations(args):
    zstd = args.zstd
    tc = args.thread_count
    sync = not args.no_sync

    def torch_save(sd, path):
        writer = dcp.FileSystemWriter(path, thread_count=tc, sync_files=sync,
                                      _extensions=[ZStandard()] if zstd else None)
        dcp.save(sd, storage_writer=writer)

    def torch_load(sd, path):
        dcp.load(sd, storage_reader=dcp.FileSystemReader(path))

    def dcpp_save(sd, path):
        writer = dtorch.FileSystemWriter(path, thread_count=tc, sync_files=sync,
                                         transforms=["stream.zstd/1"] if zstd else None)
        dcp.save(sd, storage_writer=writer)

    def dcpp_load(sd, path):
        dcp.load(sd, storage_reader=dtorch.FileSystemReader(path))

    def native_save(sd, path):
        dcpp.save(sd, path, thread_count=tc, sync_files=sync,
                  transforms=["stream.zstd/1"] if zstd else [])

    def native_load(sd, path):
        dcpp.load(sd, path)

    impls = [
        Impl("dcp + torch FileSystemWriter/Reader", torch_save, torch_load),
        Impl("dcp + dcpp.torch FileSystemWriter/Reader", dcpp_save, dcpp_load),
    ]
    if not args.no_native:
        impls.append(Impl("dcpp.save / dcpp.load (no torch planner)", native_save, native_load))
    return impls


def _dd_seconds(args):
    """Runs dd and returns the seconds it reports for its copy."""
    proc = subprocess.run(["dd", *args], capture_output=True, text=True, check=True)
    m = re.search(r"copied, ([0-9.e+-]+) s", proc.stderr)
    if not m:
        raise SystemExit(f"cannot read dd's output: {proc.stderr!r}")
    return float(m.group(1))


def machine_limit(args, nbytes, root):
    """The machine's own bound for the same bytes, as a pseudo-implementation:
    dd writing one file sequentially (with conv=fdatasync when the writers
    sync) and dd reading it back from the page cache."""
    f = os.path.join(root, "dd.bin")
    count = max(1, -(-nbytes // (4 << 20)))
    write = ["if=/dev/zero", f"of={f}", "bs=4M", f"count={count}"]
    if not args.no_sync:
        write.append("conv=fdatasync")
    impl = Impl(f"machine limit: dd write{', fdatasync' if not args.no_sync else ''} / "
                "dd read (page cache warm)", None, None)
    for _ in range(args.repeats):
        os.sync()
        impl.save_s.append(_dd_seconds(write))
        impl.load_s.append(_dd_seconds([f"if={f}", "of=/dev/null", "bs=4M"]))
        impl.stored = os.path.getsize(f)
        os.remove(f)
    return impl


def run(args):
    dtype = getattr(torch, args.dtype)
    sd = make_state(args.size_mib, args.tensors, dtype)
    data = nbytes(sd)
    impls = implementations(args)
    root = tempfile.mkdtemp(prefix="dcpp-pybench-", dir=args.dir)
    try:
        for rep in range(args.repeats):
            order = impls if rep % 2 == 0 else impls[::-1]
            for impl in order:
                path = os.path.join(root, f"{impl.name[:4]}-{rep}")
                os.sync()  # earlier writes are not flushed inside this measurement
                t0 = time.perf_counter()
                impl.save(sd, path)
                impl.save_s.append(time.perf_counter() - t0)
                impl.stored = dir_bytes(path)
                target = zeros_like(sd)
                os.sync()
                t0 = time.perf_counter()
                impl.load(target, path)
                impl.load_s.append(time.perf_counter() - t0)
                if rep == 0:
                    check(sd, target)
                shutil.rmtree(path)
        impls.append(machine_limit(args, data, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return sd, data, impls


def table(args, data, impls):
    mib = data / (1 << 20)
    base = impls[0]
    lines = [
        f"State: {args.tensors} {args.dtype} tensors, {mib:.0f} MiB"
        f"{', zstd (stream.zstd/1)' if args.zstd else ''}; thread_count={args.thread_count}; "
        f"sync_files={not args.no_sync}; "
        f"{args.repeats} repeats; one process. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "| storage layer | save best / median | save MiB/s | load best / median | load MiB/s "
        "| stored MiB | speedup save / load |",
        "|---|---|---|---|---|---|---|",
    ]
    for impl in impls:
        sm, lm = statistics.median(impl.save_s), statistics.median(impl.load_s)
        speed = (f"{statistics.median(base.save_s) / sm:.2f}x / "
                 f"{statistics.median(base.load_s) / lm:.2f}x") if impl is not base else "1x / 1x"
        lines.append(
            f"| {impl.name} | {min(impl.save_s):.3f} / {sm:.3f} s | {mib / sm:.0f} "
            f"| {min(impl.load_s):.3f} / {lm:.3f} s | {mib / lm:.0f} "
            f"| {impl.stored / (1 << 20):.1f} | {speed} |")
    return "\n".join(lines)


def write_docs(path, section, command):
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = (f"{BEGIN}\n## Python: torch's dcp.save / dcp.load with dcpp's storage layer\n\n"
             f"`{command}`\n\n{section}\n{END}")
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=256, help="tensor bytes in the state dict")
    p.add_argument("--tensors", type=int, default=64, help="number of tensors")
    p.add_argument("--dtype", default="bfloat16", help="torch dtype name (bfloat16, float32 ...)")
    p.add_argument("--thread-count", type=int, default=1,
                   help="FileSystemWriter thread_count for both writers (files per rank)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--zstd", action="store_true", help="compress with stream.zstd/1")
    p.add_argument("--no-sync", action="store_true", help="sync_files=False for every writer")
    p.add_argument("--dir", default=None, help="where to write (default: the temp directory)")
    p.add_argument("--no-native", action="store_true", help="skip the dcpp.save/dcpp.load row")
    p.add_argument("--write-docs", metavar="MARKDOWN", help="update the pybench section there")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.size_mib < 1 or args.tensors < 1 or args.thread_count < 1:
        p.error("sizes, counts and repeats must be >= 1")
    _, data, impls = run(args)
    section = table(args, data, impls)
    print(section)
    if args.write_docs:
        shown = [a for i, a in enumerate(argv)
                 if a != "--write-docs" and (i == 0 or argv[i - 1] != "--write-docs")
                 and not a.startswith("--write-docs=")]
        command = " ".join(["python3 bench/python_api_bench.py", *shown])
        write_docs(args.write_docs, section, command)
        print(f"\nwrote the pybench section of {args.write_docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
