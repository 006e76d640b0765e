#!/usr/bin/env python3
"""Consolidating a 4-rank sharded safetensors checkpoint into full tensors:
torch's consolidate_safetensors_files against `dcpp convert --to
safetensors` (which reads the shards' DCP_SHARDING_INFO and writes each
piece to its place through bounded buffers).

    python3 bench/safetensors_consolidate.py --dcpp build/tools/dcpp/dcpp \
        [--mib 1024] [--dir /tmp/st_consolidate]

Step 1 writes the input with torch 2.13's HuggingFaceStorageWriter
(save_distributed=True, 4 gloo processes, float32 tensors row-sharded);
then each consolidation runs in its own process under /usr/bin/time, with
the page cache warm (the input is read once first), and the two outputs'
tensors are compared. Prints one line per method: wall seconds and peak RSS.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

N_TENSORS = 16


def _save(rank, world, init_file, path, rows, cols):
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint import save
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(0)
    state = {f"model.layers.{i}.w": distribute_tensor(torch.randn(rows, cols, generator=g), mesh,
                                                      [Shard(0)])
             for i in range(N_TENSORS)}
    save(state, storage_writer=HuggingFaceStorageWriter(path, save_distributed=True))
    dist.destroy_process_group()


def timed(cmd):
    p = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M"] + cmd, capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{p.stdout}\n{p.stderr}")
    line = [x for x in p.stderr.splitlines() if x.startswith("TIME ")][-1]
    _, secs, kb = line.split()
    return float(secs), int(kb) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dcpp", required=True)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "st_consolidate"))
    a = ap.parse_args()
    import torch.multiprocessing as mp

    cols = 4096
    rows = max(4, a.mib * (1 << 20) // (N_TENSORS * cols * 4))
    shutil.rmtree(a.dir, ignore_errors=True)
    src = os.path.join(a.dir, "sharded")
    init = os.path.join(tempfile.mkdtemp(), "init")
    mp.spawn(_save, args=(4, init, src, rows, cols), nprocs=4, join=True)
    for f in os.listdir(src):
        with open(os.path.join(src, f), "rb") as h:
            while h.read(1 << 24):
                pass
    torch_out = os.path.join(a.dir, "torch_out")
    dcpp_out = os.path.join(a.dir, "dcpp_out")
    fqns = [f"model.layers.{i}.w" for i in range(N_TENSORS)]
    script = (
        "from torch.distributed.checkpoint._consolidate_hf_safetensors import "
        "consolidate_safetensors_files as c\nimport os\n"
        f"os.makedirs({torch_out!r}, exist_ok=True)\n"
        f"c({src!r}, {torch_out!r}, dict.fromkeys({fqns!r}, 1), num_threads=2)\n")
    t_secs, t_mib = timed([sys.executable, "-c", script])
    d_secs, d_mib = timed([a.dcpp, "convert", "--quiet", src, dcpp_out, "--to", "safetensors"])
    # torch's consolidation does not fsync; dcpp's convert does unless told.
    n_secs, n_mib = timed([a.dcpp, "convert", "--quiet", "--no-sync", src, dcpp_out + "_nosync",
                           "--to", "safetensors"])
    from safetensors.torch import load_file
    import torch

    (tf,) = [f for f in os.listdir(torch_out) if f.endswith(".safetensors")]
    (df,) = [f for f in os.listdir(dcpp_out) if f.endswith(".safetensors")]
    x, y = load_file(os.path.join(torch_out, tf)), load_file(os.path.join(dcpp_out, df))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), "outputs differ"
    size = sum(v.numel() * v.element_size() for v in x.values()) / (1 << 20)
    print(f"{size:.0f} MiB, 4 ranks' shards -> 1 file; identical tensors")
    print(f"torch consolidate_safetensors_files (2 threads): {t_secs:.2f} s, peak RSS {t_mib:.0f} MiB")
    print(f"dcpp convert --to safetensors:                   {d_secs:.2f} s, peak RSS {d_mib:.0f} MiB")
    print(f"dcpp convert --to safetensors --no-sync:         {n_secs:.2f} s, peak RSS {n_mib:.0f} MiB")
    print(f"speedup {t_secs / d_secs:.1f}x (fsync), {t_secs / n_secs:.1f}x (no fsync, as torch)")


if __name__ == "__main__":
    main()
