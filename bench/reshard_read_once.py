#!/usr/bin/env python3
"""Resharded load 4 -> 3 ranks: dcpp with shared reads (each saved byte read
once for the process), dcpp with every rank reading for itself
(--no-share-reads), and torch DCP (3 gloo processes), in the same run, with
the bytes dcpp read from storage (LoadStats, per rank and in total).

    python3 bench/reshard_read_once.py --size-gib 1 --reps 3

Uses bench/run_benchmarks.py's synthetic transformer state, its `dcpp bench`
and bench/torch_side.py command lines and its page-cache warming: the saves
(4 ranks, row shards, no fsync) are untimed; each load finds the checkpoint
in the page cache and loads column shards (dim 1 split 3 ways where it can).
Prints a Markdown table of medians and writes every run to --json.
"""
import argparse
import json
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_benchmarks as rb  # noqa: E402

GIB = 1 << 30


def main(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gib", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="I/O threads per rank, both engines")
    p.add_argument("--save-ranks", type=int, default=4)
    p.add_argument("--load-ranks", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default="/tmp/dcpp-reshard-bench")
    p.add_argument("--dcpp", default=os.path.join(rb.REPO, "build", "tools", "dcpp", "dcpp"))
    p.add_argument("--baseline-dcpp", help="another build's dcpp (e.g. main's) to run as well")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", help="write every run here")
    a = p.parse_args(argv)
    os.makedirs(a.dir, exist_ok=True)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    specs = rb.transformer_specs(int(a.size_gib * GIB))
    image, index, state_bytes, tensors = rb.write_state("transformer", specs, a.dir, a.seed)
    log(f"state: {state_bytes / GIB:.2f} GiB, {tensors} tensors")
    save_cfg = {"fsync": False, "ranks": a.save_ranks, "transforms": [], "level": 0}
    ckpt = {e: os.path.join(a.dir, "ckpt-" + e) for e in ("dcpp", "torch")}
    for e, path in ckpt.items():
        shutil.rmtree(path, ignore_errors=True)
        run = rb.measure(rb.command(e, "save", save_cfg, a.save_ranks, image, index, path, a),
                         a.timeout)
        if "error" in run:
            sys.exit(f"{e} save failed: {run['error']}")
    files, stored = rb.checkpoint_files(ckpt["dcpp"])
    log(f"dcpp checkpoint: {files} data files, {stored} bytes")

    variants = {
        "dcpp, shared reads": ("dcpp", []),
        "dcpp, each rank reads for itself": ("dcpp", ["--no-share-reads"]),
        "torch DCP (gloo processes)": ("torch", []),
    }
    if a.baseline_dcpp:
        variants["dcpp, baseline build"] = ("baseline", [])
    runs = {v: [] for v in variants}
    for rep in range(a.reps):
        for name, (engine, extra) in variants.items():
            path = ckpt["dcpp" if engine == "baseline" else engine]
            rb.warm(path)
            cmd = rb.command("torch" if engine == "torch" else "dcpp", "load", save_cfg,
                             a.load_ranks, image, index, path, a) + extra
            if engine == "baseline":
                cmd[0] = a.baseline_dcpp
            run = rb.measure(cmd, a.timeout)
            runs[name].append(run)
            log(f"  {name} rep {rep + 1}: " +
                (run["error"] if "error" in run else
                 f"{run['seconds']:.3f} s" +
                 (f", {run['bytes_read'] / GIB:.2f} GiB read" if "bytes_read" in run else "")))

    torch_s = None
    rows = []
    for name, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            rows.append((name, rs[0]["error"], "", "", ""))
            continue
        sec = statistics.median(r["seconds"] for r in ok)
        if name.startswith("torch"):
            torch_s = sec
        verified = all(r.get("verified") for r in ok)
        read = ok[0].get("bytes_read")
        by_rank = ok[0].get("bytes_read_by_rank")
        rows.append((name, sec, read, by_rank, verified))
    print(f"Resharded load {a.save_ranks} -> {a.load_ranks} ranks, {state_bytes / GIB:.2f} GiB "
          f"state ({tensors} tensors), data files {stored / GIB:.2f} GiB, page cache warm, "
          f"{a.threads} I/O threads per rank, median of {a.reps}\n")
    print("| load | seconds | vs torch | read from storage (all ranks) | per rank | verified |")
    print("|---|---|---|---|---|---|")
    for name, sec, read, by_rank, verified in rows:
        if isinstance(sec, str):
            print(f"| {name} | error: {sec} | | | | |")
            continue
        ratio = f"{torch_s / sec:.1f}x" if torch_s else ""
        read_s = f"{read / GIB:.2f} GiB ({read / stored:.2f}x the files)" if read else "n/a"
        per = ", ".join(f"{b / GIB:.2f}" for b in by_rank) + " GiB" if by_rank else "n/a"
        print(f"| {name} | {sec:.3f} | {ratio} | {read_s} | {per} | {verified} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"state_bytes": state_bytes, "stored_bytes": stored, "runs": runs}, f,
                      indent=1)
    for path in ckpt.values():
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
