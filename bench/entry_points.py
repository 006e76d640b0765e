#!/usr/bin/env python3
"""Every entry point a user touches, against torch and the machine's limits,
on the same state dicts in the same run.

    python3 bench/entry_points.py                      # ~1 GiB + 20,000 small
    python3 bench/entry_points.py --quick              # 256 MiB + 2,000 small
    python3 bench/entry_points.py --write-docs docs/benchmarks.md

Two states, each written once as an image (every tensor's bytes) and a JSON
index (bench/run_benchmarks.py's format) and then saved by torch's
dcp.save into a torch-written checkpoint:
  large  a few tensors of 64-256 MiB (bf16 weights, fp32 moments), --size-mib
  small  --small-count tensors of 4-64 KiB, half fp32, half bf16

Every case runs in a fresh process that reads the image into memory before
its clock starts (so only the operation is timed) and reports its seconds
and its peak RSS (getrusage, or wait4 for the CLI): what a user meets.
  CLI       dcpp inspect / verify / convert (DCP -> DCP, DCP -> safetensors)
            of the torch-written checkpoint
  C++       Save and Load through `dcpp bench save|load|loadall`
  Python    dcpp.save / dcpp.load (in place and allocating) / async_save
  dcpp.torch  torch's dcp.save / dcp.load with dcpp.torch's writer/reader
  safetensors dcpp.save(format="safetensors"), dcpp.load of an HF directory
Each row names its torch counterpart (ratio = torch's time / this time, >1
is faster than torch) and the machine's limit for the same bytes (dd
conv=fdatasync or page-cache write, a warm dd read, memcpy; % of limit =
limit's time / this time). Loads find their files in the page cache. Every
measurement starts after os.sync(), so no earlier write is flushed inside it.

--write-docs replaces the section between `<!-- entrybench:begin -->` and
`<!-- entrybench:end -->` of the given markdown file (appending it if absent).
"""
import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import run_benchmarks as rb  # noqa: E402  (state images, dd, process runner)

BEGIN, END = "<!-- entrybench:begin -->", "<!-- entrybench:end -->"
MIB = 1 << 20


# --- states ------------------------------------------------------------------

def large_specs(size_mib):
    """Large tensors summing to about size_mib: alternating bf16 weights and
    fp32 moments of 64-256 MiB (smaller when size_mib is small)."""
    total = size_mib * MIB
    piece = max(MIB, min(256 * MIB, total // 6))
    specs, done, i = [], 0, 0
    while done < total:
        nbytes = min(piece, total - done)
        dtype = "bfloat16" if i % 2 == 0 else "float32"
        elem = 2 if dtype == "bfloat16" else 4
        cols = 4096
        rows = max(1, nbytes // elem // cols)
        kind = "weight" if dtype == "bfloat16" else "exp_avg"
        specs.append((f"model.layers.{i}.w" if i % 2 == 0 else f"optim.state.{i}.exp_avg",
                      dtype, [rows, cols], kind))
        done += rows * cols * elem
        i += 1
    return specs


def load_image(index):
    """The state as torch tensors over one buffer read from the image."""
    import numpy as np
    import torch
    with open(index) as f:
        info = json.load(f)
    image = index[:-len(".json")] + ".img"
    buf = torch.from_numpy(np.fromfile(image, dtype=np.uint8))
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    sd = {}
    for t in info["tensors"]:
        dt = dtypes[t["dtype"]]
        n = 1
        for s in t["shape"]:
            n *= s
        sd[t["fqn"]] = buf[t["offset"]:t["offset"] + n * dt.itemsize].view(dt).view(t["shape"])
    return sd


def empty_like(sd):
    import torch
    return {k: torch.empty_like(v) for k, v in sd.items()}


# --- the cases, each run in its own process ---------------------------------------

def _rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def case_main(name, index, src, dst):
    """Runs case `name` once and prints {"seconds", "rss_before", "max_rss"}
    (plus "stall" for async_save)."""
    import warnings
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed.checkpoint as dcp
    extra = {}
    needs_state = not name.startswith(("load", "hf_load", "torch_convert", "inspect"))
    sd = load_image(index) if needs_state or name in ("load_torch", "load_dcpp_inplace",
                                                      "load_dcpp_torch_reader") else None
    target = empty_like(sd) if name in ("load_torch", "load_dcpp_inplace",
                                        "load_dcpp_torch_reader") else None
    if target is not None:
        for v in target.values():
            v.view(-1)[::1024].zero_()  # fault the pages in, as a live model's are
        del sd
    if "dcpp" in name:  # imported before the clock, as torch's modules are
        import dcpp  # noqa: F401
        import dcpp.torch  # noqa: F401
    rss_before = _rss()
    t0 = time.perf_counter()
    if name in ("save_torch", "save_torch_nosync"):
        dcp.save(sd, storage_writer=dcp.FileSystemWriter(dst, sync_files=name == "save_torch"))
    elif name in ("save_dcpp", "save_dcpp_nosync"):
        import dcpp
        dcpp.save(sd, dst, sync_files=name == "save_dcpp")
    elif name == "async_save_dcpp":
        import dcpp
        fut = dcpp.async_save(sd, dst)
        extra["stall"] = time.perf_counter() - t0
        fut.result()
    elif name == "save_dcpp_torch_writer":
        import dcpp.torch as dt
        dcp.save(sd, storage_writer=dt.FileSystemWriter(dst))
    elif name == "hf_save_safetensors":
        from safetensors.torch import save_file
        os.makedirs(dst, exist_ok=True)
        path = os.path.join(dst, "model.safetensors")
        save_file(sd, path)
        with open(path, "rb+") as f:  # as durable as dcpp's default
            os.fsync(f.fileno())
    elif name == "hf_save_dcpp":
        import dcpp
        dcpp.save(sd, dst, format="safetensors")
    elif name == "load_torch":
        dcp.load(target, storage_reader=dcp.FileSystemReader(src))
    elif name == "load_dcpp_inplace":
        import dcpp
        dcpp.load(target, src)
    elif name == "load_dcpp_torch_reader":
        import dcpp.torch as dt
        dcp.load(target, storage_reader=dt.FileSystemReader(src))
    elif name == "load_dcpp_all":
        import dcpp
        out = dcpp.load(src, tensors="torch")
        extra["tensors"] = len(out)
    elif name == "hf_load_safetensors":
        from safetensors.torch import load_file
        out = load_file(os.path.join(src, "model.safetensors"))
        # load_file maps the file: touch every page, as a use of the
        # tensors would, so the bytes are read inside the clock.
        for v in out.values():
            v.view(-1)[::max(1, 4096 // v.element_size())].sum()
        extra["tensors"] = len(out)
    elif name == "hf_load_dcpp":
        import dcpp
        out = dcpp.load(src, tensors="torch")
        extra["tensors"] = len(out)
    elif name == "inspect_torch":
        md = dcp.FileSystemReader(src).read_metadata()
        extra["entries"] = len(md.state_dict_metadata)
    elif name == "inspect_dcpp":
        import dcpp
        md = dcpp.read_metadata(src)
        extra["metadata"] = type(md).__name__
    elif name in ("torch_convert_dcp", "torch_convert_safetensors"):
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
        out = _load_state_dict_from_keys(checkpoint_id=src)
        if name == "torch_convert_dcp":
            dcp.save(out, storage_writer=dcp.FileSystemWriter(dst))
        else:
            from safetensors.torch import save_file
            os.makedirs(dst, exist_ok=True)
            path = os.path.join(dst, "model.safetensors")
            save_file(out, path)
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
    else:
        raise SystemExit(f"unknown case {name}")
    seconds = time.perf_counter() - t0
    print(json.dumps(dict(extra, seconds=seconds, rss_before=rss_before, max_rss=_rss())))
    return 0


# --- orchestration ---------------------------------------------------------------

class Row:
    """One measured entry point: `kind` picks how it is run (py: a case of
    this script; cli: argv for the dcpp binary; cpp: `dcpp bench`), `torch` the
    row it is compared with, `limit` the machine limit ("write_sync",
    "write_cache", "read", "convert": write_sync + read, "memcpy")."""

    def __init__(self, group, label, kind, spec, torch=None, limit=None, src=None, fresh=True):
        self.group, self.label, self.kind, self.spec = group, label, kind, spec
        self.torch, self.limit, self.src, self.fresh = torch, limit, src, fresh


def rows():
    R = Row
    return [
        # torch's own (the baselines)
        R("torch", "dcp.save (FileSystemWriter)", "py", "save_torch", limit="write_sync"),
        R("torch", "dcp.save, sync_files=False", "py", "save_torch_nosync", limit="write_cache"),
        R("torch", "dcp.load (FileSystemReader), in place", "py", "load_torch", limit="read",
          src="torch"),
        R("torch", "FileSystemReader.read_metadata", "py", "inspect_torch", src="torch"),
        R("torch", "dcp load all + dcp.save (convert DCP -> DCP)", "py", "torch_convert_dcp",
          limit="convert", src="torch"),
        R("torch", "dcp load all + safetensors save_file + fsync", "py",
          "torch_convert_safetensors", limit="convert", src="torch"),
        R("torch", "safetensors.torch.save_file + fsync", "py", "hf_save_safetensors",
          limit="write_sync"),
        R("torch", "safetensors.torch.load_file (mmap; every page touched)", "py",
          "hf_load_safetensors", limit="read",
          src="hf_torch"),
        # the CLI
        R("CLI", "dcpp inspect (process wall, startup included)", "cli", ["inspect", "{src}"],
          src="torch"),
        R("CLI", "dcpp verify", "cli", ["verify", "{src}", "--quiet"], torch="load_torch",
          limit="read", src="torch"),
        R("CLI", "dcpp convert DCP -> DCP", "cli", ["convert", "{src}", "{dst}", "--quiet"],
          torch="torch_convert_dcp", limit="convert", src="torch"),
        R("CLI", "dcpp convert DCP -> safetensors", "cli",
          ["convert", "{src}", "{dst}", "--to", "safetensors", "--quiet"],
          torch="torch_convert_safetensors", limit="convert", src="torch"),
        # C++
        R("C++", "Save (dcpp bench save, 1 rank)", "cpp", ["save"], torch="save_torch",
          limit="write_sync"),
        R("C++", "Save, no fsync", "cpp", ["save", "--no-fsync"], torch="save_torch_nosync",
          limit="write_cache"),
        R("C++", "Load into preallocated tensors", "cpp", ["load", "--no-verify"],
          torch="load_torch", limit="read", src="torch"),
        R("C++", "LoadAll (allocates)", "cpp", ["loadall", "--no-verify"], torch="load_torch",
          limit="read", src="torch"),
        # Python
        R("Python", "dcpp.read_metadata", "py", "inspect_dcpp", torch="inspect_torch",
          src="torch"),
        R("Python", "dcpp.save", "py", "save_dcpp", torch="save_torch", limit="write_sync"),
        R("Python", "dcpp.save(sync_files=False)", "py", "save_dcpp_nosync",
          torch="save_torch_nosync", limit="write_cache"),
        R("Python", "dcpp.async_save (until done; stall in notes)", "py", "async_save_dcpp",
          torch="save_torch", limit="write_sync"),
        R("Python", "dcpp.load(state_dict, path), in place", "py", "load_dcpp_inplace",
          torch="load_torch", limit="read", src="torch"),
        R("Python", "dcpp.load(path) (allocates)", "py", "load_dcpp_all", torch="load_torch",
          limit="read", src="torch"),
        # dcpp.torch
        R("dcpp.torch", "dcp.save + dcpp.torch.FileSystemWriter", "py", "save_dcpp_torch_writer",
          torch="save_torch", limit="write_sync"),
        R("dcpp.torch", "dcp.load + dcpp.torch.FileSystemReader", "py", "load_dcpp_torch_reader",
          torch="load_torch", limit="read", src="torch"),
        # safetensors
        R("safetensors", "dcpp.save(format=\"safetensors\")", "py", "hf_save_dcpp",
          torch="hf_save_safetensors", limit="write_sync"),
        R("safetensors", "dcpp.load(HF directory)", "py", "hf_load_dcpp",
          torch="hf_load_safetensors", limit="read", src="hf_torch"),
    ]


def run_row(row, state, a, scratch):
    """One repetition of `row` on `state`; returns a result dict."""
    src = state["sources"].get(row.src) if row.src else None
    dst = os.path.join(scratch, "out")
    shutil.rmtree(dst, ignore_errors=True)
    if src:
        rb.warm(src)
    if row.kind == "py":
        cmd = [sys.executable, os.path.abspath(__file__), "--case", row.spec, state["index"],
               src or "-", dst]
    elif row.kind == "cli":
        # GNU time reports the CLI's own peak RSS (wait4 here would also
        # count what a child inherits from this process before exec).
        cmd = ["/usr/bin/time", "-f", "maxrss_kib=%M", a.dcpp] + [
            s.format(src=src, dst=dst) for s in row.spec]
    else:
        ckpt = src or dst
        cmd = [a.dcpp, "bench"] + row.spec[:1] + ["--image", state["image"], "--index",
                                                  state["index"], "--ckpt", ckpt,
                                                  "--threads", str(a.threads)] + row.spec[1:]
    os.sync()
    proc = rb.run_process(cmd, a.timeout)
    out = {"cmd": " ".join(shlex.quote(c) for c in cmd)}
    if proc["rc"] != 0:
        out["error"] = rb.error_of(proc)
    elif row.kind == "cli":
        m = re.search(r"maxrss_kib=(\d+)", proc["stderr"])
        out.update(seconds=proc["wall"], max_rss=int(m.group(1)) * 1024 if m else None)
    else:
        j = rb.json_line(proc)
        if j is None:
            out["error"] = "no JSON line in the output"
        elif row.kind == "cpp":
            out.update(seconds=j["seconds"], max_rss=j.get("max_rss_bytes", proc["ru_maxrss"]),
                       rss_before=j.get("rss_before_bytes"))
        else:
            out.update(j)
    shutil.rmtree(dst, ignore_errors=True)
    return out


def prepare(name, specs, a, log):
    """Image, index and the torch-written checkpoints of one state."""
    key_dir = os.path.join(a.dir, name)
    os.makedirs(key_dir, exist_ok=True)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--make-state", name,
                           a.dir, str(a.seed)], input=json.dumps(specs), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"making the {name} state failed:\n{proc.stderr[-2000:]}")
    image, index, nbytes, count = json.loads(proc.stdout.strip().splitlines()[-1])
    sources = {"torch": os.path.join(key_dir, "torch_ckpt"),
               "hf_torch": os.path.join(key_dir, "hf_torch")}
    for key, case in (("torch", "save_torch"), ("hf_torch", "hf_save_safetensors")):
        if not os.path.exists(sources[key]):
            cmd = [sys.executable, os.path.abspath(__file__), "--case", case, index, "-",
                   sources[key] + ".tmp"]
            proc = rb.run_process(cmd, a.timeout)
            if proc["rc"] != 0:
                raise SystemExit(f"writing the {key} checkpoint of {name} failed:\n"
                                 f"{proc['stderr'][-2000:]}")
            os.replace(sources[key] + ".tmp", sources[key])
    log(f"{name}: {count} tensors, {nbytes / MIB:.0f} MiB")
    return {"name": name, "image": image, "index": index, "bytes": nbytes, "tensors": count,
            "sources": sources}


def measure_state(state, a, log):
    limits = rb.machine_limits(state["bytes"], a, log)
    scratch = os.path.join(a.dir, state["name"], "scratch")
    os.makedirs(scratch, exist_ok=True)
    results = {}
    selected = [r for r in rows() if not a.cases or any(c in r.spec if isinstance(r.spec, str)
                                                         else c in r.label for c in a.cases)]
    for rep in range(a.reps):
        for row in selected:
            key = row.spec if isinstance(row.spec, str) else row.label
            r = run_row(row, state, a, scratch)
            results.setdefault(key, []).append(r)
            log(f"  [{state['name']} {rep + 1}/{a.reps}] {row.group}: {row.label}: "
                + (r.get("error") or f"{r['seconds']:.3f} s, peak RSS {r['max_rss'] / MIB:.0f} MiB"))
    return {"limits": limits, "results": results}


def median_of(runs, field="seconds"):
    ok = [r[field] for r in runs if field in r and "error" not in r]
    return statistics.median(ok) if ok else None


def limit_seconds(limits, which):
    def sec(k):
        v = limits.get(k, {})
        return v.get("seconds") if "error" not in v else None
    if which == "convert":
        w, r = sec("write_sync"), sec("read")
        return w + r if w and r else None
    return sec(which) if which else None


def render(measured, states, a):
    lines = [BEGIN, "", "## Every entry point against torch and the machine's limits "
             "(generated by bench/entry_points.py)", "",
             f"`python3 bench/entry_points.py --size-mib {a.size_mib} --small-count "
             f"{a.small_count} --reps {a.reps}` ({a.machine}, commit {_commit()}). Medians of {a.reps} "
             "fresh processes per row. *vs torch*: the torch row's time / this row's (above 1: "
             "faster than torch). *% of limit*: the machine's time for the same bytes / this "
             "row's (dd conv=fdatasync for syncing saves, dd's page-cache write without sync, "
             "a warm dd read for loads, fdatasync write + warm read for convert). Peak RSS: the "
             "process's, including the state it holds before the clock starts (Python rows: "
             "the image plus torch).", ""]
    for st in states:
        m = measured[st["name"]]
        lim = m["limits"]
        lines += [f"**{st['name']}**: {st['tensors']} tensors, {st['bytes'] / MIB:.0f} MiB. "
                  "Limits: " + ", ".join(
                      f"{k} {lim[k]['seconds']:.3f} s" for k in
                      ("write_sync", "write_cache", "read", "memcpy")
                      if k in lim and "seconds" in lim[k]) + ".", "",
                  "| entry point | seconds | vs torch | % of limit | peak RSS MiB | notes |",
                  "|---|---:|---:|---:|---:|---|"]
        by_key = {}
        for row in rows():
            key = row.spec if isinstance(row.spec, str) else row.label
            by_key[key] = row
        for row in rows():
            key = row.spec if isinstance(row.spec, str) else row.label
            runs = m["results"].get(key)
            if not runs:
                continue
            s = median_of(runs)
            if s is None:
                err = next((r["error"] for r in runs if "error" in r), "failed")
                lines.append(f"| {row.group}: {row.label} | failed: {err[:120]} | | | | |")
                continue
            t = median_of(m["results"].get(row.torch, [])) if row.torch else None
            ls = limit_seconds(lim, row.limit)
            rss = median_of(runs, "max_rss")
            notes = []
            stall = median_of(runs, "stall")
            if stall is not None:
                notes.append(f"stall {stall:.3f} s")
            if row.torch:
                notes.append(f"vs `{row.torch}`")
            secs = f"{s:.3f}" if s >= 0.01 else f"{s:.2g}"
            lines.append(f"| {row.group}: {row.label} | {secs} | "
                         f"{(t / s) if t else float('nan'):.2f}x | "
                         f"{(100 * ls / s) if ls else float('nan'):.0f}% | "
                         f"{(rss or 0) / MIB:.0f} | {'; '.join(notes)} |"
                         .replace("nanx", "-").replace("nan%", "-"))
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def _machine(a):
    d = rb.machine_description(a)
    return (f"{d['nproc']} CPUs ({d['cpu']}), {d['memory']}, kernel {d['kernel']}, "
            f"{d['filesystem']}, {d['date']}")


def _commit():
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        return "?"


def write_docs(path, section):
    with open(path) as f:
        text = f.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def main(argv):
    if argv and argv[0] == "--case":
        return case_main(*argv[1:5])
    if argv and argv[0] == "--make-state":  # child: torch is imported here only
        specs = [tuple(x) for x in json.load(sys.stdin)]
        print(json.dumps(rb.write_state(argv[1], specs, argv[2], int(argv[3]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--size-mib", type=int, default=1024, help="large state (1024)")
    p.add_argument("--small-count", type=int, default=20000, help="small tensors (20000)")
    p.add_argument("--quick", action="store_true", help="256 MiB, 2,000 small tensors, 1 rep")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="dcpp bench's I/O threads (2)")
    p.add_argument("--states", default="large,small")
    p.add_argument("--cases", default="", help="comma-separated substrings of case names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default="/tmp/dcpp-entrybench", help="scratch (removed after)")
    p.add_argument("--keep", action="store_true", help="keep --dir (images, checkpoints)")
    p.add_argument("--dcpp", default=os.path.join(REPO, "build", "tools", "dcpp", "dcpp"))
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--json", help="also write every measurement here")
    p.add_argument("--write-docs", metavar="MD", help="replace the entrybench section there")
    a = p.parse_args(argv)
    if a.quick:
        a.size_mib, a.small_count, a.reps = min(a.size_mib, 256), min(a.small_count, 2000), 1
    a.cases = [c for c in a.cases.split(",") if c]
    a.threads_note = a.threads
    if not os.access(a.dcpp, os.X_OK):
        raise SystemExit(f"no dcpp binary at {a.dcpp} (build the dcpp_cli target or pass --dcpp)")
    os.makedirs(a.dir, exist_ok=True)
    a.machine = _machine(a)  # while --dir exists (df names its file system)
    log = lambda s: print(s, flush=True)  # noqa: E731
    states, measured = [], {}
    try:
        for name in a.states.split(","):
            specs = large_specs(a.size_mib) if name == "large" else rb.small_specs(
                a.small_count, a.seed)
            st = prepare(name, specs, a, log)
            states.append(st)
            measured[name] = measure_state(st, a, log)
    finally:
        if not a.keep:
            shutil.rmtree(a.dir, ignore_errors=True)
    section = render(measured, states, a)
    print(section)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"states": states, "measured": measured}, f, indent=1)
    if a.write_docs:
        write_docs(a.write_docs, section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
