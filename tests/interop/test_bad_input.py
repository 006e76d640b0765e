"""Bad input gets a clear error naming the file, key or tensor: never a
crash, a hang, or wrong data."""
import os
import pickle
import resource
import shutil
import signal
import subprocess

import pytest
import torch
import torch.distributed.checkpoint as dcp

from conftest import run
from manifest import write_manifest
from state_dicts import zeros_like_state


def small_state():
    return {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(4, dtype=torch.bfloat16), "step": 3, "name": "run-1"}


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "ckpt"
    dcp.save(small_state(), checkpoint_id=str(path), no_dist=True)
    return path


def expect_error(args, *needles):
    p = run(args, expect_ok=False)
    assert p.returncode == 1, f"exit {p.returncode}: {p.stderr}"
    assert "Traceback" not in p.stderr and "Segmentation" not in p.stderr
    for n in needles:
        assert n in p.stderr, f"{n!r} not in {p.stderr!r}"
    return p.stderr


def test_missing_directory(cli, tmp_path):
    expect_error([cli, "inspect", tmp_path / "nope"], "does not exist", "nope")


def test_directory_without_metadata(cli, tmp_path):
    (tmp_path / "d").mkdir()
    expect_error([cli, "inspect", tmp_path / "d"], ".metadata", "NOT_FOUND")


@pytest.mark.parametrize("keep", [0, 1, 10, 100, 0.5, 0.9, -1])
def test_truncated_metadata(cli, ckpt, keep):
    path = ckpt / ".metadata"
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) - 1)
    path.write_bytes(data[:n])
    expect_error([cli, "inspect", ckpt], ".metadata")


def test_flipped_metadata_bytes_never_crash(cli, ckpt):
    data = bytearray((ckpt / ".metadata").read_bytes())
    for i in range(2, len(data), max(1, len(data) // 60)):
        corrupt = bytearray(data)
        corrupt[i] ^= 0x5A
        (ckpt / ".metadata").write_bytes(bytes(corrupt))
        p = run([cli, "inspect", ckpt], expect_ok=False)
        assert p.returncode in (0, 1), p.stderr  # 0 when the flip hit a string's text
        assert "Segmentation" not in p.stderr and "AddressSanitizer" not in p.stderr


def test_unknown_pickle_global_is_not_executed(cli, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    d = tmp_path / "evil"
    d.mkdir()
    (d / ".metadata").write_bytes(pickle.dumps(Evil()))
    expect_error([cli, "inspect", d], "not allowed")
    assert not (tmp_path / "pwned").exists()


def test_truncated_data_file(interop, ckpt, tmp_path):
    data_file = ckpt / "__0_0.distcp"
    data = data_file.read_bytes()
    data_file.write_bytes(data[: len(data) // 2])
    expect_error([interop, "load-all", ckpt, tmp_path / "out"], "__0_0.distcp")


def test_corrupt_data_file(interop, ckpt, tmp_path):
    md = dcp.FileSystemReader(str(ckpt)).read_metadata()
    info = md.storage_data[dcp.metadata.MetadataIndex("w", [0, 0])]
    data = bytearray((ckpt / info.relative_path).read_bytes())
    data[info.offset : info.offset + 4] = b"XXXX"  # the archive's first local header
    (ckpt / info.relative_path).write_bytes(bytes(data))
    expect_error([interop, "load-all", ckpt, tmp_path / "out"], "'w'")


def test_missing_data_file(interop, ckpt, tmp_path):
    os.remove(ckpt / "__0_0.distcp")
    expect_error([interop, "load-all", ckpt, tmp_path / "out"], "__0_0.distcp")


def _load_into(interop, state, ckpt, tmp_path, *extra):
    target = tmp_path / "target"
    shutil.rmtree(target, ignore_errors=True)
    write_manifest(state, target)
    return [interop, "load-into", target, ckpt, tmp_path / "out", *extra]


def test_wrong_shape_on_load(interop, ckpt, tmp_path):
    state = zeros_like_state(small_state())
    state["w"] = torch.zeros(4, 3)
    expect_error(_load_into(interop, state, ckpt, tmp_path), "'w'", "shape mismatch", "[3, 4]", "[4, 3]")


def test_wrong_dtype_on_load(interop, ckpt, tmp_path):
    state = zeros_like_state(small_state())
    state["b"] = torch.zeros(4, dtype=torch.float16)
    expect_error(_load_into(interop, state, ckpt, tmp_path), "'b'", "dtype mismatch", "bfloat16", "float16")


def test_missing_key_on_load(interop, ckpt, tmp_path):
    state = zeros_like_state(small_state())
    state["extra"] = torch.zeros(2)
    expect_error(_load_into(interop, state, ckpt, tmp_path), "'extra'", "allow_partial_load")
    run(_load_into(interop, state, ckpt, tmp_path, "--allow-partial-load"))


def test_overwrite_refused_and_old_checkpoint_intact(interop, ckpt, tmp_path):
    before = {f: (ckpt / f).read_bytes() for f in os.listdir(ckpt)}
    src = tmp_path / "m"
    write_manifest({"other": torch.ones(3)}, src)
    expect_error([interop, "save", src, ckpt, "--no-overwrite"], "already exists")
    # The refusal is decided under the writers' lock, whose file may appear.
    after = {f: (ckpt / f).read_bytes() for f in os.listdir(ckpt) if f != ".dcpp.lock"}
    assert after == {f: b for f, b in before.items() if f != ".dcpp.lock"}


def test_overwrite_replaces_atomically(interop, ckpt, tmp_path):
    src = tmp_path / "m"
    write_manifest({"other": torch.full((3,), 2.0)}, src)
    run([interop, "save", src, ckpt])
    loaded = {"other": torch.zeros(3)}
    dcp.load(loaded, checkpoint_id=str(ckpt), no_dist=True)
    assert torch.equal(loaded["other"], torch.full((3,), 2.0))
    md = dcp.FileSystemReader(str(ckpt)).read_metadata()
    assert list(md.state_dict_metadata) == ["other"]
    # the replaced checkpoint's data files are gone; only the new ones remain
    referenced = {info.relative_path for info in md.storage_data.values()}
    assert {f for f in os.listdir(ckpt) if f.endswith(".distcp")} == referenced


def test_failed_save_leaves_no_checkpoint(interop, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    d = tmp_path / "ro"
    d.mkdir()
    os.chmod(d, 0o555)
    src = tmp_path / "m"
    write_manifest({"x": torch.ones(2)}, src)
    expect_error([interop, "save", src, d], "ro")
    assert not (d / ".metadata").exists()


def test_failed_save_cleans_up_even_as_root(interop, tmp_path):
    # A file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored so the write
    # fails with EFBIG instead of killing) makes writing the file that holds
    # the large tensor fail while the file of the small ones is written.
    d = tmp_path / "ckpt"
    src = tmp_path / "m"
    write_manifest({"x": torch.ones(2), "y": torch.ones(3), "big": torch.ones(64 * 1024)}, src)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    p = subprocess.run([str(a) for a in (interop, "save", src, d, "--thread-count", "2")],
                       capture_output=True, text=True, preexec_fn=limit_file_size)
    assert p.returncode == 1, f"exit {p.returncode}: {p.stderr}"
    assert "__0_0." in p.stderr and "nothing was committed" in p.stderr, p.stderr
    assert sorted(os.listdir(d)) == [".dcpp.lock"]  # the small file was removed too
