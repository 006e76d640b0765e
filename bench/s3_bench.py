"""Save/load throughput to an S3 server: dcpp against the raw bound.

Usage (a local gateway, as tests/s3/run_s3_tests.sh starts one):
    out=$(../shared/tools/s3server.sh start /tmp/s3b) && set -a && eval "$out" && set +a
    python bench/s3_bench.py [--mib 256] [--repeat 3]

Measures, on the same bytes (float32 tensors of 16 MiB each, --mib in all):
  - dcpp.save to s3://bucket/dcpp and dcpp.load back (numpy);
  - raw boto3: the same tensors' bytes PUT and GET as objects in parallel
    (TransferConfig: 16 MiB parts, 16 threads), the bound any checkpoint
    writer over HTTP can reach on this server;
  - torch.distributed.checkpoint through FsspecWriter/FsspecReader (s3fs),
    when s3fs is installed.
Prints the best of --repeat runs per row in MiB/s.
"""
import argparse
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import dcpp


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    endpoint = os.environ["S3_ENDPOINT"]
    os.environ.setdefault("AWS_ENDPOINT_URL", endpoint)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", os.environ["S3_ACCESS_KEY"])
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", os.environ["S3_SECRET_KEY"])
    # Ceph RGW 16.2 refuses the trailing checksums recent SDKs send.
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")

    import boto3
    from boto3.s3.transfer import TransferConfig

    s3 = boto3.client("s3", region_name="us-east-1")
    bucket = f"dcpp-bench-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    n = max(1, args.mib // 16)
    rng = np.random.default_rng(0)
    sd = {f"t{i}": rng.standard_normal(4 << 20, dtype=np.float32) for i in range(n)}
    total = sum(a.nbytes for a in sd.values()) / (1 << 20)
    rows = []

    path = f"s3://{bucket}/dcpp"
    t = best(lambda: dcpp.save(sd, path, overwrite=True), args.repeat)
    rows.append(("dcpp.save", t))
    t = best(lambda: dcpp.load(path), args.repeat)
    rows.append(("dcpp.load", t))

    cfg = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20,
                         max_concurrency=16)

    def raw_put():
        def one(item):
            k, a = item
            import io
            s3.upload_fileobj(io.BytesIO(a.tobytes()), bucket, f"raw/{k}", Config=cfg)
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(one, sd.items()))

    def raw_get():
        def one(k):
            import io
            buf = io.BytesIO()
            s3.download_fileobj(bucket, f"raw/{k}", buf, Config=cfg)
            return buf
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(one, sd.keys()))

    rows.append(("boto3 parallel PUT", best(raw_put, args.repeat)))
    rows.append(("boto3 parallel GET", best(raw_get, args.repeat)))

    try:
        import s3fs  # noqa: F401
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

        tsd = {k: torch.from_numpy(v) for k, v in sd.items()}
        url = f"s3://{bucket}/torch"
        so = {"endpoint_url": endpoint}
        rows.append(("torch+s3fs save", best(
            lambda: dcp.save(tsd, storage_writer=FsspecWriter(url, **so)), args.repeat)))
        target = {k: torch.empty_like(v) for k, v in tsd.items()}
        rows.append(("torch+s3fs load", best(
            lambda: dcp.load(target, storage_reader=FsspecReader(url, **so)), args.repeat)))
    except ImportError:
        rows.append(("torch+s3fs", None))

    print(f"{total:.0f} MiB in {n} tensors, endpoint {endpoint}, best of {args.repeat}")
    for name, t in rows:
        print(f"  {name:22s} " + ("not installed" if t is None else
                                  f"{t:7.3f} s  {total / t:8.1f} MiB/s"))


if __name__ == "__main__":
    main()
