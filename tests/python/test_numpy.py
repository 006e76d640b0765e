"""dcpp.save / dcpp.load / dcpp.read_metadata on numpy state dicts."""
import os

import numpy as np
import pytest

import dcpp

NUMPY_DTYPES = [
    np.float64, np.float32, np.float16, np.complex64, np.complex128,
    np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
]


def random_array(shape, dtype, seed=0):
    """Random bit patterns (NaNs and all) so any misplaced byte shows."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = rng.integers(0, 256, size=n, dtype=np.uint8)
    if dtype == np.bool_:
        raw = raw & 1
    return raw.view(dtype).reshape(shape)


def assert_same(a, b):
    assert isinstance(b, np.ndarray)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_numpy_dtype_round_trips(ckpt, dtype):
    a = random_array((5, 3), dtype)
    dcpp.save({"a": a, "scalar": random_array((), dtype, 1)}, ckpt)
    out = dcpp.load(ckpt)
    assert_same(a, out["a"])
    assert_same(random_array((), dtype, 1), out["scalar"])
    name = "bool" if dtype is np.bool_ else np.dtype(dtype).name
    assert dcpp.read_metadata(ckpt)["a"].dtype == name


def test_nested_state_and_plain_values_round_trip(ckpt):
    sd = {
        "model": {
            "w": random_array((4, 6), np.float32),
            "layers": [random_array((2,), np.int64, 3)],
        },
        "step": 1000,
        "lr": 0.125,
        "flag": True,
        "none": None,
        "name": "run-7 \u00e9\u4e2d",
        "blob": b"\x00\xffbytes",
        "history": [1, 2.5, "x", None],
        "pair": (3, "b"),
    }
    dcpp.save(sd, ckpt)
    out = dcpp.load(ckpt)
    assert_same(sd["model"]["w"], out["model"]["w"])
    assert_same(sd["model"]["layers"][0], out["model"]["layers"][0])
    for k in ("step", "lr", "flag", "none", "name", "blob", "history", "pair"):
        assert out[k] == sd[k] and type(out[k]) is type(sd[k]), k


def test_dict_keys_become_strings_as_in_dcp(ckpt):
    # DCP names entries by str(key) ("ids.1"), and load(path) rebuilds the
    # nesting from those names, as torch's _EmptyStateDictLoadPlanner does.
    dcpp.save({"ids": {1: "one", 2: np.arange(2)}}, ckpt)
    assert dcpp.read_metadata(ckpt).keys() == ["ids.1", "ids.2"]
    out = dcpp.load(ckpt)
    assert set(out["ids"]) == {"1", "2"} and out["ids"]["1"] == "one"
    # Loading in place keeps the caller's keys.
    target = {"ids": {1: None, 2: np.zeros(2, np.int64)}}
    dcpp.load(target, ckpt)
    assert target["ids"][1] == "one" and target["ids"][2].tolist() == [0, 1]


def test_load_in_place_fills_arrays_and_replaces_values(ckpt):
    saved = {"w": random_array((3, 4), np.float32), "step": 7, "cfg": {"name": "a"}}
    dcpp.save(saved, ckpt)
    w = np.zeros((3, 4), np.float32)
    target = {"w": w, "step": 0, "cfg": {"name": ""}}
    assert dcpp.load(target, ckpt) is None
    assert target["w"] is w  # filled in place, not replaced
    assert_same(saved["w"], w)
    assert target["step"] == 7 and target["cfg"] == {"name": "a"}


def test_non_contiguous_and_odd_layouts_save_their_logical_values(ckpt):
    base = random_array((6, 8), np.int32)
    sd = {
        "transposed": base.T,
        "sliced": base[::2, 1:7:3],
        "reversed": base[::-1],
        "big_endian": base.astype(">i4"),
        "fortran": np.asfortranarray(base),
        "read_only": np.frombuffer(base.tobytes(), dtype=np.int32).reshape(6, 8),
    }
    assert not sd["read_only"].flags.writeable
    dcpp.save(sd, ckpt)
    out = dcpp.load(ckpt)
    for k, v in sd.items():
        assert np.array_equal(out[k], v), k
        assert out[k].dtype == np.int32, k  # byte-swapped values come back native


def test_load_into_strided_and_byte_swapped_destinations(ckpt):
    src = random_array((4, 5), np.float64)
    dcpp.save({"a": src, "b": src, "c": src}, ckpt)
    big = np.zeros((8, 10), np.float64)
    view = big[::2, ::2]  # a strided window into a larger array
    swapped = np.zeros((4, 5), ">f8")
    reversed_ = np.zeros((4, 5), np.float64)[::-1]
    target = {"a": view, "b": swapped, "c": reversed_}
    dcpp.load(target, ckpt)
    assert np.array_equal(big[::2, ::2], src, equal_nan=True)
    assert big[1::2].sum() == 0 and big[:, 1::2].sum() == 0  # nothing outside the window
    assert np.array_equal(swapped, src, equal_nan=True)
    assert np.array_equal(reversed_, src, equal_nan=True)


def test_zero_size_and_zero_dim_arrays(ckpt):
    sd = {"empty": np.zeros((0, 3), np.float32), "scalar": np.array(2.5, np.float64)}
    dcpp.save(sd, ckpt)
    out = dcpp.load(ckpt)
    assert out["empty"].shape == (0, 3) and out["empty"].dtype == np.float32
    assert out["scalar"].shape == () and out["scalar"] == 2.5


def test_loaded_arrays_are_writable_and_independent(ckpt):
    dcpp.save({"a": np.arange(4, dtype=np.int64)}, ckpt)
    one, two = dcpp.load(ckpt), dcpp.load(ckpt)
    one["a"][0] = 100
    assert two["a"][0] == 0
    assert one["a"].flags.writeable


def test_load_keys_selects_entries(ckpt):
    dcpp.save({"model": {"w": np.ones(2), "b": np.zeros(2)}, "optim": {"step": 3}}, ckpt)
    out = dcpp.load(ckpt, keys=["model"])
    assert set(out) == {"model"} and set(out["model"]) == {"w", "b"}
    out = dcpp.load(ckpt, keys=["optim.step"])
    assert out == {"optim": {"step": 3}}


def test_sharded_tensor_saves_pieces_and_loads_any_layout(ckpt):
    full = random_array((6, 4), np.float32, 5)
    rows = dcpp.ShardedTensor(
        (6, 4), [dcpp.Shard(full[0:4], (0, 0)), dcpp.Shard(full[4:6], (4, 0))])
    dcpp.save({"w": rows}, ckpt)
    md = dcpp.read_metadata(ckpt)
    assert [c.offsets for c in md["w"].chunks] == [[0, 0], [4, 0]]
    assert md["w"].size == [6, 4]
    # Whole tensor.
    assert_same(full, dcpp.load(ckpt)["w"])
    # Columns instead of rows: each piece crosses both saved chunks.
    left, right = np.zeros((6, 1), np.float32), np.zeros((6, 3), np.float32)
    cols = dcpp.ShardedTensor((6, 4), [dcpp.Shard(left, (0, 0)), dcpp.Shard(right, (0, 1))])
    target = {"w": cols}
    dcpp.load(target, ckpt)
    assert target["w"] is cols
    assert_same(full[:, 0:1], left)
    assert_same(full[:, 1:4], right)


@pytest.mark.parametrize("options", [
    dict(thread_count=3),
    dict(io_threads=3),
    dict(single_file_per_rank=False),
    dict(sync_files=False, checksums=False),
    dict(transforms=["stream.zstd/1"], compression_level=3),
    dict(transforms=["dcpp.byteshuffle/1", "stream.zstd/1"]),
], ids=["threads", "io_threads", "file_per_item", "nosync", "zstd", "shuffle_zstd"])
def test_save_options_round_trip(ckpt, options):
    sd = {f"t{i}": random_array((64, 17), np.float32, i) for i in range(5)}
    sd["v"] = {"x": 1}
    md = dcpp.save(sd, ckpt, **options)
    out = dcpp.load(ckpt)
    for k in range(5):
        assert_same(sd[f"t{k}"], out[f"t{k}"])
    assert out["v"] == {"x": 1}
    files = [f for f in os.listdir(ckpt) if f.endswith(".distcp")]
    if "thread_count" in options:
        assert len(files) == 3
    if options.get("single_file_per_rank") is False:
        assert len(files) == 6
    expected = options.get("transforms", [])[::-1]
    assert md["t0"].chunks[0].storage.transform_descriptors == expected


def test_zstd_compresses_compressible_data(ckpt, tmp_path):
    sd = {"z": np.zeros((256, 256), np.float32)}
    dcpp.save(sd, ckpt, transforms=["stream.zstd/1"])
    dcpp.save(sd, tmp_path / "plain")
    size = lambda d: sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    assert size(ckpt) * 10 < size(tmp_path / "plain")
    assert_same(sd["z"], dcpp.load(ckpt)["z"])


def test_overwrite_replaces_and_overwrite_false_refuses(ckpt):
    dcpp.save({"a": np.ones(3)}, ckpt)
    dcpp.save({"a": np.full(3, 2.0)}, ckpt)
    assert dcpp.load(ckpt)["a"].tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(FileExistsError) as e:
        dcpp.save({"a": np.zeros(3)}, ckpt, overwrite=False)
    assert isinstance(e.value, dcpp.AlreadyExistsError)
    assert dcpp.load(ckpt)["a"].tolist() == [2.0, 2.0, 2.0]


def test_progress_reports_bytes(ckpt, monkeypatch):
    events = []
    dcpp.save({"a": np.ones((100, 100))}, ckpt, progress=lambda *e: events.append(e))
    assert events, "no progress reported"
    phase, done, total, items_done, items_total = events[-1]
    assert isinstance(phase, str) and done == total and total >= 80000

    def failing(*_):
        raise RuntimeError("callback failed")

    # A failing callback cannot stop the load; Python reports it as unraisable.
    reported = []
    monkeypatch.setattr("sys.unraisablehook", reported.append)
    assert dcpp.load(ckpt, progress=failing)["a"].shape == (100, 100)
    assert reported and isinstance(reported[0].exc_value, RuntimeError)


def test_metadata_describes_the_checkpoint(ckpt):
    dcpp.save({"m": {"w": np.ones((2, 3), np.float16)}, "step": 5}, ckpt)
    md = dcpp.read_metadata(ckpt)
    assert md.keys() == ["m.w", "step"] and len(md) == 2 and "m.w" in md
    w, step = md["m.w"], md["step"]
    assert (w.kind, w.dtype, w.size, w.path) == ("tensor", "float16", [2, 3], ["m", "w"])
    assert (step.kind, step.dtype, step.chunks) == ("bytes", None, [])
    assert step.storage.relative_path.endswith(".distcp") and step.storage.length > 0
    assert md.version == "1.0.0"
    with pytest.raises(KeyError):
        md["missing"]


def test_opaque_values_survive_without_unpickling(ckpt, tmp_path):
    # An Opaque's bytes are written back verbatim, whatever they hold.
    blob = dcpp.Opaque(b"not really a pickle", "test blob")
    dcpp.save({"o": blob}, ckpt)
    md = dcpp.read_metadata(ckpt)
    raw = open(os.path.join(ckpt, md["o"].storage.relative_path), "rb").read()
    s = md["o"].storage
    assert raw[s.offset:s.offset + s.length] == b"not really a pickle"


def test_pathlike_and_str_paths(ckpt):
    dcpp.save({"a": np.ones(1)}, str(ckpt))
    assert dcpp.load(ckpt)["a"][0] == 1.0
    assert dcpp.load(os.fspath(ckpt))["a"][0] == 1.0
