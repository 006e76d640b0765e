"""Safetensors interop: files written by the safetensors package and by
torch's HuggingFaceStorageWriter load through dcpp, and what dcpp writes
loads through the package and torch's HuggingFaceStorageReader, byte for
byte identical to the package's own files."""
import json
import os
import subprocess
import sys

import pytest
import torch

safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import dcpp  # noqa: E402

HERE = os.path.dirname(__file__)

# Every dtype both torch and the package have.
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn,
          torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.uint16,
          torch.uint32, torch.uint64, torch.complex64]


def random_bits(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    raw = torch.randint(0, 256, (n * dtype.itemsize,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def every_dtype_state():
    sd = {}
    for i, d in enumerate(DTYPES):
        name = str(d).split(".")[-1]
        sd[f"t.{name}"] = random_bits((3, 5), d, i)
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 4)
    sd["layers.0.weight"] = torch.randn(17, 33)
    return sd


def bits(t):
    """Bytes of a tensor, for bit-exact comparison whatever the dtype."""
    t = t.contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_same(got, want):
    assert set(got) == set(want)
    for k, v in want.items():
        g = got[k]
        assert g.dtype == v.dtype, k
        assert tuple(g.shape) == tuple(v.shape), k
        assert bits(g) == bits(v), k


def test_package_file_loads_in_dcpp(tmp_path):
    sd = every_dtype_state()
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    for path in (tmp_path, tmp_path / "model.safetensors"):
        got = dcpp.load(path, tensors="torch")
        assert_same(got, sd)
    md = dcpp.read_metadata(tmp_path)
    assert list(md["layers.0.weight"].size) == [17, 33]


def test_dcpp_output_is_byte_identical_to_the_package(tmp_path):
    sd = every_dtype_state()
    dcpp.save(sd, tmp_path / "ours", format="safetensors")
    save_file(sd, tmp_path / "theirs.safetensors", metadata={"format": "pt"})
    ours = (tmp_path / "ours" / "model-00001-of-00001.safetensors").read_bytes()
    assert ours == (tmp_path / "theirs.safetensors").read_bytes()
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
    assert set(index["weight_map"]) == set(sd)


def test_dcpp_output_loads_in_the_package_and_torch(tmp_path):
    sd = every_dtype_state()
    nested = {"model": {"w": torch.randn(64, 32), "b": torch.randn(32)}, "head": torch.randn(5, 3)}
    dcpp.save(nested, tmp_path, format="safetensors", max_shard_size="8KiB")
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    loaded = {}
    for f in files:
        with safe_open(tmp_path / f, framework="pt") as h:
            assert h.metadata() == {"format": "pt"}
            for k in h.keys():
                assert index["weight_map"][k] == f
                loaded[k] = h.get_tensor(k)
    flat = {"model.w": nested["model"]["w"], "model.b": nested["model"]["b"],
            "head": nested["head"]}
    assert_same(loaded, flat)
    # torch's HuggingFaceStorageReader through dcp.load, into fresh tensors.
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

    target = {k: torch.zeros_like(v) for k, v in flat.items()}
    load(target, storage_reader=HuggingFaceStorageReader(str(tmp_path)))
    assert_same(target, flat)
    # And the every-dtype state through load_file.
    dcpp.save(sd, tmp_path / "all", format="safetensors")
    assert_same(load_file(tmp_path / "all" / "model-00001-of-00001.safetensors"), sd)


def test_save_refuses_non_tensors(tmp_path):
    with pytest.raises(dcpp.InvalidArgumentError, match="step"):
        dcpp.save({"w": torch.ones(2), "step": 3}, tmp_path, format="safetensors")
    with pytest.raises(ValueError, match="format"):
        dcpp.save({"w": torch.ones(2)}, tmp_path, format="gguf")


def test_torch_rank0_writer_with_index_mapping(tmp_path, ckpt):
    from torch.distributed.checkpoint import save
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter

    sd = {"a": torch.randn(4, 4), "b": torch.arange(10), "c": torch.randn(3).bfloat16()}
    writer = HuggingFaceStorageWriter(str(ckpt), fqn_to_index_mapping={"a": 1, "b": 2, "c": 2})
    save(sd, storage_writer=writer)
    assert (ckpt / "model.safetensors.index.json").exists()
    assert_same(dcpp.load(ckpt, tensors="torch"), sd)
    # In place, resharded: a column band of "a".
    piece = torch.zeros(4, 2)
    target = {"a": dcpp.ShardedTensor(global_shape=[4, 4],
                                      shards=[dcpp.Shard(tensor=piece, offsets=[0, 2])])}
    dcpp.load(target, ckpt)
    assert torch.equal(piece, sd["a"][:, 2:])
    report = dcpp.verify(ckpt)
    assert report.ok, str(report)


@pytest.mark.parametrize("mode", ["sharded", "consolidated"])
def test_torch_distributed_writer_4_ranks(tmp_path, mode):
    path = tmp_path / "hf"
    subprocess.run([sys.executable, os.path.join(HERE, "hf_workers.py"), "4", str(path), mode,
                    "7"], check=True, timeout=300)
    sys.path.insert(0, HERE)
    from hf_workers import global_state

    want = global_state(7, mode)
    got = dcpp.load(path, tensors="torch")
    assert_same(got, want)
    if mode == "sharded":
        md = dcpp.read_metadata(path)
        assert len(md["model.grid"].chunks) == 4  # 2x2 mesh pieces
        # torch's own reader agrees (read back through dcp.load).
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

    target = {k: torch.zeros_like(v) for k, v in want.items()}
    load(target, storage_reader=HuggingFaceStorageReader(str(path)))
    assert_same(target, want)
    # dcpp's drop-in reader, 4 ranks loading column shards.
    subprocess.run([sys.executable, os.path.join(HERE, "hf_workers.py"), "4", str(path),
                    "load-" + mode, "7"], check=True, timeout=300)


def test_dcpp_hf_reader_is_a_drop_in(tmp_path, ckpt):
    import dcpp.torch as dt
    from torch.distributed.checkpoint import load

    sd = every_dtype_state()
    save_file(sd, tmp_path / "model.safetensors")
    target = {k: torch.zeros_like(v) for k, v in sd.items()}
    load(target, storage_reader=dt.HuggingFaceStorageReader(str(tmp_path)))
    assert_same(target, sd)
    # A damaged header is refused, naming the file (torch wraps the error).
    from torch.distributed.checkpoint.api import CheckpointException

    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[9:14] = b"XXXXX"
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises((dcpp.CorruptCheckpointError, CheckpointException),
                       match="model.safetensors: safetensors header"):
        load(target, storage_reader=dt.HuggingFaceStorageReader(str(tmp_path)))


def test_cli_inspect_and_verify(tmp_path):
    cli = os.environ.get("DCPP_CLI") or os.path.join(HERE, "..", "..", "build", "tools", "dcpp",
                                                     "dcpp")
    if not os.path.exists(cli):
        pytest.skip("dcpp CLI not built")
    save_file({"w": torch.randn(8, 8), "b": torch.zeros(8)}, tmp_path / "model.safetensors")
    out = subprocess.run([cli, "inspect", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "w" in out.stdout and "[8, 8]" in out.stdout
    out = subprocess.run([cli, "verify", str(tmp_path / "model.safetensors")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # A truncated file: verify fails, naming it.
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-8])
    out = subprocess.run([cli, "verify", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "model.safetensors" in out.stdout + out.stderr


def _cli():
    cli = os.environ.get("DCPP_CLI") or os.path.join(HERE, "..", "..", "build", "tools", "dcpp",
                                                     "dcpp")
    if not os.path.exists(cli):
        pytest.skip("dcpp CLI not built")
    return cli


def _save_v2_3(state, path):
    """dcp.save with torch's 2.3 traversal (what torch <= 2.3 wrote): a list
    or dict without tensors inside is pickled whole, as one entry."""
    from torch.distributed.checkpoint import _version, save

    old = _version._derived_version
    _version._derived_version = "2_3"
    try:
        save(state, checkpoint_id=str(path))
    finally:
        _version._derived_version = old


def test_convert_keeps_whole_values_of_a_torch_2_3_checkpoint(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 3,
             "sched": {"milestones": [1, 2], "gamma": 0.5}}
    _save_v2_3(state, tmp_path / "src")
    md = dcpp.read_metadata(tmp_path / "src")
    whole = [e.fqn for e in md.entries if e.fqn in ("optim.param_groups", "sched")]
    assert whole == ["optim.param_groups", "sched"] or sorted(whole) == ["optim.param_groups",
                                                                         "sched"]
    # Load + save with today's traversal would split those values: the case
    # convert must not fall into.
    loaded = dcpp.load(tmp_path / "src", tensors="torch")
    dcpp.save(loaded, tmp_path / "naive")
    assert len(dcpp.read_metadata(tmp_path / "naive").entries) != len(md.entries)

    out = subprocess.run([_cli(), "convert", "--quiet", str(tmp_path / "src"),
                          str(tmp_path / "dst")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = dcpp.read_metadata(tmp_path / "dst")
    assert [e.fqn for e in got.entries] == [e.fqn for e in md.entries] or \
        sorted(e.fqn for e in got.entries) == sorted(e.fqn for e in md.entries)
    # torch 2.13 loads it as it loads the source.
    from torch.distributed.checkpoint import load

    want = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 0,
            "sched": {"milestones": [], "gamma": 0.0}}
    target = {"model": {k: torch.zeros_like(v) for k, v in model.state_dict().items()},
              "optim": opt.state_dict(), "step": 0, "sched": {}}
    load(target, checkpoint_id=str(tmp_path / "dst"))
    for k, v in want["model"].items():
        assert torch.equal(target["model"][k], v)
    assert target["step"] == 3
    assert target["sched"] == {"milestones": [1, 2], "gamma": 0.5}
    assert target["optim"]["param_groups"][0]["lr"] == 1e-3


def test_convert_cli_to_safetensors_and_back(tmp_path):
    from torch.distributed.checkpoint import save

    sd = {"model": {"w": torch.randn(300, 70), "b": torch.randn(70).bfloat16()},
          "step": 5}
    save(sd, checkpoint_id=str(tmp_path / "dcp"))
    cli = _cli()
    out = subprocess.run([cli, "convert", "--quiet", str(tmp_path / "dcp"), str(tmp_path / "st"),
                          "--to", "safetensors"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "'step'" in out.stderr and "--keys" in out.stderr
    out = subprocess.run([cli, "convert", "--quiet", str(tmp_path / "dcp"), str(tmp_path / "st"),
                          "--to", "safetensors", "--keys", "model.*", "--dtype", "bf16"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    files = sorted(p.name for p in (tmp_path / "st").glob("*.safetensors"))
    loaded = load_file(tmp_path / "st" / files[0])
    assert torch.equal(loaded["model.w"], sd["model"]["w"].bfloat16())
    assert torch.equal(loaded["model.b"], sd["model"]["b"])
    out = subprocess.run([cli, "convert", "--quiet", str(tmp_path / "st" / files[0]),
                          str(tmp_path / "back"), "--dtype", "f32"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    back = dcpp.load(tmp_path / "back", tensors="torch")
    assert torch.equal(back["model.w"], sd["model"]["w"].bfloat16().float())


def test_convert_4_rank_dtensor_checkpoint_to_consolidated_safetensors(tmp_path):
    """The consolidation torch does with save_distributed + enable_consolidation,
    from a plain 4-rank DTensor DCP checkpoint (uneven row shards, a 2x2
    grid), streamed by dcpp convert; bit-exact."""
    src, dst = tmp_path / "dcp", tmp_path / "hf"
    subprocess.run([sys.executable, os.path.join(HERE, "hf_workers.py"), "4", str(src), "dcp",
                    "11"], check=True, timeout=300)
    sys.path.insert(0, HERE)
    from hf_workers import global_state

    want = global_state(11, "dcp")
    md = dcpp.read_metadata(src)
    assert len(md["model.grid"].chunks) == 4
    out = subprocess.run([_cli(), "convert", "--quiet", str(src), str(dst), "--to",
                          "safetensors"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (f,) = sorted(dst.glob("*.safetensors"))
    assert_same(load_file(f), want)


def test_python_convert(tmp_path):
    from torch.distributed.checkpoint import save

    sd = {"model": {"w": torch.randn(40, 30), "h": torch.randn(7).half()}, "step": 1}
    save(sd, checkpoint_id=str(tmp_path / "dcp"))
    with pytest.raises(dcpp.InvalidArgumentError, match="'step'"):
        dcpp.convert(tmp_path / "dcp", tmp_path / "st", to="safetensors")
    md = dcpp.convert(tmp_path / "dcp", tmp_path / "st", to="safetensors", keys="model.*",
                      dtype="f32")
    assert sorted(e.fqn for e in md.entries) == ["model.h", "model.w"]
    got = dcpp.load(tmp_path / "st", tensors="torch")
    assert torch.equal(got["model.h"], sd["model"]["h"].float())
    assert torch.equal(got["model.w"], sd["model"]["w"])


def test_dcpp_hf_writer_is_a_drop_in(tmp_path):
    import dcpp.torch as dt
    from torch.distributed.checkpoint import load, save
    from torch.distributed.checkpoint.hf_storage import (
        HuggingFaceStorageReader,
        HuggingFaceStorageWriter,
    )

    sd = {"a": torch.randn(4, 4), "b": torch.arange(10), "c": torch.randn(3).bfloat16()}
    mapping = {"a": 1, "b": 2, "c": 2}
    save(sd, storage_writer=dt.HuggingFaceStorageWriter(str(tmp_path / "ours"),
                                                        fqn_to_index_mapping=mapping))
    save(sd, storage_writer=HuggingFaceStorageWriter(str(tmp_path / "theirs"),
                                                     fqn_to_index_mapping=mapping))
    ours = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    theirs = json.loads((tmp_path / "theirs" / "model.safetensors.index.json").read_text())
    assert ours["weight_map"] == theirs["weight_map"]
    for f in set(theirs["weight_map"].values()):
        assert_same(load_file(tmp_path / "ours" / f), load_file(tmp_path / "theirs" / f))
    target = {k: torch.zeros_like(v) for k, v in sd.items()}
    load(target, storage_reader=HuggingFaceStorageReader(str(tmp_path / "ours")))
    assert_same(target, sd)
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises((dcpp.InvalidArgumentError, CheckpointException), match="only tensors"):
        save({"a": torch.ones(2), "step": 3},
             storage_writer=dt.HuggingFaceStorageWriter(str(tmp_path / "bad")))
    with pytest.raises(NotImplementedError):
        dt.HuggingFaceStorageWriter(str(tmp_path / "x"), save_distributed=True)
