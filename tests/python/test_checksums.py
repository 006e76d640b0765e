"""Checksums checked on read, the sidecar checksum file and `dcpp verify`,
against checkpoints written by torch 2.13 (torch.distributed.checkpoint) and
by dcpp (plain and zstd): flipped tensor bytes, swapped strides in data.pkl
and a flipped pickled value are caught by dcpp.load, `dcpp convert` and
`dcpp verify`; verify_checksums=False loads without checking.
"""
import json
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest

import dcpp

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(scope="session")
def cli():
    path = os.environ.get("DCPP_CLI") or os.path.join(ROOT, "build", "tools", "dcpp", "dcpp")
    if not os.path.exists(path):
        pytest.skip("dcpp CLI not built: set DCPP_CLI")
    return path


def run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)


# w: 64x32 floats 0..2047 (strides (32, 1): swapping them transposes it).
def state():
    return {
        "w": torch.arange(64 * 32, dtype=torch.float32).reshape(64, 32),
        "b": torch.full((16,), 7.0),
        "step": 42,
    }


def save_torch(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state(), checkpoint_id=str(path))


def save_dcpp(path, **kw):
    dcpp.save(state(), path, sync_files=False, **kw)


WRITERS = {
    "torch": save_torch,
    "dcpp": save_dcpp,
    "dcpp-zstd": lambda p: save_dcpp(p, transforms=["stream.zstd/1"]),
}


def item_range(path, fqn):
    e = dcpp.read_metadata(path)[fqn]
    s = e.chunks[0].storage if e.chunks else e.storage
    return os.path.join(path, s.relative_path), s.offset, s.length


def patch(path, fqn, old, new):
    """Replaces the unique occurrence of `old` in item `fqn`'s stored bytes."""
    file, offset, length = item_range(path, fqn)
    with open(file, "r+b") as f:
        f.seek(offset)
        item = f.read(length)
        at = item.find(old)
        assert at >= 0 and item.find(old, at + 1) < 0, (fqn, old)
        f.seek(offset + at)
        f.write(new)
    return os.path.basename(file)


def flip_tensor_byte(path):
    value = np.float32(1234.0).tobytes()
    return patch(path, "w", value, bytes([value[0], value[1] ^ 0x01]) + value[2:])


def swap_strides(path):
    # data.pkl pickles the strides (32, 1) as BININT1 32, BININT1 1, TUPLE2.
    return patch(path, "w", b"K K\x01\x86", b"K\x01K \x86")


def flip_step(path):
    return patch(path, "step", b"K*", b"K+")  # BININT1 42 -> 43


DAMAGE = {"tensor": ("w", flip_tensor_byte), "strides": ("w", swap_strides),
          "value": ("step", flip_step)}


@pytest.mark.parametrize("writer", ["torch", "dcpp"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_is_caught_everywhere(tmp_path, cli, writer, damage):
    ck = str(tmp_path / "ck")
    WRITERS[writer](ck)
    fqn, do = DAMAGE[damage]
    file = do(ck)

    with pytest.raises(dcpp.CorruptCheckpointError) as e:
        dcpp.load(ck)
    assert f"'{fqn}'" in str(e.value) and file in str(e.value)
    # In place too, with torch tensors.
    sd = {"w": torch.zeros(64, 32), "b": torch.zeros(16), "step": 0}
    with pytest.raises(dcpp.CorruptCheckpointError):
        dcpp.load(sd, ck)

    p = run(cli, "convert", ck, tmp_path / "copy", "--quiet")
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"'{fqn}'" in p.stderr

    p = run(cli, "verify", ck, "--quiet")
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"DAMAGED '{fqn}' in {file}" in p.stdout
    p = run(cli, "verify", ck, "--json", "--quiet")
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert report["ok"] is False
    assert [(q["fqn"], q["file"]) for q in report["problems"]] == [(fqn, file)]

    r = dcpp.verify(ck)
    assert not r.ok and not r
    assert [(q.fqn, q.file) for q in r.problems] == [(fqn, file)]

    # Unchecked, the damage loads, as torch loads it.
    got = dcpp.load(ck, verify_checksums=False, tensors="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = {"w": torch.zeros(64, 32), "b": torch.zeros(16), "step": 0}
        dcp.load(theirs, checkpoint_id=ck)
    if damage == "value":
        assert got["step"] == 43 and theirs["step"] == 43
    else:
        assert not torch.equal(got["w"], state()["w"])
        assert not torch.equal(theirs["w"], state()["w"])
        if damage == "strides":
            assert torch.equal(theirs["w"], torch.as_strided(state()["w"], (64, 32), (1, 32)))


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_clean_checkpoints_verify(tmp_path, cli, writer):
    ck = str(tmp_path / "ck")
    WRITERS[writer](ck)
    p = run(cli, "verify", ck, "--quiet")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("OK")
    r = dcpp.verify(ck)
    assert r.ok and r.items == 3 and r.problems == []
    assert (r.checksum_file != "") == writer.startswith("dcpp")
    got = dcpp.load(ck, tensors="torch")
    assert torch.equal(got["w"], state()["w"]) and got["step"] == 42


def test_sidecar_names_the_save_and_is_replaced_on_overwrite(tmp_path):
    ck = str(tmp_path / "ck")
    save_dcpp(ck)
    first = dcpp.read_metadata(ck).storage_meta.save_id
    assert os.path.exists(os.path.join(ck, f".checksums.{first}"))
    save_dcpp(ck)
    second = dcpp.read_metadata(ck).storage_meta.save_id
    assert sorted(n for n in os.listdir(ck) if n.startswith(".checksums.")) == [
        f".checksums.{second}"
    ]
    # torch overwrites it: its .metadata names no sidecar; the stale one is
    # reported as unreferenced, never as damage.
    save_torch(ck)
    r = dcpp.verify(ck)
    assert r.ok, str(r)
    assert f".checksums.{second}" in r.unreferenced_files
    dcpp.load(ck)


def test_damaged_metadata_is_caught_by_the_sidecar(tmp_path):
    ck = str(tmp_path / "ck")
    save_dcpp(ck)
    md_path = os.path.join(ck, ".metadata")
    data = bytearray(open(md_path, "rb").read())
    at = data.find(os.fsencode(ck))  # the checkpoint_id string: decodes either way
    assert at >= 0
    data[at + len(ck) - 1] ^= 0x01
    open(md_path, "wb").write(bytes(data))
    with pytest.raises(dcpp.CorruptCheckpointError, match=r"\.metadata"):
        dcpp.load(ck)
    assert dcpp.load(ck, verify_checksums=False)["step"] == 42
    r = dcpp.verify(ck)
    assert [q.file for q in r.problems] == [".metadata"]


def test_archives_torch_wrote_without_crcs_are_accepted(tmp_path, cli):
    import torch.utils.serialization as ser

    ck = str(tmp_path / "ck")
    ser.config.save.compute_crc32 = False
    try:
        save_torch(ck)
    finally:
        ser.config.save.compute_crc32 = True
    flip_tensor_byte(ck)  # nothing records what the bytes were
    assert run(cli, "verify", ck, "--quiet").returncode == 0
    assert not torch.equal(dcpp.load(ck, tensors="torch")["w"], state()["w"])


def test_write_checksum_file_binding_for_the_torch_writer(tmp_path):
    # What the drop-in writer's finish() does: the .metadata bytes it is
    # about to commit, a sidecar for them, then the commit.
    import pickle

    ck = str(tmp_path / "ck")
    save_torch(ck)
    md_bytes = open(os.path.join(ck, ".metadata"), "rb").read()
    save_id = pickle.loads(md_bytes).storage_meta.save_id
    name = dcpp._dcpp._write_checksum_file(ck, md_bytes, sync=False)
    assert name == f".checksums.{save_id}"
    r = dcpp.verify(ck)
    assert r.ok and r.checksum_file == name
    flip_step(ck)
    assert [q.fqn for q in dcpp.verify(ck).problems] == ["step"]
