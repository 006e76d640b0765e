"""dcpp.save / dcpp.load with s3:// locations, against a real S3 server.

tests/s3/run_s3_tests.sh starts a local Ceph RADOS Gateway and sets
S3_ENDPOINT, S3_ACCESS_KEY and S3_SECRET_KEY; without S3_ENDPOINT these tests
are skipped. Objects are moved to and from the bucket with curl (its SigV4
support), so the interop tests need nothing but torch: a checkpoint torch's
FileSystemWriter wrote, uploaded as is, loads with dcpp from S3, and one
dcpp saved to S3, downloaded, loads with torch.distributed.checkpoint.
"""
import os
import re
import subprocess
import uuid

import numpy as np
import pytest

import dcpp

ENDPOINT = os.environ.get("S3_ENDPOINT", "")
pytestmark = pytest.mark.skipif(
    not ENDPOINT, reason="S3_ENDPOINT is not set: run tests/s3/run_s3_tests.sh"
)
AK = os.environ.get("S3_ACCESS_KEY", "")
SK = os.environ.get("S3_SECRET_KEY", "")


def curl(method, path, *args, data=None):
    cmd = ["curl", "-sS", "-f", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{AK}:{SK}",
           "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-X", method, *args,
           f"{ENDPOINT}/{path}"]
    return subprocess.run(cmd, check=True, capture_output=True, input=data).stdout


@pytest.fixture(scope="module")
def bucket():
    name = f"dcpp-py-{uuid.uuid4().hex[:12]}"
    curl("PUT", name)
    return name


@pytest.fixture(autouse=True)
def s3_env(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", ENDPOINT)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AK)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SK)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)


def keys(bucket, prefix):
    xml = curl("GET", f"{bucket}?list-type=2&prefix={prefix}%2F").decode()
    return re.findall(r"<Key>([^<]*)</Key>", xml)


def test_round_trip_numpy(bucket):
    sd = {
        "model": {"w": np.arange(12, dtype=np.float32).reshape(3, 4),
                  "b": np.arange(5, dtype=np.int64)},
        "step": 7,
        "name": "run",
    }
    path = f"s3://{bucket}/np"
    dcpp.save(sd, path)
    assert ".metadata" in [k.rsplit("/", 1)[1] for k in keys(bucket, "np")]
    out = dcpp.load(path)
    np.testing.assert_array_equal(out["model"]["w"], sd["model"]["w"])
    np.testing.assert_array_equal(out["model"]["b"], sd["model"]["b"])
    assert out["step"] == 7 and out["name"] == "run"
    target = {"model": {"w": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.int64)},
              "step": 0, "name": ""}
    dcpp.load(target, path)
    np.testing.assert_array_equal(target["model"]["w"], sd["model"]["w"])
    assert target["step"] == 7


def test_round_trip_torch_zstd_overwrite(bucket):
    torch = pytest.importorskip("torch")
    path = f"s3://{bucket}/torch"
    first = {"w": torch.randn(1024, 1024).to(torch.bfloat16), "big": torch.randn(3 << 20)}
    dcpp.save(first, path, transforms=["stream.zstd/1"])
    old = {k for k in keys(bucket, "torch") if k.endswith(".distcp")}
    second = {"w": torch.randn(1024, 1024).to(torch.bfloat16), "big": torch.randn(3 << 20)}
    with pytest.raises(dcpp.AlreadyExistsError):
        dcpp.save(second, path, overwrite=False)
    dcpp.save(second, path, overwrite=True)
    new = {k for k in keys(bucket, "torch") if k.endswith(".distcp")}
    assert new and not (old & new)  # the replaced checkpoint's objects are gone
    out = dcpp.load(path, tensors="torch")
    assert torch.equal(out["w"], second["w"]) and torch.equal(out["big"], second["big"])


def test_errors(bucket, monkeypatch):
    with pytest.raises(dcpp.NotFoundError, match="dcpp-no-such-bucket"):
        dcpp.save({"x": np.zeros(3)}, "s3://dcpp-no-such-bucket/x")
    with pytest.raises(dcpp.NotFoundError):
        dcpp.load(f"s3://{bucket}/never-saved")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(PermissionError, match=bucket):
        dcpp.save({"x": np.zeros(3)}, f"s3://{bucket}/denied")


def test_torch_checkpoint_uploaded_loads_from_s3_and_back(bucket, tmp_path):
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp

    sd = {"w": torch.arange(20, dtype=torch.float32).reshape(4, 5), "step": 3,
          "h": torch.ones(7, dtype=torch.float16)}
    local = tmp_path / "torch_ckpt"
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(local)))
    for f in os.listdir(local):
        curl("PUT", f"{bucket}/from_torch/{f}", "--data-binary", f"@{local / f}")
    out = dcpp.load(f"s3://{bucket}/from_torch", tensors="torch")
    assert torch.equal(out["w"], sd["w"]) and torch.equal(out["h"], sd["h"])
    assert out["step"] == 3

    # dcpp to S3, downloaded, read by torch.
    dcpp.save(sd, f"s3://{bucket}/to_torch")
    down = tmp_path / "down"
    down.mkdir()
    for k in keys(bucket, "to_torch"):
        name = k.rsplit("/", 1)[1]
        (down / name).write_bytes(curl("GET", f"{bucket}/{k}"))
    target = {"w": torch.zeros(4, 5), "step": 0, "h": torch.zeros(7, dtype=torch.float16)}
    dcp.load(target, storage_reader=dcp.FileSystemReader(str(down)))
    assert torch.equal(target["w"], sd["w"]) and torch.equal(target["h"], sd["h"])
    assert target["step"] == 3


def test_interop_with_torch_fsspec_s3fs(bucket, monkeypatch):
    """torch's FsspecWriter/FsspecReader (s3fs) and dcpp on the same bucket."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("s3fs")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    # Ceph RGW 16.2 refuses the trailing checksums recent botocore sends.
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    so = {"endpoint_url": ENDPOINT}
    sd = {"w": torch.randn(64, 33), "b": torch.arange(10, dtype=torch.int16), "step": 9}

    dcp.save(sd, storage_writer=FsspecWriter(f"s3://{bucket}/fsspec_torch", **so))
    out = dcpp.load(f"s3://{bucket}/fsspec_torch", tensors="torch")
    assert torch.equal(out["w"], sd["w"]) and torch.equal(out["b"], sd["b"])
    assert out["step"] == 9

    dcpp.save(sd, f"s3://{bucket}/fsspec_dcpp")
    target = {"w": torch.zeros(64, 33), "b": torch.zeros(10, dtype=torch.int16), "step": 0}
    dcp.load(target, storage_reader=FsspecReader(f"s3://{bucket}/fsspec_dcpp", **so))
    assert torch.equal(target["w"], sd["w"]) and torch.equal(target["b"], sd["b"])
    assert target["step"] == 9


def test_dcpp_checkpoint_loads_with_s3torchconnector(bucket):
    """AWS's s3torchconnector (1.5) DCP reader on a checkpoint dcpp saved.

    (Its writer cannot write to Ceph RGW 16.2: the CRT client reports
    'Header "ETag" not found' on close, before dcpp is involved.)
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("s3torchconnector")
    import torch.distributed.checkpoint as dcp
    from s3torchconnector import S3ClientConfig
    from s3torchconnector.dcp import S3StorageReader

    sd = {"w": torch.randn(64, 33), "b": torch.arange(10, dtype=torch.int16), "step": 9}
    dcpp.save(sd, f"s3://{bucket}/s3tc")
    target = {"w": torch.zeros(64, 33), "b": torch.zeros(10, dtype=torch.int16), "step": 0}
    reader = S3StorageReader("us-east-1", f"s3://{bucket}/s3tc",
                             s3client_config=S3ClientConfig(force_path_style=True))
    dcp.load(target, storage_reader=reader)
    assert torch.equal(target["w"], sd["w"]) and torch.equal(target["b"], sd["b"])
    assert target["step"] == 9


# --- dcpp.torch's FileSystemWriter / FileSystemReader on s3:// ---------------


def names(bucket, prefix):
    return sorted(k[len(prefix) + 1:] for k in keys(bucket, prefix))


def multipart_uploads(bucket, prefix):
    xml = curl("GET", f"{bucket}?prefix={prefix}%2F&uploads=").decode()
    return re.findall(r"<Key>([^<]*)</Key>", xml)


def test_dcp_save_load_through_dcpp_torch(bucket):
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp

    from torch.distributed.checkpoint.api import CheckpointException

    import dcpp.torch as dtorch
    from test_torch_storage import assert_state_equal, failures, state, zeros_like

    path = f"s3://{bucket}/dt"
    dcp.save(state(0), storage_writer=dtorch.FileSystemWriter(path, thread_count=2))
    first = names(bucket, "dt")
    data = [n for n in first if n.endswith(".distcp")]
    # Committed: .metadata, the sidecar, two data objects; the lock object is gone.
    assert ".metadata" in first and ".dcpp.lock" not in first, first
    assert len(data) == 2 and sum(n.startswith(".checksums.") for n in first) == 1, first
    assert not multipart_uploads(bucket, "dt")
    out = zeros_like(state(0))
    dcp.load(out, storage_reader=dtorch.FileSystemReader(path))
    assert_state_equal(state(0), out)
    # dcpp's own loader reads it too, checking the sidecar's checksums.
    assert dcpp.verify(path)

    # An overwrite: new names, the replaced objects reclaimed after the commit.
    writer = dtorch.FileSystemWriter(path, transforms=["stream.zstd/1"])
    dcp.save(state(1), storage_writer=writer)
    second = names(bucket, "dt")
    assert not set(data) & set(second) and ".dcpp.lock" not in second, second
    assert sum(n.startswith(".checksums.") for n in second) == 1, second
    out = zeros_like(state(1))
    dcp.load(out, storage_reader=dtorch.FileSystemReader(path))
    assert_state_equal(state(1), out)
    md = dtorch.FileSystemReader(path).read_metadata()
    assert md.storage_meta.checkpoint_id == path
    assert any(s.transform_descriptors == ["stream.zstd/1"] for s in md.storage_data.values())

    with pytest.raises(CheckpointException) as e:
        dcp.save(state(2), storage_writer=dtorch.FileSystemWriter(path, overwrite=False))
    (err,) = failures(e.value)
    assert isinstance(err, dcpp.AlreadyExistsError) and "overwrite=False" in str(err), err
    # checkpoint_id instead of a writer's path; torch resets the writer with it.
    dcp.save(state(2), checkpoint_id=f"s3://{bucket}/dt2",
             storage_writer=dtorch.FileSystemWriter(f"s3://{bucket}/unused"))
    assert ".metadata" in names(bucket, "dt2") and not keys(bucket, "unused")
    out = zeros_like(state(2))
    dcp.load(out, checkpoint_id=f"s3://{bucket}/dt2",
             storage_reader=dtorch.FileSystemReader(path))
    assert_state_equal(state(2), out)
    assert dtorch.FileSystemWriter.validate_checkpoint_id(path)
    assert dtorch.FileSystemReader.validate_checkpoint_id(path)


def test_dcpp_torch_errors_on_s3(bucket):
    pytest.importorskip("torch")
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    import dcpp.torch as dtorch
    from test_torch_storage import failures

    with pytest.raises(dcpp.NotFoundError, match="never-saved"):
        dtorch.FileSystemReader(f"s3://{bucket}/never-saved").read_metadata()
    with pytest.raises(CheckpointException) as e:
        dcp.save({"w": torch.ones(3)},
                 storage_writer=dtorch.FileSystemWriter("s3://dcpp-no-such-bucket/x"))
    (err,) = failures(e.value)
    assert isinstance(err, dcpp.NotFoundError) and "dcpp-no-such-bucket" in str(err), err


def test_async_save_through_dcpp_torch(bucket):
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp

    import dcpp.torch as dtorch
    from test_torch_storage import assert_state_equal, state, zeros_like

    path = f"s3://{bucket}/async"
    stager = dtorch.Stager()
    try:
        for seed in (3, 4):
            sd = state(seed)
            fut = dcp.async_save(sd, storage_writer=dtorch.FileSystemWriter(path),
                                 async_stager=stager)
            fut.result()
            out = zeros_like(sd)
            dcp.load(out, storage_reader=dtorch.FileSystemReader(path))
            assert_state_equal(sd, out)
    finally:
        stager.close()
    # Without a stager: torch's own staging.
    sd = {"w": torch.randn(1 << 20), "step": 5}
    dcp.async_save(sd, storage_writer=dtorch.FileSystemWriter(path)).result()
    out = {"w": torch.zeros(1 << 20), "step": 0}
    dcp.load(out, storage_reader=dtorch.FileSystemReader(path))
    assert torch.equal(out["w"], sd["w"]) and out["step"] == 5
    left = names(bucket, "async")
    assert ".dcpp.lock" not in left and len([n for n in left if n.endswith(".distcp")]) == 1


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_failed_torch_save_leaves_no_metadata(bucket):
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    import dcpp.torch as dtorch
    from test_torch_storage import assert_state_equal, failures, state, zeros_like

    # No checkpoint yet: a failing save (a dtype dcpp cannot write) leaves nothing.
    path = f"s3://{bucket}/failed"
    bad = {"w": torch.ones(1 << 20), "c": torch.zeros(3, dtype=torch.complex32)}
    with pytest.raises(CheckpointException):
        dcp.save(bad, storage_writer=dtorch.FileSystemWriter(path))
    assert not keys(bucket, "failed") and not multipart_uploads(bucket, "failed")

    # Data objects uploaded, then the save fails (as when another rank
    # fails): they are removed, the old checkpoint stays committed, the
    # lock is released.
    dcp.save(state(0), storage_writer=dtorch.FileSystemWriter(path))
    before = names(bucket, "failed")
    real = dtorch._dcpp._write_files
    uploaded = []

    def write_then_fail(root, files, **kw):
        out = real(root, files, **kw)
        uploaded.extend(name for name, _ in files)
        raise RuntimeError("injected failure after the upload")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dtorch._dcpp, "_write_files", write_then_fail)
        with pytest.raises(CheckpointException) as e:
            dcp.save(state(1), storage_writer=dtorch.FileSystemWriter(path, thread_count=3))
    (err,) = failures(e.value)
    assert "injected failure" in str(err), err
    assert len(uploaded) == 3
    assert names(bucket, "failed") == before  # the new objects are gone, nothing else
    assert not multipart_uploads(bucket, "failed")
    out = zeros_like(state(0))
    dcp.load(out, storage_reader=dtorch.FileSystemReader(path))
    assert_state_equal(state(0), out)
    dcp.save(state(1), storage_writer=dtorch.FileSystemWriter(path, lock_timeout=0))
    out = zeros_like(state(1))
    dcp.load(out, storage_reader=dtorch.FileSystemReader(path))
    assert_state_equal(state(1), out)


def test_dcpp_torch_lock_on_s3(bucket):
    torch = pytest.importorskip("torch")
    import threading

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    import dcpp.torch as dtorch
    from test_torch_storage import failures

    path = f"s3://{bucket}/locked"
    # A holder on another host (so not taken over as dead).
    line = "pid=4242 host=elsewhere.example started=2026-01-01T00:00:00Z save=0badc0de"
    lock = dcpp._dcpp._Storage(path).try_lock(".dcpp.lock", line)
    with pytest.raises(CheckpointException) as e:
        dcp.save({"w": torch.ones(3)}, storage_writer=dtorch.FileSystemWriter(path))
    (err,) = failures(e.value)
    assert isinstance(err, dcpp.AbortedError) and line in str(err), err
    assert ".dcpp.lock" in str(err) and "lock_timeout" in str(err)
    assert not [n for n in names(bucket, "locked") if n.endswith(".distcp")]
    # dcpp's own save is excluded the same way.
    with pytest.raises(dcpp.AbortedError, match="host=elsewhere.example"):
        dcpp.save({"w": np.ones(3)}, path)
    # With lock_timeout the save waits for the holder.
    threading.Timer(0.5, lock.release).start()
    dcp.save({"w": torch.ones(3)},
             storage_writer=dtorch.FileSystemWriter(path, lock_timeout=30))
    assert ".metadata" in names(bucket, "locked") and ".dcpp.lock" not in names(bucket, "locked")
    # A writer that holds the lock excludes dcpp.save; dropping it releases.
    from torch.distributed.checkpoint.planner import SavePlan

    holder = dtorch.FileSystemWriter(path)
    holder.set_up_storage_writer(True, rank=0, use_collectives=True)
    holder.prepare_global_plan([holder.prepare_local_plan(SavePlan([]))])
    held = curl("GET", f"{bucket}/locked/.dcpp.lock").decode()
    assert held.startswith(f"pid={os.getpid()} ") and f"save={holder._tag}" in held, held
    with pytest.raises(dcpp.AbortedError, match=holder._tag):
        dcpp.save({"w": np.ones(3)}, path)
    del holder
    import gc

    gc.collect()
    dcpp.save({"w": np.ones(3)}, path)

    # A lock object left by a process of this host that has died (the
    # writer's holder line names its pid and host) is taken over.
    import socket

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"pid={dead.pid} host={socket.gethostname()} started=2026-01-01T00:00:00Z save=deadbeef"
    curl("PUT", f"{bucket}/locked/.dcpp.lock", "--data-binary", stale)
    dcp.save({"w": torch.full((3,), 2.0)}, storage_writer=dtorch.FileSystemWriter(path))
    assert ".dcpp.lock" not in names(bucket, "locked")
    out = {"w": torch.zeros(3)}
    dcp.load(out, storage_reader=dtorch.FileSystemReader(path))
    assert torch.equal(out["w"], torch.full((3,), 2.0))


def test_dcpp_torch_without_collectives_on_s3(bucket):
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp

    import dcpp.torch as dtorch

    path = f"s3://{bucket}/nocoll"
    sd = {"w": torch.randn(10)}
    dcp.save(sd, storage_writer=dtorch.FileSystemWriter(path), no_dist=True,
             use_collectives=False)
    got = names(bucket, "nocoll")
    assert "__0.metadata" in got and "__0.dcpp.lock" not in got, got


def test_dcpp_torch_interop_with_fsspec_s3fs(bucket, monkeypatch):
    """dcpp.torch's writer/reader and torch's FsspecWriter/FsspecReader
    (s3fs) on the same bucket, both ways, with zstd."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("s3fs")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._extension import ZStandard
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    import dcpp.torch as dtorch
    from test_torch_storage import assert_state_equal, state, zeros_like

    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    so = {"endpoint_url": ENDPOINT}
    for zstd in (False, True):
        p = f"s3://{bucket}/fs_dt_{int(zstd)}"
        dcp.save(state(5), storage_writer=dtorch.FileSystemWriter(
            p, transforms=["stream.zstd/1"] if zstd else None))
        out = zeros_like(state(5))
        dcp.load(out, storage_reader=FsspecReader(p, **so))
        assert_state_equal(state(5), out)

        p = f"s3://{bucket}/fs_torch_{int(zstd)}"
        dcp.save(state(6), storage_writer=FsspecWriter(
            p, thread_count=2, _extensions=[ZStandard()] if zstd else None, **so))
        out = zeros_like(state(6))
        dcp.load(out, storage_reader=dtorch.FileSystemReader(p))
        assert_state_equal(state(6), out)


def test_dcpp_torch_checkpoint_loads_with_s3torchconnector(bucket):
    torch = pytest.importorskip("torch")
    pytest.importorskip("s3torchconnector")
    import torch.distributed.checkpoint as dcp
    from s3torchconnector import S3ClientConfig
    from s3torchconnector.dcp import S3StorageReader

    import dcpp.torch as dtorch
    from test_torch_storage import assert_state_equal, state, zeros_like

    p = f"s3://{bucket}/s3tc_dt"
    dcp.save(state(7), storage_writer=dtorch.FileSystemWriter(p, thread_count=2))
    out = zeros_like(state(7))
    dcp.load(out, storage_reader=S3StorageReader(
        "us-east-1", p, s3client_config=S3ClientConfig(force_path_style=True)))
    assert_state_equal(state(7), out)


def test_dcpp_torch_resharded_across_gloo_ranks_on_s3(bucket, tmp_path):
    """4 gloo ranks save row shards through dcpp.torch to the bucket, 3 load
    column shards back (dist_workers.py checks every byte)."""
    pytest.importorskip("torch")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from test_distributed import launch

    path = f"s3://{bucket}/gloo"
    launch(tmp_path, "save", "dcpp", 4, path, "--zstd")
    got = names(bucket, "gloo")
    assert len([n for n in got if n.endswith(".distcp")]) == 8 and ".dcpp.lock" not in got, got
    launch(tmp_path, "load", "dcpp", 3, path)


def test_safetensors_output_on_s3(bucket, tmp_path):
    # A Hugging Face model directory written straight to the bucket, read
    # back by dcpp, and byte-identical to the same save on a filesystem
    # (so the safetensors package reads it).
    st = pytest.importorskip("safetensors.numpy")
    sd = {"model": {"w": np.arange(600, dtype=np.float32).reshape(20, 30),
                    "b": np.arange(7, dtype=np.int64)}}
    path = f"s3://{bucket}/hf"
    dcpp.save(sd, path, format="safetensors", max_shard_size=1000)
    names = sorted(k.rsplit("/", 1)[1] for k in keys(bucket, "hf"))
    assert "model.safetensors.index.json" in names
    files = [n for n in names if n.endswith(".safetensors")]
    assert len(files) >= 2  # split by max_shard_size
    out = dcpp.load(path)  # safetensors keys are FQNs
    np.testing.assert_array_equal(out["model.w"], sd["model"]["w"])
    np.testing.assert_array_equal(out["model.b"], sd["model"]["b"])
    dcpp.save(sd, tmp_path / "hf", format="safetensors", max_shard_size=1000)
    for name in files:
        data = curl("GET", f"{bucket}/hf/{name}")
        assert data == (tmp_path / "hf" / name).read_bytes(), name
        st.load(data)  # the package parses it
