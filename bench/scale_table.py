"""The scale table: what `.metadata` costs at R simulated ranks x T tensors
(every tensor row-sharded over all ranks, as an FSDP/TP save gives), for
R = 64, 256, 1024 and 4096 by default.

    cmake --build build --target scale_bench
    python3 bench/scale_table.py                       # all four sizes
    python3 bench/scale_table.py --ranks 64,256 --write-docs docs/benchmarks.md

Every measurement runs in a fresh process (build/bench/scale_bench, or
Python for torch), one after another; RSS "added" is the peak (VmHWM, reset
at the phase's start) minus the RSS just before the phase:
  * save planning at the coordinator: decoding the R gathered local plans
    and CreateGlobalSavePlan (dedup, validation, global plan);
  * `.metadata` size and EncodeMetadata of the global plan's Metadata with
    its storage filled in (one file per rank); against torch's
    pickle.dumps of the same Metadata (what FileSystemWriter.finish runs),
    for R <= --torch-max-ranks;
  * decode: DecodeMetadata (the public Metadata) and DecodeCompactMetadata
    (what a load now plans over), against torch's pickle.load;
  * load planning on one rank (the middle one): decode the bytes, plan that
    rank's reads of its row shard of every tensor, keep what the plan needs.
    At the same rank count (R) and resharded to 3R/4 ranks; "old" is
    DecodeMetadata + PlanTensorReads over the whole Metadata, which keeps it.

The file is written by dcpp's encoder (the 4,096-rank file would take hours
to make through torch's own classes); --check first compares, at 8 ranks,
the Metadata torch's pickle.load returns from it with the one from a file
made by torch's own planner code (bench/metadata_scale.py), field by field.

--write-docs FILE replaces the section between `<!-- scale:begin -->` and
`<!-- scale:end -->` in FILE (appending it if absent).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MDSCALE = os.path.join(HERE, "metadata_scale.py")


def run(args, timeout):
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        msg = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["exit %d" % out.returncode]
        return {"error": msg}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["process_s"] = time.perf_counter() - t0
    return r


def best(runs):
    """The run with the least CPU time; peaks are the largest seen."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    return min(ok, key=lambda r: json.dumps(r) and cpu_of(r))


def cpu_of(r):
    for key in ("total", "decode", "save_plan"):
        if key in r:
            return r[key]["cpu_s"]
    return r.get("cpu_s", 0)


def check_against_torch(bench, d, timeout):
    """At 8 ranks: torch's pickle.load of dcpp's file vs of torch's own."""
    tdir, ddir = os.path.join(d, "check_torch"), os.path.join(d, "check_dcpp")
    os.makedirs(ddir, exist_ok=True)
    g = run([sys.executable, MDSCALE, "--generate-only", "8", "2000", tdir], timeout)
    if "error" in g:
        return "torch generation failed: " + " ".join(g["error"])
    s = run([bench, "save", os.path.join(ddir, ".metadata"), "--ranks", "8"], timeout)
    if "error" in s:
        return "dcpp save failed: " + " ".join(s["error"])
    code = r"""
import pickle, sys, json
import torch.distributed.checkpoint  # noqa
a = pickle.load(open(sys.argv[1], 'rb')); b = pickle.load(open(sys.argv[2], 'rb'))
diff = []
if list(a.state_dict_metadata) != list(b.state_dict_metadata): diff.append('fqns')
for k, x in a.state_dict_metadata.items():
    y = b.state_dict_metadata[k]
    if (x.properties, x.size, x.chunks) != (y.properties, y.size, y.chunks): diff.append(k)
if a.planner_data != b.planner_data: diff.append('planner_data')
# (a dict: torch lists records in rank order, dcpp's encoder in entry order)
if set(a.storage_data) != set(b.storage_data): diff.append('storage_data keys')
files = all(a.storage_data[k].relative_path == b.storage_data[k].relative_path for k in a.storage_data)
same_len = sum(a.storage_data[k].length == b.storage_data[k].length for k in a.storage_data)
print(json.dumps({'diff': diff[:5], 'files_equal': files, 'records': len(a.storage_data),
                  'equal_lengths': same_len}))
"""
    out = subprocess.run([sys.executable, "-c", code, os.path.join(tdir, ".metadata"),
                          os.path.join(ddir, ".metadata")], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return "compare failed: " + out.stderr.strip().splitlines()[-1]
    r = json.loads(out.stdout)
    if r["diff"] or not r["files_equal"]:
        return f"differs from torch's: {r}"
    return (f"at 8 ranks x 2,000 tensors, torch's pickle.load of dcpp's file and of the file torch's own "
            f"planner code makes return equal entries (FQNs, properties, sizes, every chunk), planner_data, "
            f"storage_data keys (as a set: torch lists them by rank, dcpp by entry) and file names; only the archive lengths (hence offsets) differ "
            f"({r['equal_lengths']:,} of {r['records']:,} equal), which this benchmark sets to the tensor's "
            f"bytes + 1,088 instead of what torch.save writes")


def measure(args):
    bench = args.bench
    rows = []
    for ranks in [int(x) for x in args.ranks.split(",")]:
        d = os.path.join(args.dir, f"r{ranks}_t{args.tensors}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, ".metadata")
        row = {"ranks": ranks, "chunks": ranks * args.tensors}
        reps = range(args.reps if ranks < 1024 else 1)
        log = lambda what: print(f"  {ranks} ranks: {what}", file=sys.stderr, flush=True)
        log("save planning + encode")
        row["save"] = best([run([bench, "save", path, "--ranks", str(ranks), "--tensors", str(args.tensors)],
                                args.timeout) for _ in reps])
        row["bytes"] = os.path.getsize(path)
        log("decode")
        row["decode"] = best([run([bench, "decode", path], args.timeout) for _ in reps])
        row["decode_compact"] = best([run([bench, "decode", path, "--compact"], args.timeout) for _ in reps])
        if ranks <= args.torch_max_ranks:
            log("torch pickle.load / pickle.dumps")
            row["torch_load"] = best([run([sys.executable, MDSCALE, "--child", "torch-load", path], args.timeout)
                                      for _ in reps])
            row["torch_dump"] = best([run([sys.executable, MDSCALE, "--child", "torch-dump", path], args.timeout)
                                      for _ in reps])
        mid = ranks // 2
        for name, load_ranks, extra in (("load_same", ranks, []), ("load_reshard", ranks * 3 // 4, []),
                                        ("load_old", ranks, ["--old"])):
            if name == "load_old" and ranks > args.old_max_ranks:
                continue
            log(name)
            rank = min(mid, load_ranks - 1)
            row[name] = best([run([bench, "load-plan", path, "--load-ranks", str(load_ranks), "--rank", str(rank),
                                   *extra], args.timeout) for _ in reps])
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
        if not args.keep and ranks >= 1024:
            os.remove(path)
    return rows


def mib(n):
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} KiB"


def per_chunk(seconds, chunks):
    ns = seconds / chunks * 1e9
    return f"{ns:,.0f} ns" if ns < 10000 else f"{ns / 1000:,.1f} µs"


def phase(r, key, chunks, size=None):
    """'wall / cpu s (cpu per chunk); +added' for phase `key` of run r."""
    if r is None:
        return "not run"
    if "error" in r:
        return "error: " + " ".join(r["error"])
    p = r[key]
    s = f"{p['wall_s']:.2f} / {p['cpu_s']:.2f} s ({per_chunk(p['cpu_s'], chunks)}); +{mib(p['added'])}"
    if size:
        s += f" = {(p['added'] + size) / size:.2f}x file with its bytes"
    return s


def torch_cell(r, chunks):
    if r is None:
        return "not run (too slow)"
    if "error" in r:
        return "error: " + " ".join(r["error"])
    s = f"{r['time_s']:.2f} / {r['cpu_s']:.2f} s ({per_chunk(r['cpu_s'], chunks)})"
    if "peak" in r:
        s += f"; +{mib(r['peak'] - r['rss_before'])}"
    return s


def ratio(t, d):
    if t is None or "error" in t or d is None or "error" in d:
        return "–"
    return f"{t['time_s'] / d['wall_s']:.1f}x, {t['cpu_s'] / d['cpu_s']:.1f}x"


def load_cell(r, chunks, size):
    if r is None:
        return "not run"
    if "error" in r:
        return "error: " + " ".join(r["error"])
    dec, plan, tot = r["decode"], r["plan"], r["total"]
    return (f"{tot['cpu_s']:.2f} s cpu ({dec['cpu_s']:.2f} decode + {plan['cpu_s']:.2f} plan; "
            f"{per_chunk(tot['cpu_s'], chunks)}); peak +{mib(tot['added'])} = "
            f"{tot['added'] / size:.2f}x file; keeps {mib(max(r['kept'], 0))}; "
            f"{r['reads']:,} chunk reads")


def render(results, command, note):
    rows = results["rows"]
    L = [
        "## `.metadata` and planning at scale (generated by bench/scale_table.py)",
        "",
        f"Command: `{command}`  ",
        f"Date: {results['date']}; {results['versions']}.  ",
        f"Machine: {results['machine']}.",
        "",
        "R simulated ranks x 2,000 tensors, every tensor row-sharded over all R ranks (R chunks each; "
        "6 of every 8 tensors 2-d bf16, 2 1-d fp32, the shapes of bench/metadata_scale.py), one data "
        "file per rank. Each cell is one fresh process (the best of the runs where several ran); times are "
        "wall / CPU seconds, with CPU time per chunk in parentheses (the machine is shared, so CPU time is "
        "the steady measure); *+N* is the peak RSS the phase added. `.metadata` is written by dcpp's "
        "encoder (see the note on torch below).",
        "",
        "### Save side: coordinator planning and `.metadata` encoding",
        "",
        "| ranks | chunks | save planning (decode gathered plans + global plan, dedup, validation) | `.metadata` | dcpp encode | torch `pickle.dumps` | encode speedup (wall, cpu) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n, s = r["chunks"], r["save"]
        size = r["bytes"]
        L.append(f"| {r['ranks']:,} | {n:,} | {phase(s, 'save_plan', n)} | {mib(size)} ({size / n:.0f} B/chunk) | "
                 f"{phase(s, 'encode', n)} | {torch_cell(r.get('torch_dump'), n)} | "
                 f"{ratio(r.get('torch_dump'), s.get('encode') if 'error' not in s else None)} |")
    L += [
        "",
        "### Decode: the public `Metadata` and the compact form loads plan over",
        "",
        "| ranks | dcpp `DecodeMetadata` | dcpp `DecodeCompactMetadata` | torch `pickle.load` | speedup of DecodeMetadata (wall, cpu) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        n, size = r["chunks"], r["bytes"]
        dd = r["decode"]
        L.append(f"| {r['ranks']:,} | {phase(dd, 'decode', n, size)} | {phase(r['decode_compact'], 'decode', n, size)} | "
                 f"{torch_cell(r.get('torch_load'), n)} | {ratio(r.get('torch_load'), dd.get('decode') if 'error' not in dd else None)} |")
    L += [
        "",
        "### Load planning on one rank (rank R/2): decode the bytes, plan its row shard of every tensor, keep what the plan needs",
        "",
        "*Peak* is over reading the file, decoding and planning, relative to the process before it read the file "
        "(so it includes the file's bytes); *keeps* is the RSS left once the plan is made and everything else is freed.",
        "",
        "| ranks | compact, same R ranks | compact, resharded to 3R/4 ranks | old: `DecodeMetadata` + planning over the whole `Metadata`, same R |",
        "|---|---|---|---|",
    ]
    for r in rows:
        n, size = r["chunks"], r["bytes"]
        L.append(f"| {r['ranks']:,} | {load_cell(r.get('load_same'), n, size)} | {load_cell(r.get('load_reshard'), n, size)} | "
                 f"{load_cell(r.get('load_old'), n, size)} |")
    if results.get("check"):
        L += ["", "Check of the file against torch: " + results["check"] + "."]
    if note:
        L += ["", note]
    return "\n".join(L) + "\n"


def write_docs(path, text):
    block = f"{BEGIN}\n{text}{END}\n"
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = ""
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        tail = tail.lstrip("\n")
        doc = head + block + ("\n" + tail if tail else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    with open(path, "w") as f:
        f.write(doc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="64,256,1024,4096")
    ap.add_argument("--tensors", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=2, help="runs of each phase below 1,024 ranks (1 above)")
    ap.add_argument("--torch-max-ranks", type=int, default=256)
    ap.add_argument("--old-max-ranks", type=int, default=4096)
    ap.add_argument("--dir", default="/tmp/dcpp-scale")
    ap.add_argument("--bench", default=os.path.join(ROOT, "build/bench/scale_bench"))
    ap.add_argument("--check", action="store_true", help="compare dcpp's file with torch's at 8 ranks first")
    ap.add_argument("--keep", action="store_true", help="keep the files of 1,024 ranks and more")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--json", help="also save the measurements here")
    ap.add_argument("--from-json", nargs="+", help="render these --json files' rows (in order) without measuring")
    ap.add_argument("--write-docs", metavar="FILE")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    command = "python3 bench/scale_table.py " + " ".join(sys.argv[1:])

    if args.from_json:
        results = None
        for p in args.from_json:
            part = json.load(open(p))
            if results is None:
                results = part
            else:
                results["rows"] += part["rows"]
                results["check"] = part.get("check") or results.get("check")
        results["rows"].sort(key=lambda r: r["ranks"])
        command = "; ".join(json.load(open(p))["command"] for p in args.from_json)
    else:
        if not os.path.exists(args.bench):
            sys.exit(f"{args.bench} is missing: cmake --build build --target scale_bench")
        import torch

        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        results = {
            "versions": f"dcpp {rev}, torch {torch.__version__}, Python {platform.python_version()}",
            "machine": f"{os.cpu_count()} cores, {mem / 2**30:.1f} GiB RAM, {platform.platform()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": command.strip(),
        }
        if args.check:
            results["check"] = check_against_torch(args.bench, args.dir, args.timeout)
            print(results["check"], file=sys.stderr, flush=True)
        results["rows"] = measure(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    text = render(results, command.strip(), args.note)
    print(text)
    if args.write_docs:
        write_docs(args.write_docs, text)


if __name__ == "__main__":
    main()
