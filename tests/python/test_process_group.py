"""dcpp.save / dcpp.load with process_group=: dcpp's own planner across
processes, its collectives through torch.distributed (gloo) or mpi4py.

The torch processes are started by pg_workers.py, twice for the whole
module (imports cost seconds): 3 ranks save (dcpp.save and dcp.save of
DTensor Shard(0) / Shard(1) / Replicate, torch ShardedTensor and plain
leaves), fail on one rank in several ways, and exercise the group; then 2
ranks load both checkpoints resharded, with dcp.load and with dcpp.load.
The mpi4py test runs pg_mpi_worker.py under mpirun.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import dcpp
from dcpp import _groups

HERE = os.path.dirname(__file__)
WORKERS = os.path.join(HERE, "pg_workers.py")
MPI_WORKER = os.path.join(HERE, "pg_mpi_worker.py")


def _torch_gloo():
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


needs_gloo = pytest.mark.skipif(not _torch_gloo(),
                                reason="torch.distributed with gloo is not available")


class Run:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.output = proc.stdout + proc.stderr
        self.results = [json.loads(line[len("RESULT "):])
                        for line in proc.stdout.splitlines() if line.startswith("RESULT ")]

    def case(self, name):
        """{rank: result} for one case."""
        return {r["rank"]: r for r in self.results if r.get("case") == name}

    def steps(self):
        return {(r["step"], r["rank"]) for r in self.results if r.get("case") == "step"}

    def __repr__(self):
        return f"exit {self.rc}:\n{self.output}"


def launch(root, world, steps):
    init = root / f"init-{world}-{'-'.join(steps)}"
    p = subprocess.run([sys.executable, WORKERS, str(world), str(init), str(root), *steps],
                       capture_output=True, text=True, timeout=240)
    return Run(p)


SAVE_STEPS = ["save-dcpp", "save-torch", "failures", "groups", "async"]
LOAD_STEPS = ["load-dcpp-from-dcpp", "load-torch-from-dcpp", "load-dcpp-from-torch"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pg")
    saved = launch(root, 3, SAVE_STEPS)
    loaded = launch(root, 2, LOAD_STEPS) if saved.rc == 0 else None
    return root, saved, loaded


@needs_gloo
def test_every_step_ran_on_every_rank(runs):
    _, saved, loaded = runs
    assert saved.rc == 0, saved
    assert saved.steps() == {(s, r) for s in SAVE_STEPS for r in range(3)}, saved
    assert loaded is not None and loaded.rc == 0 and "MISMATCH" not in loaded.output, loaded
    assert loaded.steps() == {(s, r) for s in LOAD_STEPS for r in range(2)}, loaded


@needs_gloo
def test_dcpp_save_of_dtensors_and_sharded_tensors(runs):
    root, saved, _ = runs
    by_rank = saved.case("save-dcpp")
    assert sorted(by_rank) == [0, 1, 2], saved
    # Every rank got the same metadata back; one chunk per rank for sharded
    # leaves (narrow: an empty one on rank 2), one copy of replicated ones.
    for r in by_rank.values():
        assert r["chunks"] == {"model.rows": 3, "model.cols": 3, "model.narrow": 3,
                               "model.st": 3, "model.rep": 1, "model.bias": 1}
    md = dcpp.read_metadata(root / "dcpp")
    rows = sorted((c.offsets, c.sizes) for c in md["model.rows"].chunks)
    assert rows == [([0, 0], [4, 7]), ([4, 0], [4, 7]), ([8, 0], [2, 7])]
    cols = sorted((c.offsets, c.sizes) for c in md["model.cols"].chunks)
    assert cols == [([0, 0], [9, 2]), ([0, 2], [9, 2]), ([0, 4], [9, 1])]
    assert md["model.cols"].dtype == "bfloat16"
    assert [(c.offsets, c.sizes) for c in md["model.rep"].chunks] == [([0, 0], [6, 4])]
    # Every rank wrote its own data file.
    files = {c.storage.relative_path.split("_")[2] for c in md["model.rows"].chunks}
    assert files == {"0", "1", "2"}


@needs_gloo
def test_resharded_loads_match(runs):
    # pg_workers compares every loaded piece bit for bit on each rank: dcp.load
    # and dcpp.load of dcpp's checkpoint, dcpp.load of torch's, all into other
    # placements on 2 ranks; dcpp's load(path) too.
    _, _, loaded = runs
    assert loaded is not None, "the save run failed"
    assert loaded.rc == 0 and "MISMATCH" not in loaded.output, loaded


@needs_gloo
@pytest.mark.parametrize("case,failed_rank,error,cause", [
    ("object", 1, "InvalidArgumentError", "TypeError"),      # a lambda: cannot be pickled
    ("path", 2, "InvalidArgumentError", "TypeError"),        # path=12345
    ("load-into", 0, "InvalidArgumentError", "TypeError"),   # state dict is a list
    ("load-all", 0, "NotFoundError", None),                  # no checkpoint there
    ("partial", 1, "InvalidArgumentError", "ValueError"),    # a Partial DTensor
])
def test_a_failure_on_one_rank_is_raised_on_every_rank(runs, case, failed_rank, error, cause):
    _, saved, _ = runs
    by_rank = saved.case(case)
    assert sorted(by_rank) == [0, 1, 2], saved
    messages = {r["message"] for r in by_rank.values()}
    assert len(messages) == 1, by_rank
    (message,) = messages
    assert f"failed on rank {failed_rank} (" in message
    for rank, r in by_rank.items():
        assert not r["ok"] and r["type"] == error, r
        # The failing rank's own exception rides along as the cause.
        assert r["cause"] == (cause if rank == failed_rank else None), r


@needs_gloo
def test_a_failed_save_commits_nothing(runs):
    root, saved, _ = runs
    assert [r["value"] for r in saved.case("object-committed").values()] == [False] * 3
    assert not (root / "failures-partial" / ".metadata").exists()


@needs_gloo
def test_async_save_with_a_group(runs):
    # pg_workers checks that what loads back is what the pieces held when
    # save returned (they are overwritten right after); a rank's bad state
    # dict makes save raise on every rank.
    _, saved, _ = runs
    assert [r["entries"] for r in saved.case("async").values()] == [9] * 3, saved
    by_rank = saved.case("async-failure")
    assert len({r["message"] for r in by_rank.values()}) == 1, by_rank
    for r in by_rank.values():
        assert r["type"] == "InvalidArgumentError" and "failed on rank 2 (" in r["message"], r
    assert not (runs[0] / "async-bad" / ".metadata").exists()


@needs_gloo
def test_group_collectives_and_errors(runs):
    _, saved, _ = runs
    assert [r["ok"] for r in saved.case("collectives").values()] == [True] * 3, saved
    for case, error, text in [
            ("bad-root", "InvalidArgumentError", "Broadcast: root 3 is out of range for 3 ranks"),
            ("bad-scatter", "InvalidArgumentError", "root 0 passed 1 parts for 3 ranks"),
            ("mismatch", "InternalError",
             "rank 0 called Broadcast(root 0) but rank 1 called AllGather")]:
        by_rank = saved.case(case)
        assert sorted(by_rank) == [0, 1, 2], saved
        for r in by_rank.values():
            assert not r["ok"] and r["type"] == error and text in r["message"], r


@needs_gloo
def test_duplicates_are_independent(runs):
    _, saved, _ = runs
    assert [r["ok"] for r in saved.case("duplicate").values()] == [True] * 3, saved


@needs_gloo
def test_a_missing_rank_times_out_instead_of_hanging(runs):
    _, saved, _ = runs
    r = saved.case("timeout")[0]
    assert r["type"] == "DeadlineExceededError", r
    assert "torch.distributed process group" in r["message"] and r["seconds"] < 30, r


def test_process_group_argument_is_checked():
    with pytest.raises(TypeError, match="process_group must be None, a torch.distributed"):
        dcpp.save({"x": 1}, "/nonexistent/never-written", process_group="world")
    with pytest.raises(TypeError, match="process_group"):
        dcpp.load("/nonexistent/never-read", process_group=object())
    assert _groups.adapt(None) is None


def _mpirun():
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    if exe is None:
        pytest.skip("mpirun is not installed (apt-get install openmpi-bin)")
    try:
        import mpi4py  # noqa: F401  (mpi4py.MPI, which starts MPI, is not imported here)
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install mpi4py)")
    return exe


def test_mpi4py_communicator(tmp_path):
    mpirun = _mpirun()
    ckpt = tmp_path / "ckpt"
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    p = subprocess.run([mpirun, "-np", "2", "--oversubscribe", sys.executable, MPI_WORKER,
                        str(ckpt)], capture_output=True, text=True, timeout=120, env=env)
    run = Run(p)
    assert run.rc == 0 and "MISMATCH" not in run.output, run
    assert [r["chunks"] for r in run.case("save").values()] == [2, 2], run
    failures = run.case("failure")
    assert sorted(failures) == [0, 1], run
    for r in failures.values():
        assert not r["ok"] and r["type"] == "InvalidArgumentError", r
        assert r["message"] == ("save failed on rank 1 (INVALID_ARGUMENT: ValueError: "
                                "thread_count must be >= 1, got 0)"), r
    assert not (tmp_path / "ckpt-bad" / ".metadata").exists()

    # One process reads back what the two wrote, with dcpp and with torch.
    sys.path.insert(0, HERE)
    try:
        from pg_mpi_worker import global_arrays
    finally:
        sys.path.remove(HERE)
    full = global_arrays()
    back = dcpp.load(ckpt)
    assert back["step"] == 42
    for name, want in full.items():
        np.testing.assert_array_equal(back["model"][name], want)
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp

    sd = {"model": {k: torch.zeros(v.shape, dtype=torch.from_numpy(v).dtype)
                    for k, v in full.items()}, "step": 0}
    dcp.load(sd, checkpoint_id=str(ckpt), no_dist=True)
    for name, want in full.items():
        assert torch.equal(sd["model"][name], torch.from_numpy(want)), name
    assert sd["step"] == 42
