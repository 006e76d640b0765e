"""Checkpoints written by other torch versions (tests/data/torch-<version>/,
made by tests/data/make_torch_fixtures.py with torch 2.3.1 and 2.14.1):
dcpp loads, verifies and converts them, and torch 2.13 loads what dcpp
converted. No other torch is needed here: expected.json beside each set
holds every value (tensors by dtype, shape and sha256 of their bytes).
"""
import glob
import hashlib
import json
import os
import subprocess

import pytest
import torch

import dcpp

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")
VERSIONS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(DATA, "torch-*")))
CASES = [(v, name) for v in VERSIONS
         for name in ("model_optim", "two_rank", "hf")
         if os.path.isdir(os.path.join(DATA, v, name))]


def _cli():
    cli = os.environ.get("DCPP_CLI") or os.path.join(HERE, "..", "..", "build", "tools", "dcpp",
                                                     "dcpp")
    if not os.path.exists(cli):
        pytest.skip("dcpp CLI not built")
    return cli


def _run(*args):
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{args}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def expected(version, name):
    with open(os.path.join(DATA, version, "expected.json")) as f:
        return json.load(f)[name]


def assert_same(got, want, where="state"):
    """`got` (what a loader returned) against its expected.json form."""
    if isinstance(want, dict) and "__tensor__" in want:
        assert isinstance(got, torch.Tensor), f"{where}: {type(got)}, not a tensor"
        assert str(got.dtype).replace("torch.", "") == want["__tensor__"], where
        assert list(got.shape) == want["shape"], where
        raw = got.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert hashlib.sha256(raw).hexdigest() == want["sha256"], f"{where}: other bytes"
    elif isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {type(got)}, not a dict"
        assert sorted(str(k) for k in got) == sorted(want), where
        for k, v in got.items():
            assert_same(v, want[str(k)], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, (list, tuple)), f"{where}: {type(got)}, not a list"
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


def flat_tensors(want, prefix=""):
    """FQN -> expected tensor form, for safetensors output."""
    out = {}
    for k, v in want.items():
        if isinstance(v, dict) and "__tensor__" in v:
            out[prefix + k] = v
        elif isinstance(v, dict):
            out.update(flat_tensors(v, prefix + k + "."))
    return out


def test_fixtures_present():
    # Both versions the issue names, each with its fixtures (hf only where
    # that torch has HuggingFaceStorageWriter).
    assert {"torch-2.3.1", "torch-2.14.1"} <= set(VERSIONS)
    assert ("torch-2.3.1", "model_optim") in CASES and ("torch-2.14.1", "hf") in CASES
    for v in VERSIONS:
        total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(DATA, v, "**", "*"),
                                                           recursive=True) if os.path.isfile(p))
        assert total < 600 * 1024, v


@pytest.mark.parametrize("version,name", CASES)
def test_load_and_verify(version, name):
    path = os.path.join(DATA, version, name)
    assert_same(dcpp.load(path, tensors="torch"), expected(version, name))
    _run(_cli(), "verify", path)


@pytest.mark.parametrize("version,name", CASES)
def test_convert_to_dcp_loads_in_torch(version, name, tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    src, dst = os.path.join(DATA, version, name), tmp_path / "dcp"
    _run(_cli(), "convert", "--quiet", src, dst)
    want = expected(version, name)
    if name != "hf":
        # Every entry kept as it was (torch 2.3.1 pickled optim.param_groups
        # whole: one entry that must stay one).
        assert sorted(e.fqn for e in dcpp.read_metadata(dst).entries) == \
            sorted(e.fqn for e in dcpp.read_metadata(src).entries)
    dcp_to_torch_save(str(dst), str(tmp_path / "full.pt"))
    assert_same(torch.load(tmp_path / "full.pt", weights_only=True), want)
    assert_same(dcpp.load(dst, tensors="torch"), want)
    _run(_cli(), "verify", dst)


@pytest.mark.parametrize("version,name", CASES)
def test_convert_to_safetensors(version, name, tmp_path):
    from safetensors.torch import load_file

    src, dst = os.path.join(DATA, version, name), tmp_path / "st"
    want = expected(version, name)
    keys = [] if name == "hf" else ["--keys", "model.*"]
    _run(_cli(), "convert", "--quiet", src, dst, "--to", "safetensors", *keys)
    got = {}
    for f in sorted(dst.glob("*.safetensors")):
        got.update(load_file(f))
    assert_same(got, flat_tensors(want) if name == "hf" else flat_tensors(want["model"], "model."))


def test_torch_2_3_1_pickled_param_groups_whole():
    md = dcpp.read_metadata(os.path.join(DATA, "torch-2.3.1", "model_optim"))
    fqns = {e.fqn for e in md.entries}
    # What makes this file a real 2.3.1 one: the list is one entry, not
    # optim.param_groups.0.lr and its siblings.
    assert "optim.param_groups" in fqns
    assert not any(f.startswith("optim.param_groups.") for f in fqns)
