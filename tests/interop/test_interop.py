"""dcpp against real PyTorch, both directions, every value compared bit for
bit. torch writes with torch.distributed.checkpoint (no_dist=True); dcpp
reads and writes through the C++ helper dcpp_interop and the dcpp CLI."""
import json
import os
import re

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from conftest import run
from manifest import assert_same, read_manifest, write_manifest
from state_dicts import full_state_dict, zeros_like_state

WRITER_OPTIONS = [(1, True), (3, True), (1, False), (3, False)]


def torch_save(sd, path, thread_count=1, single_file_per_rank=True):
    writer = dcp.FileSystemWriter(str(path), thread_count=thread_count, single_file_per_rank=single_file_per_rank)
    dcp.save(sd, storage_writer=writer, no_dist=True)


def torch_load_into(sd, path):
    dcp.load(sd, checkpoint_id=str(path), no_dist=True)
    return sd


def dcpp_save(interop, sd, path, tmp_path, thread_count=1, single_file_per_rank=True):
    src = tmp_path / "manifest_in"
    write_manifest(sd, src)
    args = [interop, "save", src, path, "--thread-count", thread_count]
    if not single_file_per_rank:
        args.append("--file-per-item")
    run(args)


def dcpp_load_all(interop, path, tmp_path):
    out = tmp_path / "manifest_out"
    run([interop, "load-all", path, out])
    return read_manifest(out)


@pytest.mark.parametrize("thread_count,single_file", WRITER_OPTIONS)
def test_torch_saves_dcpp_loads_everything(interop, tmp_path, thread_count, single_file):
    sd = full_state_dict()
    ckpt = tmp_path / "ckpt"
    torch_save(sd, ckpt, thread_count, single_file)
    assert_same(sd, dcpp_load_all(interop, ckpt, tmp_path))


def test_torch_saves_dcpp_loads_in_place(interop, tmp_path):
    sd = full_state_dict(seed=3)
    ckpt = tmp_path / "ckpt"
    torch_save(sd, ckpt, 2)
    target = tmp_path / "target"
    write_manifest(zeros_like_state(sd), target)  # destinations keep strides (transposed)
    out = tmp_path / "loaded"
    run([interop, "load-into", target, ckpt, out])
    assert_same(sd, read_manifest(out))


@pytest.mark.parametrize("thread_count,single_file", WRITER_OPTIONS)
def test_dcpp_saves_torch_loads(interop, tmp_path, thread_count, single_file):
    sd = full_state_dict(seed=1)
    ckpt = tmp_path / "ckpt"
    dcpp_save(interop, sd, ckpt, tmp_path, thread_count, single_file)
    files = sorted(f for f in os.listdir(ckpt) if f.endswith(".distcp"))
    if single_file:
        # `__{rank}_{n}.{tag}.distcp`, one random tag per save
        assert [re.sub(r"\.[0-9a-f]{8}\.distcp$", ".distcp", f) for f in files] == [
            f"__0_{i}.distcp" for i in range(thread_count)]
        assert len({f.split(".")[1] for f in files}) == 1
    else:
        assert len(files) == len(dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata)
    assert_same(sd, torch_load_into(zeros_like_state(sd), ckpt))


def test_dcp_to_torch_save_reads_dcpp_output(interop, tmp_path):
    sd = full_state_dict(seed=2)
    ckpt = tmp_path / "ckpt"
    dcpp_save(interop, sd, ckpt, tmp_path, 2)
    dcp_to_torch_save(str(ckpt), str(tmp_path / "full.pt"))
    loaded = torch.load(tmp_path / "full.pt", weights_only=False)
    # dcp_to_torch_save rebuilds nesting from planner_data: int dict keys come back as str.
    sd["optim"]["state"] = {str(k): v for k, v in sd["optim"]["state"].items()}
    assert_same(sd, loaded)


def test_inspect_matches_torch_metadata(cli, tmp_path):
    sd = full_state_dict()
    ckpt = tmp_path / "ckpt"
    torch_save(sd, ckpt, 2)
    md = dcp.FileSystemReader(str(ckpt)).read_metadata()
    doc = json.loads(run([cli, "inspect", ckpt, "--json"]).stdout)
    entries = {e["fqn"]: e for e in doc["entries"]}
    assert set(entries) == set(md.state_dict_metadata)
    for fqn, m in md.state_dict_metadata.items():
        e = entries[fqn]
        if isinstance(m, dcp.metadata.TensorStorageMetadata):
            assert e["kind"] == "tensor"
            assert e["dtype"] == str(m.properties.dtype).removeprefix("torch.")
            assert e["shape"] == list(m.size)
            assert len(e["chunks"]) == len(m.chunks)
            stored = sum(info.length for idx, info in md.storage_data.items() if idx.fqn == fqn)
        else:
            assert e["kind"] == "bytes"
            stored = md.storage_data[dcp.metadata.MetadataIndex(fqn)].length
        assert e["stored_bytes"] == stored, fqn
    text = run([cli, "inspect", ckpt]).stdout
    assert "model.1.weight" in text and "float32" in text and "[16, 8]" in text
    assert "dtypes.float8_e5m2fnuz" in text and "bytes" in text


class UserThing:
    """A value only Python can rebuild: dcpp must carry it as raw bytes."""

    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return isinstance(other, UserThing) and other.x == self.x


def test_convert_is_faithful(cli, tmp_path):
    sd = full_state_dict(seed=4)
    sd["custom"] = UserThing([1, 2, 3])
    sd["model"]["0.weight"].requires_grad_(True)
    src, dst = tmp_path / "src", tmp_path / "dst"
    torch_save(sd, src, 1)
    run([cli, "convert", src, dst, "--thread-count", "2", "--quiet"])
    target = zeros_like_state(sd)
    target["custom"] = None
    loaded = torch_load_into(target, dst)
    assert loaded["custom"] == sd["custom"]
    del sd["custom"], loaded["custom"]
    assert_same(sd, loaded)
    md_src = dcp.FileSystemReader(str(src)).read_metadata()
    md_dst = dcp.FileSystemReader(str(dst)).read_metadata()
    assert md_dst.state_dict_metadata["model.0.weight"].properties.requires_grad == md_src.state_dict_metadata["model.0.weight"].properties.requires_grad
    assert md_dst.planner_data == md_src.planner_data


def test_help_and_usage_errors(cli):
    assert "inspect" in run([cli, "--help"]).stdout
    assert "--json" in run([cli, "inspect", "--help"]).stdout
    assert run([cli, "inspect"], expect_ok=False).returncode == 2
    assert run([cli, "frobnicate"], expect_ok=False).returncode == 2
    assert run([cli, "convert", "a", "b", "--thread-count", "0"], expect_ok=False).returncode == 2
