"""`dcpp convert` to DCP streams item by item (engine/copy_checkpoint.h):
torch-written checkpoints (pickled lists, optimizer state, compressed
items) convert and load in torch with every value equal; memory stays
bounded on a checkpoint several times the bound; --keys, --dtype and
--transforms work."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import _find
from torch.distributed.checkpoint.metadata import TensorStorageMetadata


def _cli():
    return _find("DCPP_CLI", "dcpp")


def convert(*args):
    out = subprocess.run([_cli(), "convert", *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out


def read_metadata(path):
    return dcp.FileSystemReader(str(path)).read_metadata()


def load_tensors(path):
    """Every tensor of the checkpoint at `path`, loaded by torch."""
    md = read_metadata(path)
    state = {k: torch.empty(v.size, dtype=v.properties.dtype)
             for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)))
    return state


def training_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.LayerNorm(6),
                                torch.nn.Linear(6, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optim": opt.state_dict(), "step": 17,
            "sched": {"milestones": [10, 20, 30], "gamma": 0.5, "names": ["a", "b"]},
            "half": torch.randn(33, 7).half()}, model, opt


def empty_like(state):
    """A target torch's dcp.load fills in place (values replaced)."""
    if isinstance(state, dict):
        return {k: empty_like(v) for k, v in state.items()}
    if isinstance(state, list):
        return [empty_like(v) for v in state]
    if isinstance(state, torch.Tensor):
        return torch.full_like(state, 7)
    return state if isinstance(state, (tuple,)) else None


def assert_equal(got, want, where="state"):
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            assert_equal(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_equal(g, w, f"{where}[{i}]")
    elif isinstance(want, torch.Tensor):
        assert g_dtype(got) == want.dtype, where
        assert torch.equal(got, want), where
    else:
        assert got == want, where


def g_dtype(t):
    return t.dtype if isinstance(t, torch.Tensor) else type(t)


def _save_v2_3(state, path):
    """dcp.save with torch's 2.3 traversal (what torch <= 2.3 wrote): a list
    or dict without tensors inside is pickled whole, as one entry."""
    from torch.distributed.checkpoint import _version

    old = _version._derived_version
    _version._derived_version = "2_3"
    try:
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(path)))
    finally:
        _version._derived_version = old


@pytest.mark.parametrize("traversal", ["2.13", "2.3"])
def test_torch_checkpoint_with_pickled_lists_converts_and_loads_equal(tmp_path, traversal):
    state, _, _ = training_state()
    if traversal == "2.3":
        _save_v2_3(state, tmp_path / "src")
    else:
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp_path / "src")))
    out = convert(tmp_path / "src", tmp_path / "dst", "--thread-count", "2")
    assert "wrote" in out.stderr  # the summary, even without a terminal
    assert "\r" not in out.stderr  # no progress bar without a terminal
    src_md, dst_md = read_metadata(tmp_path / "src"), read_metadata(tmp_path / "dst")
    assert list(dst_md.state_dict_metadata) == list(src_md.state_dict_metadata)
    assert dst_md.planner_data == src_md.planner_data
    if traversal == "2.3":  # whole lists stayed one pickled value each
        assert "optim.param_groups" in dst_md.state_dict_metadata
        assert "sched" in dst_md.state_dict_metadata
    target = empty_like(state)
    dcp.load(target, storage_reader=dcp.FileSystemReader(str(tmp_path / "dst")))
    assert_equal(target, state)


@pytest.mark.parametrize("direction", ["zstd->raw", "raw->zstd"])
def test_compression_changes_are_bit_exact(tmp_path, direction):
    pytest.importorskip("zstandard")
    from torch.distributed.checkpoint._extension import ZStandard

    state, _, _ = training_state()
    state["big"] = torch.randn(600, 300)  # a chunk above the 1 MiB streaming threshold
    ext = [ZStandard()] if direction == "zstd->raw" else []
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp_path / "src"), _extensions=ext))
    args = [] if direction == "zstd->raw" else ["--transforms", "stream.zstd/1"]
    convert(tmp_path / "src", tmp_path / "dst", *args)
    md = read_metadata(tmp_path / "dst")
    descriptors = {tuple(v.transform_descriptors or ()) for k, v in md.storage_data.items()
                   if k.fqn == "big"}
    assert descriptors == ({()} if direction == "zstd->raw" else {("stream.zstd/1",)})
    target = empty_like(state)
    dcp.load(target, storage_reader=dcp.FileSystemReader(str(tmp_path / "dst")))
    assert_equal(target, state)
    # dcpp verify finds the CRC-32s of the re-encoded archives right.
    out = subprocess.run([_cli(), "verify", str(tmp_path / "dst"), "--quiet"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_keys_and_dtype(tmp_path):
    state, _, _ = training_state()
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp_path / "src")))
    convert(tmp_path / "src", tmp_path / "dst", "--keys", "model.*", "--keys", "half",
            "--dtype", "bf16")
    md = read_metadata(tmp_path / "dst")
    assert sorted(md.state_dict_metadata) == sorted(
        ["half"] + [f"model.{k}" for k in state["model"]])
    got = load_tensors(tmp_path / "dst")
    for k, v in state["model"].items():
        assert got[f"model.{k}"].dtype == torch.bfloat16
        assert torch.equal(got[f"model.{k}"], v.bfloat16())
    assert torch.equal(got["half"], state["half"].bfloat16())
    bad = subprocess.run([_cli(), "convert", str(tmp_path / "src"), str(tmp_path / "x"),
                          "--keys", "nope.*"], capture_output=True, text=True)
    assert bad.returncode != 0 and "nope" in bad.stderr


def test_safetensors_to_dcp_streams_in_bounded_memory(tmp_path):
    """384 MiB of tensors (one of 256 MiB) through the CLI: the child's peak
    RSS stays far below the checkpoint's size."""
    safetensors = pytest.importorskip("safetensors.torch")
    st = tmp_path / "st"
    st.mkdir()
    big = torch.arange(64 << 20, dtype=torch.float32).reshape(16384, 4096)
    rest = {f"layer.{i}": torch.full((4096, 1024), float(i)) for i in range(8)}
    safetensors.save_file({"big": big, **rest}, str(st / "model.safetensors"))
    del big, rest
    # The peak RSS of convert alone: a small Python process starts it and
    # reports wait4's ru_maxrss. (Measured from here, it would include this
    # process's own size: Linux carries the high-water mark of the address
    # space a child is forked or vforked from across exec.)
    probe = ("import os, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[1:], stderr=subprocess.PIPE)\n"
             "_, status, usage = os.wait4(p.pid, 0)\n"
             "err = p.stderr.read().decode(errors='replace')\n"
             "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, repr(err))\n")
    out = subprocess.run([sys.executable, "-c", probe, _cli(), "convert", str(st),
                          str(tmp_path / "dcp"), "--thread-count", "2", "--no-sync", "--quiet"],
                         capture_output=True, text=True, check=True).stdout.split(" ", 2)
    assert out[0] == "0", out[2]
    peak_mib = int(out[1]) / 1024
    assert peak_mib < 200, f"convert's peak RSS {peak_mib:.0f} MiB for a 384 MiB checkpoint"
    got = load_tensors(tmp_path / "dcp")
    assert torch.equal(got["big"], torch.arange(64 << 20, dtype=torch.float32).reshape(16384, 4096))
    for i in range(8):
        assert torch.equal(got[f"layer.{i}"], torch.full((4096, 1024), float(i)))
