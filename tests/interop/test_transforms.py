"""Stream transforms against real PyTorch: zstd checkpoints written by torch's
ZStandard extension load in dcpp and the other way round; dcpp's byte
shuffle composes with zstd; corrupted compressed data is a clear error."""
import os

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._extension import ZStandard

from conftest import run
from manifest import assert_same, read_manifest, write_manifest
from state_dicts import full_state_dict, zeros_like_state

ZSTD = "stream.zstd/1"
SHUFFLE = "dcpp.byteshuffle/1"


def weights_like_state(seed=0):
    """A state with a large bf16 weight (compressible like real weights: it
    goes through zstd's worker threads) next to the usual mix of dtypes."""
    sd = full_state_dict(seed=seed)
    g = torch.Generator().manual_seed(seed)
    sd["big"] = (torch.randn(2048, 4096, generator=g) * 0.02).to(torch.bfloat16)
    return sd


def dcpp_save(interop, sd, ckpt, tmp_path, transforms, thread_count=2):
    src = tmp_path / "manifest_in"
    write_manifest(sd, src)
    args = [interop, "save", src, ckpt, "--thread-count", thread_count]
    for t in transforms:
        args += ["--transform", t]
    run(args)


def stored_descriptors(ckpt):
    md = dcp.FileSystemReader(str(ckpt)).read_metadata()
    return {tuple(info.transform_descriptors or ()) for info in md.storage_data.values()}


def data_bytes(ckpt):
    return sum(os.path.getsize(ckpt / f) for f in os.listdir(ckpt) if f.endswith(".distcp"))


def test_torch_zstd_checkpoint_loads_in_dcpp(interop, tmp_path):
    sd = weights_like_state(seed=4)
    ckpt = tmp_path / "ckpt"
    writer = dcp.FileSystemWriter(str(ckpt), thread_count=2, _extensions=[ZStandard()])
    dcp.save(sd, storage_writer=writer, no_dist=True)
    assert stored_descriptors(ckpt) == {(ZSTD,)}
    out = tmp_path / "out"
    run([interop, "load-all", ckpt, out])
    assert_same(sd, read_manifest(out))


def test_dcpp_zstd_checkpoint_loads_in_torch(interop, tmp_path):
    sd = weights_like_state(seed=5)
    ckpt = tmp_path / "ckpt"
    dcpp_save(interop, sd, ckpt, tmp_path, [ZSTD])
    assert stored_descriptors(ckpt) == {(ZSTD,)}
    raw = sum(t.numel() * t.element_size() for t in sd.values() if isinstance(t, torch.Tensor))
    assert data_bytes(ckpt) < 0.9 * raw  # bf16 weights do compress
    loaded = zeros_like_state(sd)
    dcp.load(loaded, checkpoint_id=str(ckpt), no_dist=True)
    assert_same(sd, loaded)


def test_shuffle_composes_with_zstd(interop, tmp_path):
    sd = weights_like_state(seed=6)
    plain, shuffled = tmp_path / "zstd", tmp_path / "shuffle_zstd"
    dcpp_save(interop, sd, plain, tmp_path, [ZSTD])
    dcpp_save(interop, sd, shuffled, tmp_path, [SHUFFLE, ZSTD])
    # Recorded in the order a reader undoes them: zstd first, then the shuffle.
    assert stored_descriptors(shuffled) == {(ZSTD, SHUFFLE)}
    assert data_bytes(shuffled) < data_bytes(plain)
    out = tmp_path / "out"
    run([interop, "load-all", shuffled, out])
    assert_same(sd, read_manifest(out))
    # Stock torch does not know dcpp's shuffle and says so.
    with pytest.raises(BaseException) as failure:  # CheckpointException is a BaseException
        dcp.load(zeros_like_state(sd), checkpoint_id=str(shuffled), no_dist=True)
    # torch wraps the reader's ValueError in a CheckpointException.
    details = str(failure.value) + repr(getattr(failure.value, "failures", ""))
    assert "dcpp.byteshuffle" in details, details


def test_unknown_transform_is_refused_before_writing(interop, tmp_path):
    sd = full_state_dict(seed=7)
    src = tmp_path / "manifest_in"
    write_manifest(sd, src)
    ckpt = tmp_path / "ckpt"
    p = run([interop, "save", src, ckpt, "--transform", "stream.lz4/1"], expect_ok=False)
    assert p.returncode != 0
    assert "stream.lz4/1" in p.stderr and ZSTD in p.stderr, p.stderr
    assert not (ckpt / ".metadata").exists()


def test_corrupted_compressed_item_names_the_tensor(interop, tmp_path):
    sd = weights_like_state(seed=8)
    ckpt = tmp_path / "ckpt"
    dcpp_save(interop, sd, ckpt, tmp_path, [ZSTD], thread_count=1)
    md = dcp.FileSystemReader(str(ckpt)).read_metadata()
    [(index, info)] = [(i, s) for i, s in md.storage_data.items() if i.fqn == "big"]
    path = ckpt / info.relative_path
    data = bytearray(path.read_bytes())
    data[info.offset + info.length // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    p = run([interop, "load-all", ckpt, tmp_path / "out"], expect_ok=False)
    assert p.returncode != 0
    assert "'big'" in p.stderr and ZSTD in p.stderr, p.stderr
