"""Save/load throughput and peak memory to an S3 server: dcpp against the
raw bound and against torch's S3 path.

Usage (a local gateway, as tests/s3/run_s3_tests.sh starts one):
    out=$(../shared/tools/s3server.sh start /tmp/s3b) && set -a && eval "$out" && set +a
    python bench/s3_bench.py [--mib 256] [--repeat 3]

Measures, on the same bytes (float32 tensors of 16 MiB each, --mib in all),
each row in its own process (so its peak RSS is its own):
  - dcpp.save to s3://bucket/dcpp and dcpp.load back (numpy);
  - raw boto3: the same tensors' bytes PUT and GET as objects in parallel
    (TransferConfig: 16 MiB parts, 16 threads per object, 8 objects at
    once), the bound any checkpoint writer over HTTP reaches on this server;
  - torch.distributed.checkpoint through dcpp.torch's FileSystemWriter /
    FileSystemReader (torch's planners, dcpp's I/O) and through
    FsspecWriter/FsspecReader (s3fs), when s3fs is installed.
Prints the best time of --repeat runs per row, MiB/s, and the process's
peak RSS minus the state dict's own size.
"""
import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROWS = ["dcpp.save", "dcpp.load", "boto3 PUT", "boto3 GET", "torch+dcpp save", "torch+dcpp load",
        "torch+s3fs save", "torch+s3fs load"]


def env():
    endpoint = os.environ["S3_ENDPOINT"]
    os.environ.setdefault("AWS_ENDPOINT_URL", endpoint)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", os.environ["S3_ACCESS_KEY"])
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", os.environ["S3_SECRET_KEY"])
    # Ceph RGW 16.2 refuses the trailing checksums recent SDKs send.
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    return endpoint


def state(mib):
    rng = np.random.default_rng(0)
    return {f"t{i}": rng.standard_normal(4 << 20, dtype=np.float32) for i in range(max(1, mib // 16))}


def run_row(row, bucket, mib, repeat):
    """One row, in this process: returns (best seconds, peak RSS bytes)."""
    endpoint = env()
    sd = state(mib)
    path = f"s3://{bucket}/dcpp"
    if row.startswith("dcpp"):
        import dcpp
        fn = (lambda: dcpp.save(sd, path, overwrite=True)) if row == "dcpp.save" else (
            lambda: dcpp.load(path))
    elif row.startswith("boto3"):
        import boto3
        from boto3.s3.transfer import TransferConfig
        s3 = boto3.client("s3", region_name="us-east-1")
        cfg = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20,
                             max_concurrency=16)

        def put():
            with ThreadPoolExecutor(8) as ex:
                list(ex.map(lambda kv: s3.upload_fileobj(io.BytesIO(memoryview(kv[1]).cast("B")),
                                                         bucket, f"raw/{kv[0]}", Config=cfg),
                            sd.items()))

        def get():
            def one(k):
                buf = io.BytesIO()
                s3.download_fileobj(bucket, f"raw/{k}", buf, Config=cfg)
                return np.frombuffer(buf.getbuffer(), np.float32)
            with ThreadPoolExecutor(8) as ex:
                list(ex.map(one, sd.keys()))

        fn = put if row == "boto3 PUT" else get
    elif row.startswith("torch+dcpp"):
        import torch
        import torch.distributed.checkpoint as dcp

        import dcpp.torch as dtorch
        tsd = {k: torch.from_numpy(v) for k, v in sd.items()}
        url = f"s3://{bucket}/torch_dcpp"
        if row.endswith("save"):
            fn = lambda: dcp.save(tsd, storage_writer=dtorch.FileSystemWriter(url))
        else:
            target = {k: torch.empty_like(v) for k, v in tsd.items()}
            fn = lambda: dcp.load(target, storage_reader=dtorch.FileSystemReader(url))
    else:
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
        tsd = {k: torch.from_numpy(v) for k, v in sd.items()}
        url, so = f"s3://{bucket}/torch", {"endpoint_url": endpoint}
        if row.endswith("save"):
            fn = lambda: dcp.save(tsd, storage_writer=FsspecWriter(url, overwrite=True, **so))
        else:
            target = {k: torch.empty_like(v) for k, v in tsd.items()}
            fn = lambda: dcp.load(target, storage_reader=FsspecReader(url, **so))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--row")
    ap.add_argument("--bucket")
    args = ap.parse_args()
    if args.row:
        t, rss = run_row(args.row, args.bucket, args.mib, args.repeat)
        print(json.dumps({"t": t, "rss": rss}))
        return
    endpoint = env()
    import boto3
    bucket = f"dcpp-bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=bucket)
    try:
        import s3fs  # noqa: F401
        have_s3fs = True
    except ImportError:
        have_s3fs = False
    total = sum(a.nbytes for a in state(args.mib).values())
    print(f"{total >> 20} MiB in {len(state(args.mib))} tensors, endpoint {endpoint}, "
          f"best of {args.repeat}; RSS = peak RSS of the row's process minus the state's size")
    for row in ROWS:
        if row.startswith("torch+s3fs") and not have_s3fs:
            print(f"  {row:18s} s3fs not installed")
            continue
        out = subprocess.run([sys.executable, __file__, "--row", row, "--bucket", bucket,
                              "--mib", str(args.mib), "--repeat", str(args.repeat)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"  {row:18s} {r['t']:7.3f} s  {total / r['t'] / (1 << 20):8.1f} MiB/s  "
              f"RSS +{(r['rss'] - total) / (1 << 20):6.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
