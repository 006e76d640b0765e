"""`.metadata` at scale: the size of DCP's `.metadata` for R ranks x T
tensors, and how long torch and dcpp take to read and write it.

    cmake --build build --target metadata_bench      # the C++ side
    python3 bench/metadata_scale.py                  # R = 64, 256, 1024; T = 2000
    python3 bench/metadata_scale.py --ranks 64,256 --reps 3 --write-docs docs/benchmarks.md

The file is made the way torch 2.13's dcp.save makes it on R ranks, with
torch's own classes and functions, only without tensors' bytes: every
tensor is row-sharded over the R ranks (as a DTensor with Shard(0) is), so
it has R chunks, and each rank writes one file `__{rank}_0.distcp`.
  * each rank's local plan is built as _create_write_items_for_dtensor
    builds it (WriteItem, MetadataIndex, TensorWriteData,
    ChunkStorageMetadata, TensorProperties, torch.Size), with planner_data =
    DefaultSavePlanner's flatten mapping of {"model": {...}};
  * plans travel to the coordinator through pickle (gather_object does), the
    coordinator runs create_default_global_save_plan's loop and merges
    planner_data as DefaultSavePlanner does, and
    FileSystemWriter.prepare_global_plan gives each rank its file prefix
    (rank by rank, to keep one rank's plan in memory at a time);
  * each rank gets its plan back through pickle, and "writes" its items in
    plan order: the storage record of an item is _StorageInfo(file name,
    offset, length) with the length torch.save produces for the local shard;
    the WriteResults return through pickle;
  * FileSystemWriter.finish(metadata, results) writes `.metadata` (pickle.dump,
    Python's default protocol, with storage_meta and version).

Measured, each in a fresh process (RSS from /proc/self/status; "added" is the
peak minus the RSS just before the operation):
  * torch: pickle.load of the file (what FileSystemReader.read_metadata
    does), and pickle.dumps of the loaded Metadata (what finish() does);
  * dcpp (build/bench/metadata_bench): DecodeMetadata of the file's bytes (the
    fast path, and with --general-max-ranks the general pickle VM it falls
    back to), and EncodeMetadata of the decoded Metadata.

--write-docs FILE replaces the section between `<!-- mdscale:begin -->` and
`<!-- mdscale:end -->` in FILE (appending it if absent).
"""
import argparse
import dataclasses
import io
import json
import os
import platform
import subprocess
import sys
import time
from collections import ChainMap

BEGIN, END = "<!-- mdscale:begin -->", "<!-- mdscale:end -->"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# 8 tensor kinds per layer: (name, rows per rank, trailing dims, dtype name).
# Weights are 2-d bf16, norms 1-d fp32; every tensor has R * rows rows.
KINDS = [
    ("attn.q.weight", 16, (4096,), "bfloat16"),
    ("attn.k.weight", 4, (4096,), "bfloat16"),
    ("attn.v.weight", 4, (4096,), "bfloat16"),
    ("attn.o.weight", 16, (4096,), "bfloat16"),
    ("mlp.up.weight", 44, (4096,), "bfloat16"),
    ("mlp.down.weight", 16, (11264,), "bfloat16"),
    ("norm1.weight", 16, (), "float32"),
    ("norm2.weight", 16, (), "float32"),
]


def rss_status():
    """(VmRSS, VmHWM) of this process in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out["VmRSS"], out["VmHWM"]


# ---------------------------------------------------------------- generation


def generate(ranks, tensors, directory):
    """Writes directory/.metadata for `ranks` x `tensors` as torch's dcp.save
    would (see the module docstring). Returns its size in bytes."""
    import pickle

    import torch
    from torch.distributed.checkpoint.filesystem import FileSystemWriter, _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )
    from torch.distributed.checkpoint.planner import (
        SavePlan,
        TensorWriteData,
        WriteItem,
        WriteItemType,
    )
    from torch.distributed.checkpoint.storage import WriteResult

    specs = []
    for t in range(tensors):
        name, rows, rest, dtype = KINDS[t % len(KINDS)]
        specs.append((f"layers.{t // len(KINDS)}.{name}", rows, rest, getattr(torch, dtype)))

    saved_len = {}

    def torch_save_length(shape, dtype):
        # What _write_item records for a tensor item: the bytes torch.save writes.
        key = (shape, dtype)
        if key not in saved_len:
            buf = io.BytesIO()
            torch.save(torch.empty(shape, dtype=dtype), buf)
            saved_len[key] = buf.tell()
        return saved_len[key]

    def local_plan(rank):
        items = []
        mappings = {}
        for fqn_tail, rows, rest, dtype in specs:
            fqn = "model." + fqn_tail
            mappings[fqn] = ("model", fqn_tail)
            # As _create_write_items_for_dtensor does for Shard(0).
            sizes = torch.Size((rows,) + rest)
            offsets = torch.Size((rank * rows,) + (0,) * len(rest))
            properties = TensorProperties(
                dtype=dtype,
                layout=torch.strided,
                requires_grad=False,
                memory_format=torch.contiguous_format,
                pin_memory=False,
            )
            items.append(
                WriteItem(
                    index=MetadataIndex(fqn, offsets),
                    type=WriteItemType.SHARD,
                    tensor_data=TensorWriteData(
                        chunk=ChunkStorageMetadata(offsets=offsets, sizes=sizes),
                        properties=properties,
                        size=torch.Size((ranks * rows,) + rest),
                    ),
                )
            )
        return SavePlan(items, planner_data=mappings)

    def through_pickle(obj):  # what gather_object / scatter_object do to it
        return pickle.loads(pickle.dumps(obj))

    os.makedirs(directory, exist_ok=True)
    writer = FileSystemWriter(directory, sync_files=False)
    writer.reset(directory)
    writer.set_up_storage_writer(True, rank=0, use_collectives=True)

    # The coordinator's create_default_global_save_plan + DefaultSavePlanner's
    # planner_data merge + FileSystemWriter.prepare_global_plan, then each
    # rank's write_data and the gather of the results. Run rank by rank (the
    # same objects, in the same order) so that only one rank's plan is alive
    # at a time: all of them at 1,024 ranks would take ~10 GB.
    md = {}
    first_mapping = last_mapping = None
    placeholder = SavePlan([], storage_data="placeholder")
    results = []
    for r in range(ranks):
        plan = through_pickle(local_plan(r))  # gathered to the coordinator
        # The loop body of create_default_global_save_plan (no dedup needed:
        # every item is a distinct shard).
        new_items = []
        for item in plan.items:
            tensor_md = md.setdefault(
                item.index.fqn,
                TensorStorageMetadata(
                    properties=item.tensor_data.properties, size=item.tensor_data.size, chunks=[]
                ),
            )
            new_index = dataclasses.replace(item.index, index=len(tensor_md.chunks))
            new_items.append(dataclasses.replace(item, index=new_index))
            tensor_md.chunks.append(item.tensor_data.chunk)
        global_plan = dataclasses.replace(plan, items=new_items)
        if first_mapping is None:
            first_mapping = global_plan.planner_data
        last_mapping = global_plan.planner_data
        # (rank r's prefix comes from its position in the list; the others
        # are placeholders it leaves alone)
        global_plan = writer.prepare_global_plan([placeholder] * r + [global_plan])[r]

        plan = through_pickle(global_plan)  # scattered back to rank r
        file_name = f"{plan.storage_data.prefix}0.distcp"
        offset = 0
        rank_results = []
        for item in plan.items:
            length = torch_save_length(tuple(item.tensor_data.chunk.sizes), item.tensor_data.properties.dtype)
            rank_results.append(
                WriteResult(
                    index=item.index,
                    size_in_bytes=length,
                    storage_data=_StorageInfo(file_name, offset, length, transform_descriptors=None),
                )
            )
            offset += length
        results.append(through_pickle(rank_results))  # gathered to the coordinator
    # dict(ChainMap(*all planner_data)): keys in the last map's order (and its
    # key objects), values from the first; every rank's map has the same keys.
    merged = dict(ChainMap(first_mapping, last_mapping))
    metadata = Metadata(state_dict_metadata=md, planner_data=merged)
    writer.finish(metadata, results)
    return os.path.getsize(os.path.join(directory, ".metadata"))


# ---------------------------------------------------------------- measurements


def child_torch_load(path):
    import pickle

    import torch  # noqa: F401  (the classes the pickle names)
    import torch.distributed.checkpoint  # noqa: F401

    rss0, _ = rss_status()
    t0, c0 = time.perf_counter(), time.process_time()
    with open(path, "rb") as f:
        md = pickle.load(f)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, peak = rss_status()
    chunks = sum(len(v.chunks) for v in md.state_dict_metadata.values() if hasattr(v, "chunks"))
    return {"time_s": dt, "cpu_s": cpu, "rss_before": rss0, "peak": peak, "chunks": chunks}


def child_torch_dump(path):
    import pickle

    import torch  # noqa: F401
    import torch.distributed.checkpoint  # noqa: F401

    with open(path, "rb") as f:
        md = pickle.load(f)
    t0, c0 = time.perf_counter(), time.process_time()
    data = pickle.dumps(md)  # FileSystemWriter.finish: pickle.dump(metadata, file)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"time_s": dt, "cpu_s": cpu, "bytes": len(data)}


def run_child(args, timeout):
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:] or ["exit %d" % out.returncode]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_torch(kind, path, timeout):
    return run_child([sys.executable, os.path.abspath(__file__), "--child", kind, path], timeout)


def measure_dcpp(bench, mode, path, timeout, extra=()):
    return run_child([bench, mode, path, *extra], timeout)


def best(runs, key="time_s"):
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0] if runs else {"error": ["not run"]}
    b = dict(min(ok, key=lambda r: r[key]))
    for k in ("peak", "added"):
        if k in b:
            b[k] = max(r[k] for r in ok if k in r)
    return b


def mib(n):
    return f"{n / 2**20:,.0f} MiB"


def timing(r):
    if "error" in r:
        return "error: " + " ".join(r["error"])
    return f"{r['time_s']:.3f} s / {r['cpu_s']:.3f} s"


def ratio(a, b, key):
    if "error" in a or "error" in b:
        return "–"
    return f"{a[key] / b[key]:.1f}x"


def render(results, command, note):
    lines = [
        "## `.metadata` at scale (generated by bench/metadata_scale.py)",
        "",
        f"Command: `{command}`  ",
        f"Date: {results['date']}; {results['versions']}.  ",
        f"Machine: {results['machine']}.",
        "",
        "Each checkpoint: R ranks x 2,000 tensors, every tensor row-sharded over all ranks "
        "(R chunks each, 6 of every 8 tensors 2-d), one file per rank; `.metadata` made with "
        "torch's own classes and planner code as dcp.save makes it (see the script) and written by "
        "torch's FileSystemWriter.finish (pickle protocol 4). Each operation runs in a fresh "
        "process; times are wall / CPU seconds, the best of the runs (the machine is shared: "
        "CPU time is the steadier measure, and the speedups are given for both). *Added* = peak "
        "RSS (VmHWM) minus the RSS just before the operation: for torch the `pickle.load` from "
        "the open file (what FileSystemReader.read_metadata does), for dcpp `DecodeMetadata` "
        "of the file's bytes already in memory; *x file* = (added + the file's bytes) / file "
        "size, all the memory a decode needs. The general pickle VM is what DecodeMetadata "
        "used before the fast path, and still uses for anything the fast path declines. Encode: "
        "torch's `pickle.dumps` of the loaded Metadata (what finish() runs) vs dcpp's "
        "`EncodeMetadata` of the decoded Metadata (protocol 2, as torch.save's).",
        "",
        "| ranks | chunks | `.metadata` | torch `pickle.load` (wall / cpu; added RSS) | dcpp decode (wall / cpu; added RSS, x file) | speedup (wall, cpu) | dcpp compact decode, what loads plan over (wall / cpu; added RSS, x file) | dcpp general pickle VM (wall / cpu; added RSS) | torch `pickle.dumps` (wall / cpu) | dcpp encode (wall / cpu; bytes) | speedup (wall, cpu) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        size = row["size"]
        tl, dd, gen, td, de = row["torch_load"], row["dcpp_decode"], row.get("dcpp_general"), row["torch_dump"], row["dcpp_encode"]
        tl_s = timing(tl) + (f"; +{mib(tl['peak'] - tl['rss_before'])}" if "error" not in tl else "")
        dd_s = timing(dd) + (f"; +{mib(dd['added'])}, {(dd['added'] + size) / size:.2f}x" if "error" not in dd else "")
        if gen is None:
            gen_s = "not run (needs ~44x the file)"
        else:
            gen_s = timing(gen) + (f"; +{mib(gen['added'])}" if "error" not in gen else "")
        de_s = timing(de) + (f"; {mib(de['bytes'])}" if "error" not in de else "")
        dc = row.get("dcpp_compact")
        if dc is None:
            dc_s = "not run"
        else:
            dc_s = timing(dc) + (f"; +{mib(dc['added'])}, {(dc['added'] + size) / size:.2f}x" if "error" not in dc else "")
        lines.append(
            f"| {row['ranks']:,} | {row['chunks']:,} | {mib(size)} | {tl_s} | {dd_s} | "
            f"{ratio(tl, dd, 'time_s')}, {ratio(tl, dd, 'cpu_s')} | {dc_s} | {gen_s} | {timing(td)} | {de_s} | "
            f"{ratio(td, de, 'time_s')}, {ratio(td, de, 'cpu_s')} |"
        )
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


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
    ap.add_argument("--ranks", default="64,256,1024")
    ap.add_argument("--tensors", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/dcpp-mdscale", help="where the .metadata files are made (kept)")
    ap.add_argument("--bench", default=os.path.join(ROOT, "build/bench/metadata_bench"))
    ap.add_argument("--general-max-ranks", type=int, default=256,
                    help="run dcpp's general pickle VM too up to this many ranks (it needs ~44x the file)")
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--json", help="also save the measurements here")
    ap.add_argument("--write-docs", metavar="FILE")
    ap.add_argument("--note", default="", help="a paragraph printed below the table")
    ap.add_argument("--from-json", nargs="+", metavar="FILE",
                    help="render the rows of these --json files (in order) without measuring")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--generate-only", nargs=3, metavar=("RANKS", "TENSORS", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        kind, path = args.child
        fn = {"torch-load": child_torch_load, "torch-dump": child_torch_dump}[kind]
        print(json.dumps(fn(path)))
        return
    if args.generate_only:
        r, t, d = args.generate_only
        t0 = time.perf_counter()
        size = generate(int(r), int(t), d)
        print(json.dumps({"size": size, "time_s": time.perf_counter() - t0}))
        return

    command = "python3 bench/metadata_scale.py " + " ".join(sys.argv[1:])
    if args.from_json:
        results = None
        for path in args.from_json:
            with open(path) as f:
                part = json.load(f)
            if results is None:
                results = part
            else:
                results["rows"] += part["rows"]
        results["rows"].sort(key=lambda r: r["ranks"])
        command = results.get("command", command)
        if len(args.from_json) > 1:
            command = "; ".join(json.load(open(p)).get("command", p) for p in args.from_json)
        emit(results, command, args)
        return

    import torch

    if not os.path.exists(args.bench):
        sys.exit(f"{args.bench} is missing: cmake --build build --target metadata_bench")
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    results = {
        "versions": f"dcpp {rev}, torch {torch.__version__}, Python {platform.python_version()}",
        "machine": f"{os.cpu_count()} cores, {mem / 2**30:.1f} GiB RAM, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command.strip(),
        "rows": [],
    }
    for ranks in [int(x) for x in args.ranks.split(",")]:
        d = os.path.join(args.dir, f"r{ranks}_t{args.tensors}")
        path = os.path.join(d, ".metadata")
        if args.regenerate or not os.path.exists(path):
            print(f"generating {path} ...", file=sys.stderr, flush=True)
            g = run_child([sys.executable, os.path.abspath(__file__), "--generate-only", str(ranks), str(args.tensors), d],
                          args.timeout)
            if "error" in g:
                sys.exit(f"generation failed: {g['error']}")
            print(f"  {g['size']:,} bytes in {g['time_s']:.1f} s", file=sys.stderr, flush=True)
        size = os.path.getsize(path)
        row = {"ranks": ranks, "size": size, "chunks": ranks * args.tensors}
        reps = range(args.reps)
        row["torch_load"] = best([measure_torch("torch-load", path, args.timeout) for _ in reps])
        row["dcpp_decode"] = best([measure_dcpp(args.bench, "decode", path, args.timeout) for _ in reps])
        row["dcpp_compact"] = best([measure_dcpp(args.bench, "decode", path, args.timeout, ["--compact"])
                                    for _ in reps])
        if ranks <= args.general_max_ranks:
            row["dcpp_general"] = best([measure_dcpp(args.bench, "decode", path, args.timeout, ["--general"])
                                        for _ in range(1)])
        row["torch_dump"] = best([measure_torch("torch-dump", path, args.timeout) for _ in reps])
        row["dcpp_encode"] = best([measure_dcpp(args.bench, "encode", path, args.timeout) for _ in reps])
        if "chunks" in row["torch_load"]:
            row["chunks"] = row["torch_load"]["chunks"]
        print(json.dumps(row), file=sys.stderr, flush=True)
        results["rows"].append(row)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    emit(results, command.strip(), args)


def emit(results, command, args):
    text = render(results, command, args.note)
    print(text)
    if args.write_docs:
        write_docs(args.write_docs, text)


if __name__ == "__main__":
    main()
