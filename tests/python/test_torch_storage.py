"""dcpp.torch.FileSystemWriter / FileSystemReader under torch's own dcp.save,
dcp.load and dcp.async_save, in one process (the multi-process runs are in
test_distributed.py)."""
import io
import os
import pickle
import re

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._extension import ZStandard
from torch.distributed.checkpoint.api import CheckpointException

import dcpp
import dcpp.torch as dtorch


def random_tensor(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    n = int(np.prod(shape)) * dtype.itemsize
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).view(dtype).reshape(shape)


def state(seed=0):
    return {
        "model": {
            "w": random_tensor((33, 17), torch.float32, seed),
            "e": random_tensor((9, 4), torch.bfloat16, seed + 1),
            "f8": random_tensor((5,), torch.float8_e4m3fn, seed + 2),
            "ids": torch.arange(7),
            "layers": [random_tensor((3, 3), torch.float16, seed + 3), "tag"],
        },
        "optim": {"step": 12, "lr": 0.5, "betas": (0.9, 0.99)},
        "scalar": torch.tensor(2.5),
    }


def zeros_like(sd):
    if isinstance(sd, dict):
        return {k: zeros_like(v) for k, v in sd.items()}
    if isinstance(sd, list):
        return [zeros_like(v) for v in sd]
    if isinstance(sd, torch.Tensor):
        return torch.zeros_like(sd)
    return None


def assert_state_equal(expected, got):
    if isinstance(expected, dict):
        assert set(expected) == set(got)
        for k in expected:
            assert_state_equal(expected[k], got[k])
    elif isinstance(expected, list):
        assert len(expected) == len(got)
        for a, b in zip(expected, got):
            assert_state_equal(a, b)
    elif isinstance(expected, torch.Tensor):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got.reshape(-1).view(torch.uint8),
                           expected.reshape(-1).view(torch.uint8))
    else:
        assert got == expected


WRITERS = {
    "torch": lambda p, **kw: dcp.FileSystemWriter(p, **kw),
    "dcpp": lambda p, **kw: dtorch.FileSystemWriter(p, **kw),
}
READERS = {
    "torch": lambda p, **kw: dcp.FileSystemReader(p, **kw),
    "dcpp": lambda p, **kw: dtorch.FileSystemReader(p, **kw),
}


@pytest.mark.parametrize("writer", ["dcpp", "torch"])
@pytest.mark.parametrize("reader", ["dcpp", "torch"])
@pytest.mark.parametrize("threads", [1, 3])
def test_dcp_round_trips_across_writers_and_readers(ckpt, writer, reader, threads):
    sd = state()
    dcp.save(sd, storage_writer=WRITERS[writer](ckpt, thread_count=threads))
    out = zeros_like(sd)
    dcp.load(out, storage_reader=READERS[reader](ckpt))
    assert_state_equal(sd, out)


def untagged(name):
    """A dcpp data file name without its save tag: __0_1.5f3a09c2.distcp -> __0_1.distcp."""
    return re.sub(r"\.[0-9a-f]{8}\.distcp$", ".distcp", name)


def test_same_files_and_entries_as_torchs_writer(tmp_path):
    sd = state()
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(tmp_path / "t", thread_count=3))
    dcp.save(sd, storage_writer=dtorch.FileSystemWriter(tmp_path / "d", thread_count=3))
    # The same files, but for the save tag in dcpp's names, its lock file and
    # its sidecar checksum file.
    dcpp_files = sorted(untagged(f) for f in os.listdir(tmp_path / "d")
                        if f != ".dcpp.lock" and not f.startswith(".checksums."))
    assert sorted(os.listdir(tmp_path / "t")) == dcpp_files
    mt = pickle.load(open(tmp_path / "t" / ".metadata", "rb"))
    md = pickle.load(open(tmp_path / "d" / ".metadata", "rb"))
    assert mt.state_dict_metadata == md.state_dict_metadata
    # Each item lands in the same file, in the same order within it.
    def placement(m):
        by_file = {}
        for idx, info in sorted(m.storage_data.items(), key=lambda kv: kv[1].offset):
            by_file.setdefault(untagged(info.relative_path), []).append(idx.fqn)
        return by_file
    assert placement(mt) == placement(md)
    assert type(next(iter(md.storage_data.values()))).__name__ == "_StorageInfo"
    assert md.version == "1.0.0" and md.storage_meta.save_id


@pytest.mark.parametrize("thread_count,io_threads", [(1, 1), (1, 4), (2, 3)])
def test_io_threads_change_nothing_on_disk(tmp_path, thread_count, io_threads):
    # Several threads filling one file write the very bytes one thread writes.
    sd = state()
    sd["model"]["big"] = random_tensor((300, 300), torch.float32, 9)  # above 64 KiB
    paths = {}
    for n in (1, io_threads):
        paths[n] = tmp_path / f"io{n}"
        dcp.save(sd, storage_writer=dtorch.FileSystemWriter(
            paths[n], thread_count=thread_count, io_threads=n))
    def data_files(path):  # untagged name -> path
        return {untagged(f): path / f for f in os.listdir(path) if f.endswith(".distcp")}
    one, many = data_files(paths[1]), data_files(paths[io_threads])
    assert len(one) == thread_count and sorted(one) == sorted(many)
    for name in one:
        assert one[name].read_bytes() == many[name].read_bytes()
    out = zeros_like(sd)
    dcp.load(out, storage_reader=dcp.FileSystemReader(paths[io_threads]))
    assert_state_equal(sd, out)


def test_one_file_per_item(ckpt):
    sd = state()
    dcp.save(sd, storage_writer=dtorch.FileSystemWriter(ckpt, single_file_per_rank=False))
    n_items = len(dcpp.read_metadata(ckpt).keys()) + 0
    files = [f for f in os.listdir(ckpt) if f.endswith(".distcp")]
    assert len(files) == n_items
    out = zeros_like(sd)
    dcp.load(out, storage_reader=dcp.FileSystemReader(ckpt))
    assert_state_equal(sd, out)


@pytest.mark.parametrize("how", ["transforms", "extensions"])
def test_zstd_written_by_dcpp_reads_with_torch(ckpt, how):
    sd = {"z": torch.zeros(256, 256), "r": random_tensor((64,), torch.float32, 3), "v": [1, 2]}
    if how == "transforms":
        kw = {"transforms": ["stream.zstd/1"]}
    else:
        kw = {"_extensions": [ZStandard()]}
    dcp.save(sd, storage_writer=dtorch.FileSystemWriter(ckpt, **kw))
    (data_file,) = [f for f in os.listdir(ckpt) if f.endswith(".distcp")]
    assert os.path.getsize(ckpt / data_file) < 256 * 256 * 4 // 20
    md = pickle.load(open(ckpt / ".metadata", "rb"))
    descriptors = {tuple(i.transform_descriptors) for i in md.storage_data.values()}
    assert descriptors == {("stream.zstd/1",)}
    out = zeros_like(sd)
    dcp.load(out, storage_reader=dcp.FileSystemReader(ckpt))
    assert_state_equal(sd, out)


def test_zstd_written_by_torch_reads_with_dcpp(ckpt):
    sd = state()
    # Above 1 MiB, dcpp decodes a compressed chunk as it reads it, routing
    # torch's archive into the targets without holding it.
    sd["model"]["big"] = random_tensor((700, 600), torch.float32, 5)
    sd["model"]["big_t"] = random_tensor((600, 700), torch.bfloat16, 6).t()  # kept transposed
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(ckpt, _extensions=[ZStandard()]))
    out = zeros_like(sd)
    dcp.load(out, storage_reader=dtorch.FileSystemReader(ckpt))
    assert_state_equal(sd, out)
    # And into column shards of them, as a resharded load asks.
    big = torch.zeros(700, 200)
    big_t = torch.zeros(100, 600, dtype=torch.bfloat16)
    dcpp.load({"model": {"big": dcpp.ShardedTensor([700, 600], [dcpp.Shard(big, [0, 300])]),
                         "big_t": dcpp.ShardedTensor([700, 600], [dcpp.Shard(big_t, [550, 0])])}},
              ckpt, allow_partial_load=True)
    assert torch.equal(big.view(torch.int32), sd["model"]["big"][:, 300:500].view(torch.int32))
    assert torch.equal(big_t.view(torch.int16), sd["model"]["big_t"][550:650].view(torch.int16))


def test_byteshuffle_zstd_reads_with_stock_torch_through_the_registry(ckpt):
    sd = state()
    dcp.save(sd, storage_writer=dtorch.FileSystemWriter(
        ckpt, transforms=["dcpp.byteshuffle/1", "stream.zstd/1"]))
    with pytest.raises(CheckpointException, match="dcpp.byteshuffle"):
        dcp.load(zeros_like(sd), storage_reader=dcp.FileSystemReader(ckpt))
    out = zeros_like(sd)
    reader = dcp.FileSystemReader(ckpt, _extension_registry=dtorch.extension_registry())
    dcp.load(out, storage_reader=reader)
    assert_state_equal(sd, out)


def test_reader_converts_dtypes_like_torchs(ckpt):
    w = torch.randn(6, 5)
    dcp.save({"w": w}, storage_writer=dtorch.FileSystemWriter(ckpt))
    for reader in (dcp.FileSystemReader(ckpt), dtorch.FileSystemReader(ckpt)):
        out = {"w": torch.zeros(6, 5, dtype=torch.bfloat16)}
        dcp.load(out, storage_reader=reader)
        assert torch.equal(out["w"], w.to(torch.bfloat16))


def test_reader_fills_views_in_place(ckpt):
    w = torch.randn(4, 6)
    dcp.save({"w": w}, storage_writer=dtorch.FileSystemWriter(ckpt))
    big = torch.zeros(6, 4)
    out = {"w": big.t()[:, :]}  # a transposed (non-contiguous) destination
    dcp.load(out, storage_reader=dtorch.FileSystemReader(ckpt))
    assert torch.equal(big.t(), w)


def test_async_save_with_dcpp_writer(ckpt):
    sd = state()
    future = dcp.async_save(sd, storage_writer=dtorch.FileSystemWriter(ckpt))
    future.result()
    out = zeros_like(sd)
    dcp.load(out, storage_reader=dcp.FileSystemReader(ckpt))
    assert_state_equal(sd, out)


def test_overwrite(ckpt):
    dcp.save({"a": torch.ones(3)}, storage_writer=dtorch.FileSystemWriter(ckpt))
    dcp.save({"a": torch.full((3,), 2.0)}, storage_writer=dtorch.FileSystemWriter(ckpt))
    out = {"a": torch.zeros(3)}
    dcp.load(out, storage_reader=dtorch.FileSystemReader(ckpt))
    assert out["a"].tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(CheckpointException) as e:
        writer = dtorch.FileSystemWriter(ckpt, overwrite=False)
        dcp.save({"a": torch.zeros(3)}, storage_writer=writer)
    assert "AlreadyExistsError" in str(e.value)


def failures(exc):
    """The per-rank exceptions inside torch's CheckpointException."""
    return [f[0] if isinstance(f, tuple) else f for f in exc.failures.values()]


def test_corrupt_data_raises_mapped_exception_inside_checkpoint_exception(ckpt):
    sd = {"w": torch.randn(100)}
    dcp.save(sd, storage_writer=dtorch.FileSystemWriter(ckpt))
    (path,) = ckpt.glob("__0_0.*.distcp")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointException) as e:
        dcp.load({"w": torch.zeros(100)}, storage_reader=dtorch.FileSystemReader(ckpt))
    (err,) = failures(e.value)
    assert isinstance(err, dcpp.CorruptCheckpointError) and "'w'" in str(err)


def test_reader_bad_metadata_and_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        dtorch.FileSystemReader(tmp_path / "missing").read_metadata()
    (tmp_path / ".metadata").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(dcpp.CorruptCheckpointError):
        dtorch.FileSystemReader(tmp_path).read_metadata()
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(dcpp.CorruptCheckpointError, match="expected an instance of .*Metadata"):
        dtorch.FileSystemReader(tmp_path).read_metadata()


def test_writer_rejects_bad_options(tmp_path):
    # (A ByteShuffle subclass with another descriptor is not dcpp's transform.)
    with pytest.raises(ValueError, match="thread_count"):
        dtorch.FileSystemWriter(tmp_path, thread_count=0)
    with pytest.raises(ValueError, match="io_threads"):
        dtorch.FileSystemWriter(tmp_path, io_threads=-1)
    with pytest.raises(ValueError, match="both"):
        dtorch.FileSystemWriter(tmp_path, transforms=[], _extensions=[])

    class Custom(dtorch.ByteShuffle):
        def get_descriptor(self):
            return "custom/1"

    with pytest.raises(ValueError, match="cannot apply"):
        dtorch.FileSystemWriter(tmp_path, _extensions=[Custom()])


def test_reader_falls_back_to_python_extensions(ckpt):
    # A transform only Python knows (registered by the caller) still loads.
    class Xor(dtorch.ByteShuffle):
        @staticmethod
        def registry_name():
            return "test.xor"

        @staticmethod
        def from_descriptor(version):
            return Xor()

        def get_descriptor(self):
            return "test.xor/1"

        def transform_to(self, output):
            class W(io.RawIOBase):
                def writable(self):
                    return True

                def write(self, b):
                    output.write(bytes(x ^ 0x33 for x in bytes(b)))
                    return len(b)

            return W()

        def transform_from(self, input):
            return io.BytesIO(bytes(x ^ 0x33 for x in input.read()))

    sd = {"w": torch.randn(5), "v": {"a": 1}}
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(ckpt, _extensions=[Xor()]))
    registry = dtorch.extension_registry()
    registry.register(Xor)
    out = {"w": torch.zeros(5), "v": {"a": 0}}
    dcp.load(out, storage_reader=dtorch.FileSystemReader(ckpt, _extension_registry=registry))
    assert torch.equal(out["w"], sd["w"]) and out["v"] == {"a": 1}
