"""dcpp and real torch.distributed across processes, values compared bit for bit.

torch runs as separate processes joined by gloo (dist_workers.py: one launch
per scenario, the workers forked from one interpreter); dcpp runs its ranks as
threads through dcpp_interop save-sharded / load-sharded. The two sides cut
the same global tensors differently, so every load reshards.
"""
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp

from conftest import run
from dist_workers import LOAD_WORLD, PERTURBED_FQN, SAVE_WORLD, global_state
from manifest import assert_same, read_manifest, write_manifest
from state_dicts import zeros_like_state

WORKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_workers.py")
LAUNCH_TIMEOUT_S = 300


def launch_torch(role, world, tmp_path, *args):
    """Runs dist_workers.py ROLE on WORLD processes; fails the test with the
    workers' output unless every rank exits 0."""
    init = tmp_path / f"gloo_init_{role}"  # FileStore rendezvous; must not exist yet
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one host: no need to resolve its name
    p = subprocess.Popen([sys.executable, WORKERS, role, str(world), str(init), *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         start_new_session=True)  # its own process group: killed as a whole
    try:
        out, _ = p.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"torch {role} on {world} processes timed out after {LAUNCH_TIMEOUT_S} s:\n{out}")
    assert p.returncode == 0, f"torch {role} on {world} processes failed ({p.returncode}):\n{out}"


def chunks(ckpt, fqn):
    md = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata[fqn]
    return [(list(c.offsets), list(c.sizes)) for c in md.chunks]


@pytest.fixture(scope="module")
def torch_checkpoint(tmp_path_factory):
    """global_state() saved by SAVE_WORLD torch processes as DTensors."""
    tmp = tmp_path_factory.mktemp("torch_saved")
    launch_torch("torch-save", SAVE_WORLD, tmp, tmp / "ckpt")
    return tmp / "ckpt"


def test_torch_wrote_the_layout_under_test(torch_checkpoint):
    # DTensor's Shard(0) over 4 ranks: ceil(rows / 4) each, the rest shorter or empty.
    assert chunks(torch_checkpoint, "model.rows") == [
        ([0, 0], [3, 7]), ([3, 0], [3, 7]), ([6, 0], [3, 7]), ([9, 0], [1, 7])]
    assert chunks(torch_checkpoint, "model.few_rows")[3] == ([3, 0], [0, 5])
    assert chunks(torch_checkpoint, "model.cols")[3] == ([0, 3], [5, 0])
    assert [c[0][0] for c in chunks(torch_checkpoint, "model.table")] == [0, 4, 7, 10]
    assert len(chunks(torch_checkpoint, "model.grid")) == 4
    assert len(chunks(torch_checkpoint, "model.emb")) == 1  # Replicate: written once


@pytest.mark.parametrize("ranks,dim", [(3, 1), (3, 0), (5, 1), (1, 0)])
def test_dcpp_loads_torch_dtensor_checkpoint(interop, torch_checkpoint, tmp_path, ranks, dim):
    expected = global_state()
    target = tmp_path / "zeros"
    write_manifest(zeros_like_state(expected), target)
    out = tmp_path / "loaded"
    run([interop, "load-sharded", torch_checkpoint, target, out, "--ranks", ranks, "--dim", dim])
    loaded = read_manifest(out)
    assert_same(expected, loaded)
    # The comparison sees a single changed element.
    changed = global_state()
    changed["model"]["rows"].view(torch.int32)[9, 6] ^= 1
    with pytest.raises(AssertionError, match="model.rows"):
        assert_same(changed, loaded)


def dcpp_save_sharded(interop, state, ckpt, tmp_path, *flags):
    src = tmp_path / f"{ckpt.name}_manifest"
    write_manifest(state, src)
    run([interop, "save-sharded", src, ckpt, *flags])


def test_torch_loads_dcpp_sharded_checkpoints(interop, tmp_path):
    state = global_state()
    by_rows, by_cols, changed = tmp_path / "by_rows", tmp_path / "by_cols", tmp_path / "changed"
    dcpp_save_sharded(interop, state, by_rows, tmp_path, "--ranks", 4, "--dim", 0)
    dcpp_save_sharded(interop, state, by_cols, tmp_path, "--ranks", 4, "--dim", 1,
                      "--thread-count", 2)
    perturbed = global_state()
    perturbed["model"]["rows"].view(torch.int32)[9, 6] ^= 1  # in the last row piece
    dcpp_save_sharded(interop, perturbed, changed, tmp_path, "--ranks", 4)

    # The layouts dcpp wrote (the same cuts DTensor makes), which torch then
    # reads as Shard(1), Shard(0) of other sizes, or Replicate.
    assert chunks(by_rows, "model.rows") == [
        ([0, 0], [3, 7]), ([3, 0], [3, 7]), ([6, 0], [3, 7]), ([9, 0], [1, 7])]
    assert chunks(by_rows, "model.few_rows") == [
        ([0, 0], [1, 5]), ([1, 0], [1, 5]), ([2, 0], [1, 5]), ([3, 0], [0, 5])]
    assert chunks(by_rows, "model.vec") == [([0], [3]), ([3], [3]), ([6], [3]), ([9], [0])]
    assert chunks(by_rows, "scalar") == [([], [])]
    assert chunks(by_cols, "model.rows") == [
        ([0, 0], [10, 2]), ([0, 2], [10, 2]), ([0, 4], [10, 2]), ([0, 6], [10, 1])]
    assert chunks(by_cols, "model.vec") == [([0], [9])]  # 1-D: replicated, written once
    assert sorted(re.sub(r"\.[0-9a-f]{8}\.distcp$", ".distcp", f)  # the save's tag
                  for f in os.listdir(by_cols) if f.endswith(".distcp")) == sorted(
        f"__{r}_{i}.distcp" for r in range(4) for i in range(2))

    launch_torch("torch-load", LOAD_WORLD, tmp_path, by_rows, by_cols,
                 "--expect-mismatch", PERTURBED_FQN, changed)
