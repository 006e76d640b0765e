#!/usr/bin/env python3
"""torch.save <-> DCP conversion: `dcpp convert` vs torch's format_utils.

Measures, in the same run and on the same files:
  * DCP -> torch.save: `dcpp convert SRC out.pt --to torch-save` vs torch's
    dcp_to_torch_save (loads everything with _EmptyStateDictLoadPlanner,
    then torch.save);
  * torch.save -> DCP: `dcpp convert model.pt DST` vs torch's
    torch_save_to_dcp (torch.load, then a DCP save).
Each conversion runs in a fresh process; time is wall-clock, memory the
process's peak RSS (ru_maxrss). fsync is left on for both (torch's
FileSystemWriter syncs its files; torch.save does not sync, and dcpp's
torch.save writer does). The page cache is warm: the source was just
written.

    python3 bench/torch_save_bench.py --size-mib 1024 [--reps 2] [--write-docs docs/benchmarks.md]

--write-docs replaces the section between `<!-- torchsave:begin -->` and
`<!-- torchsave:end -->` in the given markdown file (appending it if absent).
"""
import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

BEGIN, END = "<!-- torchsave:begin -->", "<!-- torchsave:end -->"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

TORCH_SIDE = r"""
import sys, warnings
warnings.filterwarnings("ignore")
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp
import time
mode, src, dst = sys.argv[1:4]
t0 = time.perf_counter()
(dcp_to_torch_save if mode == "dcp_to_torch" else torch_save_to_dcp)(src, dst)
sys.stderr.write(f"INNER {time.perf_counter() - t0}\n")
"""

PROBE = r"""
import resource, subprocess, sys, time
t0 = time.perf_counter()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
dt = time.perf_counter() - t0
sys.stderr.write(r.stderr[-2000:])
print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
sys.exit(r.returncode)
"""


def measure(cmd):
    out = subprocess.run([sys.executable, "-c", PROBE, *cmd], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    seconds, rss = out.stdout.split()
    inner = [float(l.split()[1]) for l in out.stderr.splitlines() if l.startswith("INNER ")]
    return float(seconds), float(rss), inner[0] if inner else float(seconds)


def make_state(size_mib):
    """A training-like state: 16 float32 weights and Adam moments, plus
    values (step, hyper-parameters), about size_mib MiB in all."""
    import torch

    n = 16
    per = size_mib * (1 << 20) // (3 * n * 4)  # elements per tensor (weight + 2 moments)
    cols = 1024
    rows = max(1, per // cols)
    g = torch.Generator().manual_seed(0)
    model = {f"layers.{i}.weight": torch.randn(rows, cols, generator=g) for i in range(n)}
    state = {i: {"step": torch.tensor(10.0), "exp_avg": torch.randn(rows, cols, generator=g),
                 "exp_avg_sq": torch.rand(rows, cols, generator=g)} for i in range(n)}
    groups = [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
               "params": list(range(n))}]
    return {"model": model, "optim": {"state": state, "param_groups": groups}, "step": 10}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--cli", default=os.environ.get("DCPP_CLI") or
                    os.path.join(REPO, "build", "tools", "dcpp", "dcpp"))
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--write-docs", default=None)
    args = ap.parse_args()

    import torch
    import torch.distributed.checkpoint as dcp

    work = tempfile.mkdtemp(prefix="torchsave_bench_", dir=args.dir)
    try:
        state = make_state(args.size_mib)
        nbytes = sum(t.numel() * t.element_size() for t in state["model"].values())
        nbytes += sum(t.numel() * t.element_size() for s in state["optim"]["state"].values()
                      for t in s.values())
        src_pt = os.path.join(work, "model.pt")
        src_dcp = os.path.join(work, "dcp")
        torch.save(state, src_pt)
        dcp.save(state, storage_writer=dcp.FileSystemWriter(src_dcp))
        del state

        rows = {}
        cases = [
            ("DCP -> torch.save", "torch dcp_to_torch_save",
             lambda d: [sys.executable, "-c", TORCH_SIDE, "dcp_to_torch", src_dcp,
                        os.path.join(d, "out.pt")]),
            ("DCP -> torch.save", "dcpp convert --to torch-save",
             lambda d: [args.cli, "convert", "--quiet", src_dcp, os.path.join(d, "out.pt"),
                        "--to", "torch-save"]),
            ("torch.save -> DCP", "torch torch_save_to_dcp",
             lambda d: [sys.executable, "-c", TORCH_SIDE, "torch_to_dcp", src_pt,
                        os.path.join(d, "dcp")]),
            ("torch.save -> DCP", "dcpp convert",
             lambda d: [args.cli, "convert", "--quiet", src_pt, os.path.join(d, "dcp")]),
        ]
        for rep in range(args.reps):
            for direction, who, cmd in cases:
                out = os.path.join(work, "out")
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(out)
                t, rss, inner = measure(cmd(out))
                rows.setdefault((direction, who), []).append((t, rss, inner))
                print(f"rep {rep}: {direction:18s} {who:30s} {t:7.2f} s (conversion "
                      f"{inner:.2f} s) {rss:7.0f} MiB", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    lines = [BEGIN,
             f"Command: `python3 bench/torch_save_bench.py --size-mib {args.size_mib} "
             f"--reps {args.reps} --write-docs docs/benchmarks.md`",
             "",
             f"State: {nbytes / 2**30:.2f} GiB of float32 tensors (16 weights + Adam moments, "
             f"as model/optim nested dicts) plus values; fsync on for dcpp and torch's DCP "
             f"writer; warm page cache; median of {args.reps}. {platform.machine()}, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__}.",
             "",
             "Wall time is the whole process; \"conversion\" leaves out torch's interpreter "
             "start and `import torch` (which took several seconds on this loaded machine) "
             "and equals wall time for the dcpp CLI. Speed-ups below compare conversion times.",
             "",
             "| direction | tool | wall s | conversion s | peak RSS |",
             "|---|---|---:|---:|---:|"]
    summary = []
    for direction in ("DCP -> torch.save", "torch.save -> DCP"):
        got = {}
        for (d, who), runs in rows.items():
            if d != direction:
                continue
            t = median([r[0] for r in runs])
            m = max(r[1] for r in runs)
            inner = median([r[2] for r in runs])
            got[who.split()[0]] = (inner, m)
            lines.append(f"| {direction} | {who} | {t:.2f} | {inner:.2f} | {m:.0f} MiB |")
        if "torch" in got and "dcpp" in got:
            summary.append(f"- {direction}: dcpp **{got['torch'][0] / got['dcpp'][0]:.1f}x** "
                           f"faster, peak RSS {got['dcpp'][1]:.0f} MiB vs {got['torch'][1]:.0f} MiB.")
    lines += [""] + summary + [END]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        try:
            doc = open(args.write_docs).read()
        except FileNotFoundError:
            doc = ""
        if BEGIN in doc and END in doc:
            doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
        else:
            doc = doc.rstrip("\n") + "\n\n## torch.save conversions (`bench/torch_save_bench.py`)\n\n" + \
                text + "\n"
        with open(args.write_docs, "w") as f:
            f.write(doc)


if __name__ == "__main__":
    main()
