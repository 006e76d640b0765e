"""Bad paths, corrupted files and bad arguments raise the mapped exceptions."""
import os
import pickle

import numpy as np
import pytest

import dcpp


@pytest.fixture
def saved(ckpt):
    dcpp.save({"a": np.arange(100, dtype=np.float32), "v": {"k": 1}}, ckpt)
    return ckpt


def data_file(path):
    md = dcpp.read_metadata(path)
    return os.path.join(path, md["a"].chunks[0].storage.relative_path), md


def test_exception_classes_are_dcpp_errors_and_builtins():
    pairs = {
        dcpp.NotFoundError: FileNotFoundError,
        dcpp.AlreadyExistsError: FileExistsError,
        dcpp.CorruptCheckpointError: ValueError,
        dcpp.InvalidArgumentError: ValueError,
        dcpp.ResourceExhaustedError: MemoryError,
        dcpp.UnimplementedError: NotImplementedError,
        dcpp.PermissionDeniedError: PermissionError,
        dcpp.DeadlineExceededError: TimeoutError,
    }
    for cls, builtin in pairs.items():
        assert issubclass(cls, dcpp.DcppError) and issubclass(cls, builtin), cls
        assert cls.__module__ == "dcpp"
    assert issubclass(dcpp.AbortedError, dcpp.DcppError)
    assert issubclass(dcpp.InternalError, dcpp.DcppError)
    assert not issubclass(dcpp.CorruptCheckpointError, OSError)


def test_missing_checkpoint_is_file_not_found(tmp_path):
    missing = tmp_path / "nope"
    for call in (lambda: dcpp.load(missing), lambda: dcpp.read_metadata(missing),
                 lambda: dcpp.load({"a": np.zeros(1)}, missing)):
        with pytest.raises(FileNotFoundError, match="nope") as e:
            call()
        assert isinstance(e.value, dcpp.NotFoundError) and e.value.code == "NOT_FOUND"


def test_directory_without_metadata_is_not_a_checkpoint(tmp_path):
    (tmp_path / "__0_0.distcp").write_bytes(b"leftover from a failed save")
    with pytest.raises(dcpp.NotFoundError, match=r"\.metadata"):
        dcpp.load(tmp_path)


def test_missing_data_file(saved):
    path, _ = data_file(saved)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="distcp"):
        dcpp.load(saved)


def test_truncated_data_file_is_corrupt(saved):
    path, _ = data_file(saved)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])
    with pytest.raises(dcpp.CorruptCheckpointError, match="truncated") as e:
        dcpp.load(saved)
    assert isinstance(e.value, ValueError) and e.value.code == "DATA_LOSS"


def test_damaged_tensor_archive_is_corrupt_and_named(saved):
    path, md = data_file(saved)
    s = md["a"].chunks[0].storage
    raw = bytearray(open(path, "rb").read())
    raw[s.offset:s.offset + 4] = b"XXXX"  # the zip local header signature
    open(path, "wb").write(raw)
    with pytest.raises(dcpp.CorruptCheckpointError, match="'a'"):
        dcpp.load(saved)
    with pytest.raises(dcpp.CorruptCheckpointError):
        dcpp.load({"a": np.zeros(100, np.float32), "v": {"k": 0}}, saved)


def test_damaged_pickled_value_is_corrupt(saved):
    md = dcpp.read_metadata(saved)
    s = md["v.k"].storage
    path = os.path.join(saved, s.relative_path)
    raw = bytearray(open(path, "rb").read())
    raw[s.offset:s.offset + s.length] = b"\x00" * s.length
    open(path, "wb").write(raw)
    with pytest.raises(dcpp.CorruptCheckpointError, match="v.k"):
        dcpp.load(saved)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_metadata_is_corrupt(saved, damage):
    path = os.path.join(saved, ".metadata")
    raw = open(path, "rb").read()
    new = {"truncate": raw[: len(raw) // 2], "garbage": b"\x80\x02garbage", "empty": b""}[damage]
    open(path, "wb").write(new)
    with pytest.raises(dcpp.CorruptCheckpointError):
        dcpp.read_metadata(saved)
    with pytest.raises(dcpp.CorruptCheckpointError):
        dcpp.load(saved)


def test_corrupt_zstd_stream(ckpt):
    dcpp.save({"a": np.zeros(10000, np.float32)}, ckpt, transforms=["stream.zstd/1"])
    path, md = data_file(ckpt)
    s = md["a"].chunks[0].storage
    raw = bytearray(open(path, "rb").read())
    for i in range(s.offset + 4, s.offset + s.length):
        raw[i] ^= 0x5A
    open(path, "wb").write(raw)
    with pytest.raises(dcpp.CorruptCheckpointError):
        dcpp.load(ckpt)


def test_mismatched_destinations_are_invalid_arguments(saved):
    with pytest.raises(dcpp.InvalidArgumentError, match="dtype"):
        dcpp.load({"a": np.zeros(100, np.float64)}, saved, allow_partial_load=True)
    with pytest.raises(ValueError, match="shape"):
        dcpp.load({"a": np.zeros(10, np.float32)}, saved, allow_partial_load=True)
    with pytest.raises(ValueError, match="read-only"):
        dcpp.load({"a": np.frombuffer(bytes(400), np.float32)}, saved, allow_partial_load=True)


def test_missing_keys_are_not_found_unless_partial(saved):
    with pytest.raises(dcpp.NotFoundError, match="'b'"):
        dcpp.load({"b": np.zeros(3)}, saved)
    b = np.full(3, 9.0)
    sd = {"a": np.zeros(100, np.float32), "b": b}
    dcpp.load(sd, saved, allow_partial_load=True)
    assert sd["a"][99] == 99 and b.tolist() == [9.0] * 3


def test_unknown_transform_is_invalid(ckpt):
    with pytest.raises(dcpp.InvalidArgumentError, match="stream.zstd/1"):
        dcpp.save({"a": np.zeros(1)}, ckpt, transforms=["nope/1"])
    assert not os.path.exists(os.path.join(ckpt, ".metadata"))


def test_bad_arguments_raise_type_and_value_errors(ckpt):
    with pytest.raises(TypeError, match="dict"):
        dcpp.save([np.zeros(1)], ckpt)
    with pytest.raises(TypeError, match="path"):
        dcpp.save({}, 42)
    with pytest.raises(ValueError, match="thread_count"):
        dcpp.save({}, ckpt, thread_count=0)
    with pytest.raises(ValueError, match="io_threads"):
        dcpp.save({}, ckpt, io_threads=-1)
    with pytest.raises(TypeError, match="transforms"):
        dcpp.save({}, ckpt, transforms="stream.zstd/1")
    with pytest.raises(ValueError, match="tensors"):
        dcpp.load(ckpt, tensors="jax")
    with pytest.raises(TypeError, match="needs a path"):
        dcpp.load({})
    with pytest.raises(TypeError, match=r"state_dict\['x'\].*longdouble|float128"):
        dcpp.save({"x": np.zeros(2, np.longdouble)}, ckpt)
    with pytest.raises(TypeError, match="dict keys"):
        dcpp.save({"x": {object(): 1}}, ckpt)


def test_exceptions_pickle_for_torch_distributed(tmp_path):
    # torch gathers per-rank exceptions by pickling them.
    with pytest.raises(dcpp.NotFoundError) as e:
        dcpp.load(tmp_path / "missing")
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is dcpp.NotFoundError and str(again) == str(e.value)
