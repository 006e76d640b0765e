"""dcpp.torch.FileSystemReader reads .metadata with dcpp's safe decoder, never
pickle.load: what it builds equals torch's unpickled Metadata field by field,
a hostile .metadata runs nothing, and malformed chunk lists are refused where
dcpp.load refuses them."""
import builtins
import collections
import dataclasses
import io
import os
import pathlib
import pickle
import shlex

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._extension import ZStandard
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

import dcpp
import dcpp.torch as dtorch
from dcpp import _torch_metadata
from test_torch_storage import assert_state_equal, failures, random_tensor, zeros_like

# Every dtype torch's DCP saves and loads that dcpp has (complex32 and
# float4_e2m1fn_x2 it lacks: see test_dtypes_dcpp_lacks_are_refused_clearly).
DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64,
    torch.complex128, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
    torch.uint16, torch.uint32, torch.uint64, torch.bool, torch.float8_e4m3fn,
    torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu,
]


def assert_same(a, b, where="metadata"):
    """a and b are equal and of the same types all the way down: dataclasses
    compared attribute by attribute (including MetadataIndex.index, which ==
    ignores, and attributes absent from an instance), dicts in key order."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        assert vars(a).keys() == vars(b).keys(), f"{where}: {vars(a).keys()} != {vars(b).keys()}"
        for k in vars(a):
            assert_same(vars(a)[k], vars(b)[k], f"{where}.{k}")
    elif isinstance(a, dict):
        assert len(a) == len(b), where
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            assert_same(ka, kb, f"{where} key {ka!r}")
            assert_same(va, vb, f"{where}[{ka!r}]")
    elif isinstance(a, (list, tuple)):  # torch.Size too
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def check_decodes_like_pickle(path):
    """dcpp's Metadata for `path`/.metadata equals pickle.load's, field by field."""
    raw = (pathlib.Path(path) / ".metadata").read_bytes()
    expected = pickle.loads(raw)
    got, tilings = _torch_metadata.decode(raw, "test")
    assert tilings == {}
    assert got == expected
    assert_same(got, expected)
    # And through the readers (each stamps its own load_id).
    ours, theirs = dtorch.FileSystemReader(path), dcp.FileSystemReader(path)
    ours.load_id = theirs.load_id = "same"
    assert_same(ours.read_metadata(), theirs.read_metadata())


def value_state():
    """Values of every kind torch writes as BYTE_IO, and odd-shaped tensors."""
    return {
        "scalars": {"int": 7, "big": 2**70, "float": -0.25, "bool": True, "none": None},
        "text": {"str": "ünï\u2603", "bytes": b"\x00\xff", "list": [1, "a", [2.5]],
                 "tuple": (1, (2, 3)), "dict": {"k": {"n": 1}}, "size": torch.Size([2, 3])},
        "t0": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "empty3": torch.zeros(2, 0, 4, dtype=torch.int16),
        "transposed": random_tensor((5, 7), torch.float32, 1).t(),
        "grad": torch.ones(3, requires_grad=True),
        "layers": [random_tensor((3, 3), torch.bfloat16, 2), {"inner": torch.arange(4)}],
    }


def dtype_state():
    return {f"d.{str(d).split('.')[1]}": random_tensor((3, 5), d, i) for i, d in enumerate(DTYPES)}


CASES = {
    "values": (value_state, {}),
    "dtypes": (dtype_state, {}),
    "threads": (dtype_state, {"thread_count": 3}),
    "file_per_item": (value_state, {"single_file_per_rank": False}),
    "zstd": (lambda: {**value_state(), **dtype_state()}, {"_extensions": [ZStandard()]}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_written_metadata_decodes_like_pickle_and_loads_exactly(ckpt, case):
    make, kwargs = CASES[case]
    sd = make()
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(ckpt, **kwargs))
    md = pickle.loads((ckpt / ".metadata").read_bytes())
    assert md.planner_data and md.storage_meta.checkpoint_id  # what is compared is there
    check_decodes_like_pickle(ckpt)
    out = zeros_like(sd)
    dcp.load(out, storage_reader=dtorch.FileSystemReader(ckpt))
    assert_state_equal(sd, out)


def test_sharded_torch_checkpoint_decodes_like_pickle(tmp_path):
    # Three real ranks save DTensors sharded by rows (chunks per rank, some
    # empty), zstd-compressed (tests/python/dist_workers.py).
    from test_distributed import launch, pytestmark as needs_gloo

    if needs_gloo.args[0]:
        pytest.skip(needs_gloo.kwargs["reason"])
    ckpt = tmp_path / "ckpt"
    launch(tmp_path, "save", "torch", 3, ckpt, "--zstd")
    md = pickle.loads((ckpt / ".metadata").read_bytes())
    assert max(len(m.chunks) for m in md.state_dict_metadata.values()
               if isinstance(m, TensorStorageMetadata)) == 3
    check_decodes_like_pickle(ckpt)


def handmade_metadata(**changes):
    """A Metadata using the fields torch's writer leaves at their defaults."""
    props = TensorProperties(dtype=torch.float16, layout=torch.strided, requires_grad=True,
                             memory_format=torch.channels_last, pin_memory=True)
    chunks = [ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([2, 3])),
              ChunkStorageMetadata(torch.Size([2, 0]), torch.Size([2, 3]))]
    md = Metadata(
        state_dict_metadata={
            "w": TensorStorageMetadata(props, torch.Size([4, 3]), chunks),
            "p": TensorStorageMetadata(
                TensorProperties(torch.int8, memory_format=torch.preserve_format),
                torch.Size([]), [ChunkStorageMetadata(torch.Size([]), torch.Size([]))]),
            "v": BytesStorageMetadata(),
        },
        planner_data=collections.OrderedDict(w=("w",), p=("p", 0), v=("v",)),
        storage_data={
            MetadataIndex("w", [0, 0], 0): _StorageInfo("__0_0.distcp", 0, 10),
            MetadataIndex("w", [2, 0], 1): _StorageInfo("__1_0.distcp", 5, 7, ["stream.zstd/1"]),
            MetadataIndex("p", []): _StorageInfo("__0_0.distcp", 10, 3),
            MetadataIndex("v"): _StorageInfo("__0_0.distcp", 13, 3),
        },
        storage_meta=StorageMeta(checkpoint_id="/some/where", save_id="s", modules=["m1", "m2"]),
        version="1.0.0",
    )
    for k, v in changes.items():
        setattr(md, k, v)
    return md


VARIANTS = {
    "all_fields": {},
    "path_id": {"storage_meta": StorageMeta(checkpoint_id=pathlib.PurePosixPath("/a/b"))},
    "no_storage_meta": {"storage_meta": None},
    "no_planner_data": {"planner_data": None, "version": None},
}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_handmade_metadata_decodes_like_pickle(variant, protocol):
    md = handmade_metadata(**VARIANTS[variant])
    raw = pickle.dumps(md, protocol=protocol)
    got, _ = _torch_metadata.decode(raw, "test")
    assert_same(got, pickle.loads(raw))
    assert got.state_dict_metadata["w"].properties.memory_format == torch.channels_last


def test_metadata_of_older_torch_without_later_fields_decodes_like_pickle():
    # Older torch wrote no version, no transform_descriptors and
    # MetadataIndex without index; the instances lack those attributes.
    md = handmade_metadata()
    del md.__dict__["version"]
    for key in list(md.storage_data):
        object.__delattr__(key, "index")
    raw = pickle.dumps(md, protocol=2)
    got, _ = _torch_metadata.decode(raw, "test")
    assert_same(got, pickle.loads(raw))
    assert "version" not in vars(got) and got.version is None


def test_dtypes_dcpp_lacks_are_refused_clearly(ckpt):
    dcp.save({"c": torch.zeros(4, dtype=torch.complex32)},
             storage_writer=dcp.FileSystemWriter(ckpt))
    with pytest.raises(dcpp.UnimplementedError, match="'c'.*complex32"):
        dtorch.FileSystemReader(ckpt).read_metadata()


# --- hostile .metadata --------------------------------------------------------


class Exec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


class System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def hostile_payloads(marker):
    return {
        "exec_at_root": pickle.dumps(Exec(marker)),
        "system_at_root_protocol0": pickle.dumps(System(marker), protocol=0),
        "system_in_planner_data": pickle.dumps(handmade_metadata(planner_data=System(marker))),
        "exec_as_checkpoint_id": pickle.dumps(
            handmade_metadata(storage_meta=StorageMeta(checkpoint_id=Exec(marker)))),
        "exec_as_dict_key": pickle.dumps(
            handmade_metadata(planner_data={Exec(marker): 1}), protocol=2),
    }


class CallClass:
    """Unpickles as StorageMeta("x"): a call of an allowed class, which
    torch's pickles only ever create empty."""

    def __reduce__(self):
        return StorageMeta, ("x",)


def with_extra_field(value):
    # The decoder ignores state keys it does not know; the objects built
    # from them are still held to the same rules.
    md = handmade_metadata()
    md.__dict__["extra"] = value
    return pickle.dumps(md, protocol=2)


def self_containing_list():
    loop = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize("value,problem", [
    (CallClass(), "cannot call .*StorageMeta"),
    (self_containing_list(), "contains itself"),
    (eval("[" * 150 + "]" * 150), "nested more than 100 deep"),
], ids=["class_called", "cycle", "deep"])
def test_objects_outside_torchs_use_of_the_classes_are_refused(value, problem):
    with pytest.raises(dcpp.CorruptCheckpointError, match=problem):
        _torch_metadata.decode(with_extra_field(value), "test")


def test_unknown_fields_are_left_out():
    got, _ = _torch_metadata.decode(with_extra_field({"a": [1, 2]}), "test")
    assert "extra" not in vars(got)
    assert got == pickle.loads(pickle.dumps(handmade_metadata()))


def test_hostile_payloads_do_run_under_pickle(tmp_path):
    # The payloads are live: unpickling them creates the marker.
    for name, payload in hostile_payloads(tmp_path / "marker").items():
        try:
            pickle.loads(payload)
        except Exception:
            pass  # exec returns None where a key or id was expected; it ran anyway
        assert (tmp_path / "marker").exists(), name
        (tmp_path / "marker").unlink()


@pytest.mark.parametrize("name", sorted(hostile_payloads("m")))
def test_hostile_metadata_runs_nothing_through_the_reader(tmp_path, name):
    marker = tmp_path / "marker"
    ckpt = tmp_path / "ckpt"
    dcp.save({"w": torch.ones(3)}, storage_writer=dcp.FileSystemWriter(ckpt))
    (ckpt / ".metadata").write_bytes(hostile_payloads(marker)[name])
    with pytest.raises(dcpp.CorruptCheckpointError, match=r"\.metadata.*not allowed"):
        dtorch.FileSystemReader(ckpt).read_metadata()
    with pytest.raises(CheckpointException, match="not allowed"):
        dcp.load({"w": torch.zeros(3)}, storage_reader=dtorch.FileSystemReader(ckpt))
    assert not marker.exists()


def test_metadata_that_is_not_a_regular_file_is_refused(ckpt):
    ckpt.mkdir()
    os.mkfifo(ckpt / ".metadata")  # would block a reader that opens it
    with pytest.raises(dcpp.CorruptCheckpointError, match="not a regular file"):
        dtorch.FileSystemReader(ckpt).read_metadata()


# --- malformed chunk lists ------------------------------------------------------


def with_chunks(ckpt, fqn, boxes):
    """Rewrites `fqn`'s chunk list in ckpt/.metadata to `boxes` ((offsets,
    sizes) pairs), every chunk's storage record the original chunk's."""
    path = ckpt / ".metadata"
    md = pickle.loads(path.read_bytes())
    (old_key,) = [k for k in md.storage_data if k.fqn == fqn]
    info = md.storage_data.pop(old_key)
    md.state_dict_metadata[fqn].chunks = [
        ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in boxes]
    for i, (o, _) in enumerate(boxes):
        md.storage_data[MetadataIndex(fqn, o, i)] = info
    path.write_bytes(pickle.dumps(md))


MALFORMED = {
    # refused when the metadata is read
    "wrong_rank": ([((0,), (12,))], "read"),
    "beyond_the_tensor": ([((0, 0), (5, 3))], "read"),
    "negative_offset": ([((-1, 0), (4, 3))], "read"),
    # refused when the tensor is loaded
    "gap": ([((0, 0), (2, 3))], "load"),
    "overlap": ([((0, 0), (4, 3)), ((1, 0), (2, 3))], "load"),
    "overlap_hiding_a_gap": ([((0, 0), (2, 3)), ((1, 0), (2, 3))], "load"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_chunk_lists_are_refused_as_dcpp_load_refuses_them(ckpt, case):
    boxes, when = MALFORMED[case]
    sd = {"w": random_tensor((4, 3), torch.float32, 0), "ok": torch.arange(5)}
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(ckpt))
    with_chunks(ckpt, "w", boxes)

    # dcpp.load refuses the tensor ...
    with pytest.raises(dcpp.CorruptCheckpointError, match="'w'"):
        dcpp.load({"w": torch.zeros(4, 3), "ok": torch.zeros(5, dtype=torch.long)}, ckpt)
    # ... and so does the drop-in reader, whose torch planner would otherwise
    # load it silently wrong (torch's own reader does).
    reader = dtorch.FileSystemReader(ckpt)
    if when == "read":
        with pytest.raises(dcpp.CorruptCheckpointError, match="'w'"):
            reader.read_metadata()
        return
    reader.read_metadata()
    with pytest.raises(CheckpointException) as e:
        dcp.load({"w": torch.zeros(4, 3), "ok": torch.zeros(5, dtype=torch.long)},
                 storage_reader=reader)
    (err,) = failures(e.value)
    assert isinstance(err, dcpp.CorruptCheckpointError) and "'w'" in str(err)
    # Where only other entries are loaded, the checkpoint still serves them,
    # as dcpp.load does.
    out = {"ok": torch.zeros(5, dtype=torch.long)}
    dcp.load(out, storage_reader=dtorch.FileSystemReader(ckpt))
    assert torch.equal(out["ok"], sd["ok"])
    out = {"ok": torch.zeros(5, dtype=torch.long)}
    dcpp.load(out, ckpt, allow_partial_load=True)
    assert torch.equal(torch.as_tensor(out["ok"]), sd["ok"])
