#!/usr/bin/env python3
"""dcpp against torch.distributed.checkpoint (DCP) and the machine's limits.

    python3 bench/run_benchmarks.py --size-gib 4 --reps 3

Builds two synthetic states once, with torch and a fixed seed: a
transformer-like training state (bf16 weights, norms and biases, fp32 Adam
exp_avg / exp_avg_sq, a 0-d step per parameter) of --size-gib, and
--small-count small tensors of 4-64 KiB. Each is written as a raw image (every
tensor's bytes back to back, 64-byte aligned) plus a JSON index, so that both
engines save and load exactly the same bytes: `dcpp bench` (C++) and
bench/torch_side.py (torch DCP) read the image into memory before their
clocks start.

Every measurement runs in a fresh process, --reps times (dcpp and torch
alternating), and the tables report medians. A case that fails shows its
error in the table. The results are printed, written between the markers
<!-- bench:begin --> and <!-- bench:end --> of docs/benchmarks.md (unless
--no-doc) and, with --json, saved for machines. bench/README.md explains each
case.
"""
import argparse
import datetime
import glob
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_SIDE = os.path.join(REPO, "bench", "torch_side.py")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
ALIGN = 64
MIB = 1 << 20
IMAGE_VERSION = 1  # bump when the generators change, so cached images are rebuilt

ZSTD = "stream.zstd/1"
SHUFFLE = "dcpp.byteshuffle/1"


# --- synthetic states ---------------------------------------------------------

def transformer_specs(target_bytes):
    """(fqn, dtype, shape, init) of a decoder-only transformer and its Adam
    state, about `target_bytes` in total: each parameter costs 10 bytes (a
    bf16 weight and two fp32 moments). The widest model (hidden size h, vocab
    16h) whose embeddings and one layer fit is used."""
    params_target = target_bytes // 10
    h = 2048
    while h > 64 and 2 * 16 * h * h + 12 * h * h > params_target:
        h //= 2
    vocab = 16 * h
    per_layer = 12 * h * h + 11 * h  # weights, biases and norms
    layers = max(1, (params_target - 2 * vocab * h - h) // per_layer)
    params = [("model.embed.weight", [vocab, h], "weight")]
    for l in range(layers):
        p = f"model.layers.{l}."
        params += [
            (p + "attn_norm.weight", [h], "norm"),
            (p + "attn.qkv.weight", [3 * h, h], "weight"),
            (p + "attn.qkv.bias", [3 * h], "bias"),
            (p + "attn.out.weight", [h, h], "weight"),
            (p + "attn.out.bias", [h], "bias"),
            (p + "mlp_norm.weight", [h], "norm"),
            (p + "mlp.up.weight", [4 * h, h], "weight"),
            (p + "mlp.up.bias", [4 * h], "bias"),
            (p + "mlp.down.weight", [h, 4 * h], "weight"),
            (p + "mlp.down.bias", [h], "bias"),
        ]
    params += [("model.final_norm.weight", [h], "norm"),
               ("model.lm_head.weight", [vocab, h], "weight")]
    specs = [(fqn, "bfloat16", shape, init) for fqn, shape, init in params]
    for fqn, shape, _ in params:
        s = "optim.state." + fqn
        specs += [(s + ".exp_avg", "float32", shape, "exp_avg"),
                  (s + ".exp_avg_sq", "float32", shape, "exp_avg_sq"),
                  (s + ".step", "float32", [], "step")]
    return specs


def small_specs(count, seed):
    """`count` tensors of 4-64 KiB (multiples of 256 bytes), [n, 64], half
    fp32 (Adam-like values), half bf16 (weight-like values), in random order."""
    import random
    rng = random.Random(seed)
    specs = []
    for i in range(count):
        nbytes = rng.randrange(4096, 65536 + 1, 256)
        dtype = rng.choice(["float32", "bfloat16"])
        elem = 4 if dtype == "float32" else 2
        specs.append((f"model.blocks.{i // 16}.p{i % 16}", dtype, [nbytes // elem // 64, 64],
                      "exp_avg" if dtype == "float32" else "weight"))
    return specs


def _values(torch, g, init, n):
    """n values of the kind `init`, as float32."""
    if init == "step":
        return torch.full((n,), 1000.0)
    x = torch.randn(n, generator=g)
    if init == "weight":
        return x.mul_(0.02)
    if init == "norm":
        return x.mul_(0.02).add_(1.0)
    if init == "bias":
        return x.mul_(0.01)
    if init == "exp_avg":
        return x.mul_(1e-3)
    if init == "exp_avg_sq":
        return x.mul_(1e-3).square_()
    raise ValueError(init)


def write_state(name, specs, out_dir, seed):
    """Writes (or reuses, when one with the same specs and seed exists) the
    image and index of a state; returns (image, index, state_bytes, tensors)."""
    key = hashlib.sha256(json.dumps([IMAGE_VERSION, seed, specs]).encode()).hexdigest()[:12]
    image = os.path.join(out_dir, f"{name}-{key}.img")
    index = os.path.join(out_dir, f"{name}-{key}.json")
    if os.path.exists(index) and os.path.exists(image):
        with open(index) as f:
            info = json.load(f)
        if os.path.getsize(image) == info["image_bytes"]:
            return image, index, info["state_bytes"], len(info["tensors"])
    import torch
    g = torch.Generator().manual_seed(seed)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    entries, offset, state_bytes = [], 0, 0
    chunk = 1 << 24
    with open(image + ".tmp", "wb") as f:
        for fqn, dtype, shape, init in specs:
            numel = math.prod(shape)
            entries.append({"fqn": fqn, "dtype": dtype, "shape": shape, "offset": offset})
            for start in range(0, numel, chunk):
                v = _values(torch, g, init, min(chunk, numel - start)).to(dtypes[dtype])
                f.write(v.view(torch.uint8).numpy().tobytes())
            nbytes = numel * dtypes[dtype].itemsize
            state_bytes += nbytes
            pad = -nbytes % ALIGN
            f.write(b"\0" * pad)
            offset += nbytes + pad
    info = {"version": IMAGE_VERSION, "state": name, "seed": seed, "image_bytes": offset,
            "state_bytes": state_bytes, "tensors": entries}
    with open(index, "w") as f:
        json.dump(info, f)
    os.replace(image + ".tmp", image)
    return image, index, state_bytes, len(entries)


# --- running one measurement -----------------------------------------------------

def run_process(cmd, timeout):
    """Runs cmd; returns rc, stdout, stderr, the child's peak RSS (wait4) and
    wall seconds. A process past `timeout` is killed (rc None)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                         env=dict(os.environ, LC_ALL="C"), start_new_session=True)
    # Reading both pipes from threads, then wait4 for the child's rusage.
    import threading
    out, err = [], []
    readers = [threading.Thread(target=lambda s, b: b.append(s.read()), args=(p.stdout, out)),
               threading.Thread(target=lambda s, b: b.append(s.read()), args=(p.stderr, err))]
    for r in readers:
        r.start()
    rc, ru_maxrss, deadline = None, 0, t0 + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            rc, ru_maxrss = os.waitstatus_to_exitcode(status), ru.ru_maxrss * 1024
            p.returncode = rc
            break
        if time.monotonic() > deadline:
            os.killpg(p.pid, 9)
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            break
        time.sleep(0.01)
    for r in readers:
        r.join()
    return {"rc": rc, "stdout": out[0].decode(errors="replace"),
            "stderr": err[0].decode(errors="replace"), "ru_maxrss": ru_maxrss,
            "wall": time.monotonic() - t0, "cmd": cmd}


def error_of(proc):
    """A one-line reason for a failed process."""
    if proc["rc"] is None:
        return f"timed out after {proc['wall']:.0f} s"
    lines = [l.strip() for l in proc["stderr"].splitlines() if l.strip()]
    for pattern in (r"^\[rank \d+\] \w+(Error|Exception)\b", r"^\w+(Error|Exception)\b",
                    r"error", r"."):
        hits = [l for l in lines if re.search(pattern, l)]
        if hits:
            return hits[-1][:300]
    return f"exit code {proc['rc']}"


def json_line(proc):
    for line in reversed(proc["stdout"].splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None


def measure(cmd, timeout):
    """One run: the tool's JSON report plus wait4's peak RSS, or an error."""
    os.sync()  # no earlier writes are flushed inside this measurement
    proc = run_process(cmd, timeout)
    result = json_line(proc) if proc["rc"] == 0 else None
    run = {"cmd": " ".join(shlex.quote(c) for c in cmd), "wall_s": proc["wall"],
           "wait4_max_rss_bytes": proc["ru_maxrss"]}
    if result is None:
        run["error"] = error_of(proc) if proc["rc"] != 0 else "no JSON line in the output"
    else:
        run.update(result)
    return run


def checkpoint_files(ckpt):
    files = glob.glob(os.path.join(ckpt, "*.distcp"))
    return len(files), sum(os.path.getsize(f) for f in files)


def warm(ckpt):
    """Reads every file of a checkpoint, so a load finds them in the page cache."""
    for f in glob.glob(os.path.join(ckpt, "*")) + glob.glob(os.path.join(ckpt, ".metadata")):
        with open(f, "rb") as fh:
            while fh.read(16 * MIB):
                pass


# --- cases --------------------------------------------------------------------------

class Case:
    """One row of a table. `save` is the configuration of the save being
    timed, or (for a load) of the untimed save that makes the checkpoint;
    `load_ranks` is set for loads."""

    def __init__(self, name, save, load_ranks=None, dd=None, torch=True):
        self.name, self.save, self.load_ranks, self.dd = name, save, load_ranks, dd
        self.torch = torch and set(save.get("transforms", [])) <= {ZSTD}

    @property
    def op(self):
        return "save" if self.load_ranks is None else "load"


def cases_for(state, a):
    plain = {"fsync": True, "ranks": 1, "transforms": [], "level": 0}

    def cfg(**kw):
        return dict(plain, **kw)

    if state == "small":
        return [Case("save, fsync on", cfg(), dd="write_sync"),
                Case("save, fsync off", cfg(fsync=False), dd="write_cache"),
                Case("load (page cache warm)", cfg(fsync=False), load_ranks=1, dd="read")]
    z3 = cfg(transforms=[ZSTD], level=3)
    return [
        Case("save, fsync on", cfg(), dd="write_sync"),
        Case("save, fsync off", cfg(fsync=False), dd="write_cache"),
        Case("load (page cache warm)", cfg(fsync=False), load_ranks=1, dd="read"),
        Case("save, zstd level 3 (torch's), fsync on", z3, dd="write_sync"),
        Case("load, zstd", dict(z3, fsync=False), load_ranks=1, dd="read"),
        Case("save, zstd level 1 (dcpp's default), fsync on", cfg(transforms=[ZSTD], level=1),
             dd="write_sync", torch=False),
        Case("save, byteshuffle + zstd level 1, fsync on",
             cfg(transforms=[SHUFFLE, ZSTD], level=1), dd="write_sync", torch=False),
        Case("load, byteshuffle + zstd", cfg(fsync=False, transforms=[SHUFFLE, ZSTD], level=1),
             load_ranks=1, dd="read", torch=False),
        Case(f"save on {a.save_ranks} ranks (row shards), fsync on", cfg(ranks=a.save_ranks),
             dd="write_sync"),
        Case(f"load {a.save_ranks} -> {a.load_ranks} ranks (column shards)",
             cfg(fsync=False, ranks=a.save_ranks), load_ranks=a.load_ranks, dd="read"),
    ]


def command(engine, op, cfg, ranks, image, index, ckpt, a):
    """The command line that runs one save or load."""
    if engine == "dcpp":
        cmd = [a.dcpp, "bench", op, "--image", image, "--index", index, "--ckpt", ckpt,
               "--threads", str(a.threads), "--ranks", str(ranks)]
        if op == "save":
            if not cfg["fsync"]:
                cmd.append("--no-fsync")
            if cfg["transforms"]:
                cmd += ["--transforms", ",".join(cfg["transforms"]), "--level", str(cfg["level"])]
        return cmd
    tool_op = op if ranks == 1 else "dist-" + op
    cmd = [sys.executable, TORCH_SIDE, tool_op, "--image", image, "--index", index, "--ckpt", ckpt,
           "--threads", str(a.threads), "--world", str(ranks), "--tmp", a.dir]
    if op == "save":
        if not cfg["fsync"]:
            cmd.append("--no-fsync")
        if cfg["transforms"]:
            cmd.append("--zstd")
    return cmd


def run_case(case, image, index, a, log):
    engines = ["dcpp", "torch"] if case.torch else ["dcpp"]
    ckpt_root = os.path.join(a.dir, "ckpt")
    ckpts = {e: os.path.join(ckpt_root, e) for e in engines}
    runs = {e: [] for e in engines}
    prep_error = {}
    if case.op == "load":
        for e in engines:
            shutil.rmtree(ckpts[e], ignore_errors=True)
            run = measure(command(e, "save", case.save, case.save["ranks"], image, index, ckpts[e],
                                  a), a.timeout)
            if "error" in run:
                prep_error[e] = "preparing save failed: " + run["error"]
                log(f"    {e}: {prep_error[e]}")
    for rep in range(a.reps):
        for e in engines:
            if e in prep_error:
                runs[e].append({"error": prep_error[e]})
                continue
            if case.op == "save":
                shutil.rmtree(ckpts[e], ignore_errors=True)
                cmd = command(e, "save", case.save, case.save["ranks"], image, index, ckpts[e], a)
            else:
                warm(ckpts[e])
                cmd = command(e, "load", case.save, case.load_ranks, image, index, ckpts[e], a)
            run = measure(cmd, a.timeout)
            if case.op == "save" and "error" not in run:
                run["files"], run["stored_bytes"] = checkpoint_files(ckpts[e])
            runs[e].append(run)
            log(f"    {e} rep {rep + 1}: " +
                (run["error"] if "error" in run else f"{run['seconds']:.3f} s") +
                (f", {run['bytes_read'] / MIB:.0f} MiB read" if "bytes_read" in run else ""))
    shutil.rmtree(ckpt_root, ignore_errors=True)
    return {e: summarize(runs[e]) for e in engines}


def summarize(runs):
    s = {"runs": runs}
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        s["error"] = errors[0]
        return s
    s["seconds"] = statistics.median(r["seconds"] for r in runs)
    s["bytes"] = runs[0]["bytes"]
    s["gb_per_s"] = s["bytes"] / s["seconds"] / 1e9 if s["seconds"] > 0 else float("inf")
    # The run with the highest peak gives both figures, so that peak minus
    # RSS-before describes one run.
    worst = max(runs, key=lambda r: r["max_rss_bytes"])
    s["max_rss_bytes"], s["rss_before_bytes"] = worst["max_rss_bytes"], worst["rss_before_bytes"]
    s["verified"] = all(r.get("verified") for r in runs)
    s["ranks"] = runs[0].get("ranks", 1)
    if "bytes_read" in runs[0]:  # dcpp loads: bytes read from storage, all ranks
        s["bytes_read"] = statistics.median(r["bytes_read"] for r in runs)
    if "stored_bytes" in runs[0]:
        s["stored_bytes"] = statistics.median(r["stored_bytes"] for r in runs)
        s["files"] = runs[0]["files"]
    return s


# --- machine limits --------------------------------------------------------------------

def run_dd(args, timeout):
    os.sync()
    proc = run_process(["dd"] + args, timeout)
    m = re.search(r"^(\d+) bytes.*copied, ([0-9.e+-]+) s", proc["stderr"], re.M)
    if proc["rc"] != 0 or not m:
        return {"error": error_of(proc)}
    return {"bytes": int(m.group(1)), "seconds": float(m.group(2))}


def machine_limits(nbytes, a, log):
    """dd and memcpy over `nbytes` (dd rounds up to whole 4 MiB blocks)."""
    f = os.path.join(a.dir, "dd.bin")
    count = max(1, -(-nbytes // (4 * MIB)))
    write = [f"if=/dev/zero", f"of={f}", "bs=4M", f"count={count}"]
    kinds = {
        "write_sync": ("sequential write, fdatasync", write + ["conv=fdatasync"]),
        "write_cache": ("sequential write to the page cache (no sync)", write),
        "read": ("sequential read, page cache warm", [f"if={f}", "of=/dev/null", "bs=4M"]),
    }
    out = {}
    for key, (what, args) in kinds.items():
        runs = []
        for _ in range(a.reps):
            if key != "read":
                if os.path.exists(f):
                    os.remove(f)
            else:
                if not os.path.exists(f) or os.path.getsize(f) < nbytes:
                    run_dd(write, a.timeout)
                _read_file(f)
            runs.append(run_dd(args, a.timeout))
        out[key] = dict(summarize_plain(runs), what=what,
                        command="dd " + " ".join(args).replace(f, "F"))
        log(f"    {key}: {fmt_run(out[key])}")
    if os.path.exists(f):
        os.remove(f)
    runs = [measure([a.dcpp, "bench", "memcpy", "--bytes", str(nbytes)], a.timeout)
            for _ in range(a.reps)]
    out["memcpy"] = dict(summarize_plain(runs), what="memcpy (one thread, dcpp bench memcpy)",
                         command=f"dcpp bench memcpy --bytes {nbytes}")
    log(f"    memcpy: {fmt_run(out['memcpy'])}")
    return out


COMPRESSION_CASES = [  # (what, dtype, transforms, level)
    ("bf16 weights, zstd level 1 (dcpp's default)", "bfloat16", "stream.zstd/1", 1),
    ("bf16 weights, zstd level 3 (torch's)", "bfloat16", "stream.zstd/1", 3),
    ("bf16 weights, byteshuffle + zstd level 1", "bfloat16", "dcpp.byteshuffle/1,stream.zstd/1", 1),
    ("whole state, zstd level 1", "", "stream.zstd/1", 1),
    ("whole state, byteshuffle + zstd level 1", "", "dcpp.byteshuffle/1,stream.zstd/1", 1),
]


def compression(image, index, a, log):
    """The transforms alone on one core (`dcpp bench compress`): dcpp's
    encoder and decoder, and libzstd's one-shot compression of the same
    tensors, best of a.reps passes each."""
    out = []
    for what, dtype, transforms, level in COMPRESSION_CASES:
        cmd = [a.dcpp, "bench", "compress", "--image", image, "--index", index,
               "--transforms", transforms, "--level", str(level), "--repeats", str(a.reps)]
        if dtype:
            cmd += ["--dtype", dtype]
        r = measure(cmd, a.timeout)
        r["what"] = what
        out.append(r)
        if "error" in r:
            log(f"    {what}: {r['error']}")
        else:
            log(f"    {what}: {r['bytes'] / r['encode_seconds'] / 1e9:.2f} GB/s, "
                f"ratio {r['bytes'] / r['stored_bytes']:.3f}")
    return out


def _read_file(path):
    with open(path, "rb") as fh:
        while fh.read(16 * MIB):
            pass


def summarize_plain(runs):
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        return {"error": errors[0], "runs": runs}
    seconds = statistics.median(r["seconds"] for r in runs)
    return {"seconds": seconds, "bytes": runs[0]["bytes"],
            "gb_per_s": runs[0]["bytes"] / seconds / 1e9 if seconds > 0 else float("inf"),
            "runs": runs}


def fmt_run(s):
    return s["error"] if "error" in s else f"{s['seconds']:.3f} s, {s['gb_per_s']:.2f} GB/s"


# --- report ------------------------------------------------------------------------

def machine_description(a):
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    fs = subprocess.run(["df", "-hT", a.dir], capture_output=True, text=True).stdout.splitlines()
    fs = " ".join(fs[-1].split()[:3]) if len(fs) > 1 else "?"
    rev = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip() or "?"
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "filesystem": fs, "dcpp_revision": rev,
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}


def _cell_time(s):
    if "error" in s:
        e = re.sub(r"^dcpp: error: ", "", s["error"])
        e = e if len(e) <= 160 else e[:157] + "..."
        return "**error:** " + e.replace("|", "\\|")
    return f"{s['seconds']:.3f} s, {s['gb_per_s']:.2f} GB/s"


def _mib(x):
    return f"{x / MIB:,.0f} MiB"


def render(results, a):
    m = results["machine"]
    out = [BEGIN, "## dcpp vs torch DCP (generated by bench/run_benchmarks.py)", "",
           f"Command: `{results['command']}`  ",
           f"Date: {m['date']}; dcpp {m['dcpp_revision']}, torch {m['torch']}.  ",
           f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}, "
           f"benchmark files on {m['filesystem']}.", ""]
    if a.note:
        out += [f"**Note:** {a.note}", ""]
    base = results["baseline"]
    out += [f"Both engines use {a.threads} I/O threads per rank (torch: "
            f"`FileSystemWriter(thread_count={a.threads})`; torch's FileSystemReader has no "
            f"threads). Times are medians of {a.reps} run{'s' if a.reps != 1 else ''}, each in "
            "a fresh process, of the operation alone: the state is in RAM first, loads go into "
            "preallocated tensors and are checked bit for bit afterwards. GB/s = state bytes / "
            "time (10^9 bytes/s). Speedup = torch time / dcpp time. % of dd: throughput relative "
            "to dd's for the same bytes (fsync'd write, page-cache write or warm read, as the "
            "case does). Stored: total size of the data files (state / stored = compression "
            "ratio). Peak RSS − state: peak resident memory (VmHWM; summed over torch's rank "
            "processes) minus the state size; an idle process holds "
            f"{_mib(base['dcpp'])} (dcpp) or {_mib(base['torch'])} (python with torch imported, "
            "per rank process) of it. Added: peak minus the RSS just before the operation "
            "started (state and runtime already in memory), the memory the operation itself "
            "needed.", ""]
    for name, st in results["states"].items():
        out += [f"### {st['title']}: {st['bytes'] / (1 << 30):.2f} GiB in {st['tensors']:,} "
                "tensors", ""]
        out += ["| case | dcpp | torch DCP | speedup | % of dd (dcpp / torch) | "
                "stored (dcpp / torch) | peak RSS − state (dcpp / torch) | "
                "added (dcpp / torch) |",
                "|---|---|---|---|---|---|---|---|"]
        limits = results["limits"].get(name, {})
        for c in st["cases"]:
            d, t = c["dcpp"], c.get("torch")
            speed = "–"
            if t and "error" not in d and "error" not in t:
                speed = f"{t['seconds'] / d['seconds']:.2f}x"
            ref = limits.get(c["dd"], {})

            def pct(s):
                if not s or "error" in s or "error" in ref:
                    return "–"
                return f"{100 * s['gb_per_s'] / ref['gb_per_s']:.0f}%"

            def stored(s):
                if not s or "error" in s or "stored_bytes" not in s:
                    return "–"
                return f"{_mib(s['stored_bytes'])} ({s['bytes'] / s['stored_bytes']:.2f}x)"

            def rss(s, added):
                if not s or "error" in s:
                    return "–"
                extra = s["max_rss_bytes"] - (s["rss_before_bytes"] if added else s["bytes"])
                return f"{extra / MIB:+,.0f} MiB"

            out.append(f"| {c['name']} | {_cell_time(d)} | "
                       f"{_cell_time(t) if t else 'n/a (dcpp only)'} | {speed} | "
                       f"{pct(d)} / {pct(t)} | {stored(d)} / {stored(t)} | "
                       f"{rss(d, False)} / {rss(t, False)} | {rss(d, True)} / {rss(t, True)} |")
        out.append("")
    for name, limits in results["limits"].items():
        st = results["states"][name]
        out += [f"### Machine limits for {st['bytes'] / (1 << 30):.2f} GiB ({st['title'].lower()})",
                "", "| what | command | time, throughput |", "|---|---|---|"]
        for key in ("write_sync", "write_cache", "read", "memcpy"):
            s = limits[key]
            out.append(f"| {s['what']} | `{s['command']}` | {_cell_time(s)} |")
        out.append("")
    for name, rows in results.get("compress", {}).items():
        out += ["### Compression on one core (transformer-like state)", "",
                "`dcpp bench compress`: each tensor compressed on its own through dcpp's encoder "
                "(what a save runs per item on an I/O thread, zstd workers off) and decoded "
                "again, and libzstd's one-shot `ZSTD_compressCCtx` at the same level on the same "
                "tensors, the bound for dcpp's streaming encoder. Best of the repetitions. "
                "Ratio = input bytes / compressed bytes.", "",
                "| data, transforms | bytes | dcpp encode | libzstd one-shot | dcpp / libzstd "
                "| ratio | dcpp decode |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                out.append(f"| {r['what']} | **error:** {r['error']} | | | | | |")
                continue
            enc = r["bytes"] / r["encode_seconds"] / 1e9
            lib = r["bytes"] / r["libzstd_seconds"] / 1e9
            lib_cell = (f"{lib:.2f} GB/s" if "byteshuffle" not in r["what"]
                        else f"{lib:.2f} GB/s (zstd alone)")
            out.append(f"| {r['what']} | {_mib(r['bytes'])} | {enc:.2f} GB/s | {lib_cell} | "
                       f"{enc / lib:.0%} | {r['bytes'] / r['stored_bytes']:.3f} | "
                       f"{r['bytes'] / r['decode_seconds'] / 1e9:.2f} GB/s |")
        out.append("")
    out.append(END)
    return "\n".join(out)


def write_doc(path, section):
    with open(path) as f:
        text = f.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def generate(name, param, a):
    """Writes a state in a child process, so that this one never holds torch:
    every measured process is forked from here, and a smaller parent keeps
    wait4's figures (which start from the parent's RSS) meaningful."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--generate", name,
                           str(param), str(a.seed), a.dir], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"generating the {name} state failed:\n{proc.stderr}")
    return tuple(json.loads(proc.stdout.strip().splitlines()[-1]))


def generate_main(argv):
    name, param, seed, out_dir = argv[0], int(argv[1]), int(argv[2]), argv[3]
    specs = transformer_specs(param) if name == "transformer" else small_specs(param, seed)
    print(json.dumps(write_state(name, specs, out_dir, seed)))
    return 0


# --- main ------------------------------------------------------------------------

def main(argv):
    if argv[:1] == ["--generate"]:
        return generate_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See bench/README.md for what each case measures.")
    p.add_argument("--size-gib", type=float, default=4.0, help="transformer state size (4)")
    p.add_argument("--small-count", type=int, default=20000,
                   help="tensors in the many-small-tensors state (20000; 0 skips it)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="I/O threads per rank, both engines")
    p.add_argument("--save-ranks", type=int, default=4)
    p.add_argument("--load-ranks", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default="/tmp/dcpp-bench", help="scratch directory (removed after)")
    p.add_argument("--keep-images", action="store_true",
                   help="keep the generated images in --dir for the next run")
    p.add_argument("--dcpp", default=os.path.join(REPO, "build", "tools", "dcpp", "dcpp"),
                   help="the dcpp binary (default: build/tools/dcpp/dcpp)")
    p.add_argument("--cases", default="",
                   help="only cases whose name contains one of these comma-separated strings "
                        "(machine limits always run)")
    p.add_argument("--json", help="also write every measurement here")
    p.add_argument("--doc", default=os.path.join(REPO, "docs", "benchmarks.md"))
    p.add_argument("--no-doc", action="store_true", help="do not touch --doc")
    p.add_argument("--note", default="", help="a remark printed above the tables")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    p.add_argument("--from-json", metavar="PATH",
                   help="run nothing: render the report of an earlier run's --json file")
    a = p.parse_args(argv)
    if a.from_json:
        with open(a.from_json) as f:
            results = json.load(f)
        for st in results["states"].values():  # summaries as this version computes them
            for c in st["cases"]:
                for engine in ("dcpp", "torch"):
                    if engine in c:
                        c[engine] = summarize(c[engine]["runs"])
        section = render(results, argparse.Namespace(**results["settings"]))
        print(section)
        if not a.no_doc:
            write_doc(a.doc, section)
        return 0
    if not os.access(a.dcpp, os.X_OK):
        p.error(f"{a.dcpp} is not an executable; build it (cmake --build build --target "
                "dcpp_cli) or pass --dcpp")
    a.dcpp = os.path.abspath(a.dcpp)
    a.dir = os.path.abspath(a.dir)
    os.makedirs(a.dir, exist_ok=True)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    states = {}
    log("generating states")
    states["transformer"] = ("Transformer-like training state",
                             generate("transformer", int(a.size_gib * (1 << 30)), a))
    if a.small_count > 0:
        states["small"] = ("Many small tensors", generate("small", a.small_count, a))
    free = shutil.disk_usage(a.dir).free
    need = 3 * max(s[1][2] for s in states.values())
    if free < need:
        log(f"warning: {free / (1 << 30):.1f} GiB free in {a.dir}, the runs need about "
            f"{need / (1 << 30):.1f} GiB")

    results = {"command": "python3 bench/run_benchmarks.py " + " ".join(
                   shlex.quote(x) for x in argv),
               "machine": machine_description(a), "settings": vars(a), "states": {},
               "limits": {}, "baseline": {}, "compress": {}}
    idle = {"dcpp": measure([a.dcpp, "bench", "memcpy", "--bytes", "0"], a.timeout),
            "torch": measure([sys.executable, TORCH_SIDE, "idle"], a.timeout)}
    results["baseline"] = {e: r.get("max_rss_bytes", 0) for e, r in idle.items()}
    results["machine"]["torch"] = idle["torch"].get("torch", "? (" + idle["torch"].get(
        "error", "") + ")")
    wanted = [w for w in a.cases.split(",") if w]
    try:
        for name, (title, (image, index, nbytes, tensors)) in states.items():
            log(f"{title}: {nbytes / (1 << 30):.2f} GiB, {tensors} tensors")
            log("  machine limits")
            results["limits"][name] = machine_limits(nbytes, a, log)
            st = {"title": title, "bytes": nbytes, "tensors": tensors, "image": image,
                  "cases": []}
            for case in cases_for(name, a):
                if wanted and not any(w in case.name for w in wanted):
                    continue
                log(f"  {case.name}")
                r = run_case(case, image, index, a, log)
                st["cases"].append(dict(name=case.name, op=case.op, dd=case.dd, config=case.save,
                                        load_ranks=case.load_ranks, **r))
            results["states"][name] = st
            if name == "transformer" and (not wanted or any(w in "compress" for w in wanted)):
                log("  compression on one core")
                results.setdefault("compress", {})[name] = compression(image, index, a, log)
    finally:
        shutil.rmtree(os.path.join(a.dir, "ckpt"), ignore_errors=True)
        if not a.keep_images:
            for _, (_, (image, index, _, _)) in states.items():
                for f in (image, index):
                    if os.path.exists(f):
                        os.remove(f)
            try:
                os.rmdir(a.dir)
            except OSError:
                pass
    section = render(results, a)
    print(section)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    if not a.no_doc:
        write_doc(a.doc, section)
        log(f"wrote the tables into {a.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
