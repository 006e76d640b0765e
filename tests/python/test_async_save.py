"""dcpp.async_save, dcpp.AsyncCheckpointer and dcpp.torch.Stager: the
checkpoint holds the values at the call, torch loads it bit-exactly, errors
surface from the future, and the pool is reused."""
import concurrent.futures
import os
import threading

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

import dcpp
import dcpp.torch


def _state():
    g = torch.Generator().manual_seed(0)
    return {
        "model": {
            "w": torch.randn(512, 256, generator=g),
            "wt": torch.randn(64, 32, generator=g).t(),  # transposed: staged in its layout
            "half": torch.randn(100, generator=g).to(torch.bfloat16),
            "every_other": torch.arange(40, dtype=torch.int64)[::2],  # not dense
        },
        "np": np.arange(1000, dtype=np.float64),
        "step": 12,
        "lr": [0.1, 0.01],
    }


def _snapshot(sd):
    return {
        "model": {k: v.clone() for k, v in sd["model"].items()},
        "np": sd["np"].copy(),
    }


def _scribble(sd):
    for t in sd["model"].values():
        t.fill_(7)
    sd["np"][:] = -1
    sd["step"] = -1


def test_async_save_holds_the_values_at_the_call_and_torch_loads_them(ckpt):
    sd = _state()
    expected = _snapshot(sd)
    fut = dcpp.async_save(sd, ckpt)
    assert isinstance(fut, concurrent.futures.Future)
    _scribble(sd)  # right after the call returns
    md = fut.result(timeout=60)
    assert isinstance(md, dcpp.Metadata)
    assert "model.w" in md
    stats = fut.stats()
    assert stats["staged_bytes"] >= 512 * 256 * 4
    assert stats["write_seconds"] > 0

    # torch reads it bit-exactly.
    out = {"model": {k: torch.zeros_like(v) for k, v in expected["model"].items()},
           "np": torch.zeros(1000, dtype=torch.float64), "step": 0, "lr": [0.0, 0.0]}
    dcp.load(out, storage_reader=dcp.FileSystemReader(str(ckpt)))
    for k, v in expected["model"].items():
        assert torch.equal(out["model"][k], v), k
    assert out["step"] == 12
    assert np.array_equal(out["np"].numpy(), expected["np"])
    # dcpp too.
    back = dcpp.load(ckpt, tensors="torch")
    assert np.array_equal(back["np"].numpy(), expected["np"])
    assert torch.equal(back["model"]["half"], expected["model"]["half"])


def test_checkpointer_reuses_its_pool_and_waits_for_the_previous_save(tmp_path):
    sd = {"w": np.zeros(1 << 18, np.float32)}
    with dcpp.AsyncCheckpointer(staging_threads=2) as c:
        futures = []
        for i in range(6):
            sd["w"][0] = i
            futures.append(c.save(sd, tmp_path / f"s{i}", sync_files=False))
        pool = c.pool_bytes
        assert pool >= sd["w"].nbytes
        for i, f in enumerate(futures):
            f.result(timeout=60)
            assert f.stats()["pool_grew"] == (i == 0)
        assert c.pool_bytes == pool
    for i in range(6):
        assert dcpp.load(tmp_path / f"s{i}")["w"][0] == i


def test_error_in_the_background_surfaces_from_the_future_and_commits_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    sd = {"w": np.ones(10, np.float32)}
    fut = dcpp.async_save(sd, blocker / "ckpt")  # a path under a regular file
    with pytest.raises(dcpp.DcppError) as e:
        fut.result(timeout=60)
    assert "ckpt" in str(e.value)
    # The cap: the same error type as anywhere else, nothing left.
    with dcpp.AsyncCheckpointer(max_staging_bytes=16) as c:
        with pytest.raises(dcpp.ResourceExhaustedError, match="max_staging_bytes"):
            c.save(sd, tmp_path / "capped").result(timeout=60)
    assert not (tmp_path / "capped" / ".metadata").exists()
    # Bad options are refused at the call, like dcpp.save's.
    with pytest.raises(ValueError):
        dcpp.async_save(sd, tmp_path / "bad", thread_count=0)


def test_staging_releases_the_gil(tmp_path):
    # A Python thread keeps counting while a large state is staged: with the
    # GIL held through the copy it would stall for the whole call.
    import time

    sd = {"w": np.ones(256 << 20, np.uint8)}
    count = [0]
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            count[0] += 1

    with dcpp.AsyncCheckpointer(staging_threads=1) as c:
        c.save(sd, tmp_path / "warm", sync_files=False).result()  # pool mapped
        t = threading.Thread(target=tick)
        t.start()
        start, t0 = count[0], time.perf_counter()
        time.sleep(0.1)  # the counter's free rate (sleep releases the GIL)
        free_rate = (count[0] - start) / (time.perf_counter() - t0)
        before, t0 = count[0], time.perf_counter()
        f = c.save(sd, tmp_path / "g", sync_files=False)
        during, seconds = count[0] - before, time.perf_counter() - t0
        stop.set()
        t.join()
        f.result(timeout=60)
    assert seconds > 0.01, "staging 256 MiB took too little time to tell"
    assert during > 0.3 * free_rate * seconds, (during, free_rate, seconds)


def test_closed_checkpointer_refuses_saves(tmp_path):
    c = dcpp.AsyncCheckpointer()
    c.close()
    c.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        c.save({"x": 1}, tmp_path / "c")


def test_torch_async_save_with_dcpp_stager(tmp_path):
    sd = _state()
    sd.pop("np")
    expected = _snapshot({**sd, "np": np.zeros(1)})
    stager = dcpp.torch.Stager()
    try:
        fut = dcp.async_save(sd, storage_writer=dcpp.torch.FileSystemWriter(str(tmp_path / "t")),
                             async_stager=stager)
        _scribble({**sd, "np": np.zeros(1)})
        fut.result(timeout=60)
        # A second save while nothing references the first snapshot reuses
        # the pool; one staged while the first is referenced never shares it.
        first = stager.stage({"a": torch.ones(1000)})
        second = stager.stage({"a": torch.full((1000,), 2.0)})
        assert torch.equal(first["a"], torch.ones(1000))
        assert torch.equal(second["a"], torch.full((1000,), 2.0))
    finally:
        stager.close()
    out = {"model": {k: torch.zeros_like(v) for k, v in expected["model"].items()},
           "step": 0, "lr": [0.0, 0.0]}
    dcp.load(out, storage_reader=dcp.FileSystemReader(str(tmp_path / "t")))
    for k, v in expected["model"].items():
        assert torch.equal(out["model"][k], v), k
    assert out["step"] == 12


def test_torch_async_save_with_dcpp_writer_and_default_stager(tmp_path):
    sd = {"w": torch.arange(100.0)}
    fut = dcp.async_save(sd, storage_writer=dcpp.torch.FileSystemWriter(str(tmp_path / "d")))
    fut.result(timeout=60)
    out = {"w": torch.zeros(100)}
    dcp.load(out, storage_reader=dcpp.torch.FileSystemReader(str(tmp_path / "d")))
    assert torch.equal(out["w"], torch.arange(100.0))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_memory_does_not_grow_across_saves(tmp_path):
    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    sd = {"w": np.ones(4 << 20, np.float32)}  # 16 MiB
    with dcpp.AsyncCheckpointer() as c:
        for i in range(3):
            c.save(sd, tmp_path / "r", sync_files=False).result()
        base = rss()
        for i in range(20):
            c.save(sd, tmp_path / "r", sync_files=False).result()
        grown = rss() - base
    assert grown < 8 << 20, f"RSS grew by {grown >> 20} MiB over 20 saves"
