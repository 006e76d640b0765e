"""Cost of checksums on a warm load, and `dcpp verify` against dd.

Writes a ~1 GiB checkpoint of float32 tensors with dcpp (one data file),
reads it once to warm the page cache, then alternates:
  * dcpp.load(sd, path) in place with verify_checksums=True and False;
  * `dd if=<data file> of=/dev/null bs=4M` and `dcpp verify` (same bytes).
Prints the median of each and the ratios. Usage:
  python bench/checksum_cost.py [--dir DIR] [--gib 1] [--reps 7] [--cli build/tools/dcpp/dcpp]
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np

import dcpp


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", default=None)
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--tensor-mib", type=int, default=16)
    p.add_argument("--cli", default="build/tools/dcpp/dcpp")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    root = a.dir or tempfile.mkdtemp(prefix="dcpp_cksum_")
    ck = os.path.join(root, "ck")
    n = int(a.gib * 1024 / a.tensor_mib)
    per = a.tensor_mib * (1 << 20) // 4
    rng = np.random.default_rng(0)
    sd = {f"layer{i}.w": rng.standard_normal(per, dtype=np.float32).reshape(-1, 1024)
          for i in range(n)}
    dcpp.save(sd, ck, sync_files=False)
    files = [os.path.join(ck, f) for f in os.listdir(ck) if f.endswith(".distcp")]
    nbytes = sum(os.path.getsize(f) for f in files)
    for f in files:  # warm
        subprocess.run(["cat", f], stdout=subprocess.DEVNULL, check=True)
    dst = {k: np.empty_like(v) for k, v in sd.items()}
    for v in dst.values():
        v.fill(0)  # touch the pages once: measure reads, not page faults

    cpu = {"off": [], "on": []}

    def timed(fn, cpu_key=None):
        c = time.process_time()
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
        if cpu_key:
            cpu[cpu_key].append(time.process_time() - c)
        return wall

    on, off, dd, ver = [], [], [], []
    for _ in range(a.reps):
        off.append(timed(lambda: dcpp.load(dst, ck, verify_checksums=False,
                                           thread_count=a.threads), "off"))
        on.append(timed(lambda: dcpp.load(dst, ck, verify_checksums=True,
                                          thread_count=a.threads), "on"))
        dd.append(timed(lambda: [subprocess.run(["dd", f"if={f}", "of=/dev/null", "bs=4M"],
                                                stderr=subprocess.DEVNULL, check=True)
                                 for f in files]))
        cmd = [a.cli, "verify", ck, "--quiet"]
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        ver.append(timed(lambda: subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)))
    assert all(np.array_equal(dst[k], sd[k]) for k in sd)
    gib = nbytes / (1 << 30)
    med = statistics.median
    print(f"checkpoint: {gib:.3f} GiB in {len(files)} file(s), {n} tensors; {a.reps} reps, medians")
    print(f"load, checksums off: {med(off):.3f} s ({gib / med(off):.2f} GiB/s)")
    print(f"load, checksums on:  {med(on):.3f} s ({gib / med(on):.2f} GiB/s)  "
          f"cost {100 * (med(on) / med(off) - 1):+.1f}%")
    print(f"load CPU time (all threads): off {med(cpu['off']):.3f} s, on {med(cpu['on']):.3f} s "
          f"cost {100 * (med(cpu['on']) / med(cpu['off']) - 1):+.1f}%")
    print(f"dd bs=4M (warm):     {med(dd):.3f} s ({gib / med(dd):.2f} GiB/s)")
    print(f"dcpp verify:         {med(ver):.3f} s ({gib / med(ver):.2f} GiB/s)  "
          f"= {100 * med(dd) / med(ver):.0f}% of dd")
    print("all runs (s): off", [round(x, 3) for x in off], "on", [round(x, 3) for x in on],
          "dd", [round(x, 3) for x in dd], "verify", [round(x, 3) for x in ver])
    if not a.dir:
        import shutil
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
