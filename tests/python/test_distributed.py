"""dcp.save / dcp.load across gloo processes with dcpp.torch's storage layer:
what dcpp writes from N ranks loads with torch's reader on M != N ranks,
resharded (rows -> columns), and the other way round. The processes are
started by dist_workers.py."""
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

WORKERS = os.path.join(os.path.dirname(__file__), "dist_workers.py")

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def launch(tmp_path, role, impl, world, ckpt, *extra, expect=0):
    init = tmp_path / f"init-{role}-{impl}-{world}-{len(os.listdir(tmp_path))}"
    p = subprocess.run(
        [sys.executable, WORKERS, role, impl, str(world), str(init), str(ckpt), *extra],
        capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == expect, f"{role} with {impl} on {world} ranks:\n{out}"
    return out


@pytest.mark.parametrize("save_world,load_world,zstd", [(4, 2, False), (2, 4, True), (4, 3, False)])
def test_dcpp_writer_torch_reader(tmp_path, save_world, load_world, zstd):
    ckpt = tmp_path / "ckpt"
    launch(tmp_path, "save", "dcpp", save_world, ckpt, *(["--zstd"] if zstd else []))
    names = sorted(f for f in os.listdir(ckpt) if f.endswith(".distcp"))
    # torch's naming with this save's tag: __{rank}_{n}.{tag}.distcp,
    # thread_count=2 files per rank.
    tags = {name.split(".")[1] for name in names}
    assert len(tags) == 1, names
    (tag,) = tags
    assert names == sorted(f"__{r}_{n}.{tag}.distcp" for r in range(save_world) for n in range(2))
    launch(tmp_path, "load", "torch", load_world, ckpt)


@pytest.mark.parametrize("save_world,load_world,zstd", [(4, 2, True), (2, 4, False)])
def test_torch_writer_dcpp_reader(tmp_path, save_world, load_world, zstd):
    ckpt = tmp_path / "ckpt"
    launch(tmp_path, "save", "torch", save_world, ckpt, *(["--zstd"] if zstd else []))
    launch(tmp_path, "load", "dcpp", load_world, ckpt)


def test_dcpp_writer_dcpp_reader(tmp_path):
    ckpt = tmp_path / "ckpt"
    launch(tmp_path, "save", "dcpp", 2, ckpt, "--zstd")
    launch(tmp_path, "load", "dcpp", 4, ckpt)


def test_the_comparison_detects_a_different_state(tmp_path):
    # The loaders compare against global_state(0); a checkpoint of
    # global_state(1) must fail that comparison on every rank.
    ckpt = tmp_path / "ckpt"
    launch(tmp_path, "save", "dcpp", 2, ckpt, "--seed", "1")
    out = launch(tmp_path, "load", "dcpp", 2, ckpt, expect=3)
    assert out.count("MISMATCH") == 2 and "model.rows" in out
