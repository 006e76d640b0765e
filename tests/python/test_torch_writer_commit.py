"""dcpp.torch.FileSystemWriter saves atomically and exclusively, as dcpp's own
save: data files under names unique to each save, .metadata committed by
rename, what the committed metadata does not reference reclaimed, and a
directory lock that one save holds at a time."""
import gc
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.planner import SavePlan

import dcpp
import dcpp.torch as dtorch
from test_torch_storage import assert_state_equal, failures, state, zeros_like

WORKER = os.path.join(os.path.dirname(__file__), "save_race_worker.py")
LOCK_LINE = re.compile(
    r"pid=(\d+) host=\S+ started=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ save=([0-9a-f]{8})\n")


def loads_as(ckpt, expected):
    """ckpt loads as `expected` through dcpp's reader and torch's own."""
    for reader in (dtorch.FileSystemReader(ckpt), dcp.FileSystemReader(ckpt)):
        out = zeros_like(expected)
        dcp.load(out, storage_reader=reader)
        assert_state_equal(expected, out)


def referenced(ckpt, metadata=".metadata"):
    md = dtorch.FileSystemReader(ckpt).read_metadata(
        **({} if metadata == ".metadata" else {"rank": int(metadata[2:].split(".")[0])}))
    return {info.relative_path for info in md.storage_data.values()}


def current_sidecar(ckpt):
    """The sidecar checksum file the committed .metadata names."""
    md = dtorch.FileSystemReader(ckpt).read_metadata()
    return f".checksums.{md.storage_meta.save_id}"


def only_committed_files_remain(ckpt, metadata=".metadata", lock=".dcpp.lock", others=()):
    names = set(os.listdir(ckpt))
    expected = {metadata, lock, *others} | referenced(ckpt, metadata)
    if metadata == ".metadata" and current_sidecar(ckpt) in names:
        expected.add(current_sidecar(ckpt))
    assert names == expected, sorted(names)


@pytest.mark.parametrize("overwrite", [False, True])
def test_writer_covers_metadata_and_values_with_a_sidecar(ckpt, overwrite):
    if overwrite:
        dcp.save(state(0), storage_writer=dtorch.FileSystemWriter(ckpt))
        old_sidecar = current_sidecar(ckpt)
    dcp.save(state(1), storage_writer=dtorch.FileSystemWriter(ckpt))
    sidecar = current_sidecar(ckpt)
    assert os.path.exists(os.path.join(ckpt, sidecar))
    if overwrite:
        assert not os.path.exists(os.path.join(ckpt, old_sidecar))  # reclaimed
    assert dcpp.verify(ckpt).ok
    # An edit of .metadata that still decodes is caught through the sidecar.
    path = os.path.join(ckpt, ".metadata")
    data = bytearray(open(path, "rb").read())
    at = data.find(b"__0_")
    data[at + 2] = ord("1") if data[at + 2] != ord("1") else ord("2")
    open(path, "wb").write(bytes(data))
    with pytest.raises(dcpp.CorruptCheckpointError, match="checksum"):
        dcpp.load(ckpt)
    assert not dcpp.verify(ckpt).ok


@pytest.mark.parametrize("old_writer", ["torch", "dcpp"])
def test_overwrite_keeps_the_old_checkpoint_until_the_commit_then_reclaims_it(ckpt, old_writer):
    old, new = state(0), state(1)
    writer = dcp.FileSystemWriter if old_writer == "torch" else dtorch.FileSystemWriter
    dcp.save(old, storage_writer=writer(ckpt, thread_count=3))
    old_files = set(os.listdir(ckpt))
    seen_before_commit = []

    class Peek(dtorch.FileSystemWriter):
        def finish(self, metadata, results):
            # Every rank has written; nothing is committed yet.
            names = set(os.listdir(ckpt))
            new_files = {f for f in names - old_files if f.endswith(".distcp")}
            assert new_files and all(f".{self._tag}." in f for f in new_files)
            assert old_files <= names  # nothing of the old checkpoint touched
            loads_as(ckpt, old)
            seen_before_commit.append(True)
            super().finish(metadata, results)

    dcp.save(new, storage_writer=Peek(ckpt))
    assert seen_before_commit
    loads_as(ckpt, new)
    only_committed_files_remain(ckpt)
    assert not (referenced(ckpt) & old_files)


def test_leftovers_of_killed_saves_are_reclaimed_and_nothing_else(ckpt):
    dcp.save(state(0), storage_writer=dtorch.FileSystemWriter(ckpt))
    # What killed saves leave (data files, temporary metadata; dcpp's and
    # torch's names), and files that are none of the writer's business.
    leftovers = ["__0_0.deadbeef.distcp", "__7_3.0badc0de.distcp", "__1_0.distcp",
                 ".metadata.0badc0de.tmp", ".metadata.tmp"]
    unrelated = ["notes.txt", "__0_0.distcp.bak", "model.distcp", "__0.metadata", "sub"]
    for name in leftovers + unrelated[:-1]:
        (ckpt / name).write_bytes(b"x" * 1000)
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "__0_0.distcp").write_bytes(b"x")
    dcp.save(state(1), storage_writer=dtorch.FileSystemWriter(ckpt))
    loads_as(ckpt, state(1))
    only_committed_files_remain(ckpt, others=unrelated)
    assert (ckpt / "sub" / "__0_0.distcp").exists()


def test_leftovers_in_a_directory_without_a_checkpoint_are_reclaimed(ckpt):
    ckpt.mkdir()
    (ckpt / "__0_0.deadbeef.distcp").write_bytes(b"half a save")
    (ckpt / ".metadata.deadbeef.tmp").write_bytes(b"")
    dcp.save(state(2), storage_writer=dtorch.FileSystemWriter(ckpt))
    loads_as(ckpt, state(2))
    only_committed_files_remain(ckpt)


def race(tmp_path, ckpt, seeds, hold, lock_timeout):
    """Runs one save_race_worker per seed, started together; returns
    {seed: (exit code, output)}."""
    ready = tmp_path / f"ready-{len(os.listdir(tmp_path))}"
    ready.mkdir()
    procs = {
        seed: subprocess.Popen(
            [sys.executable, WORKER, str(ckpt), str(seed), str(ready), str(len(seeds)),
             str(hold), str(lock_timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for seed in seeds
    }
    return {seed: (p.wait(timeout=300), p.stdout.read()) for seed, p in procs.items()}


@pytest.mark.parametrize("existing", [False, True], ids=["new_dir", "existing_checkpoint"])
def test_two_racing_writers_one_fails_naming_the_holder(tmp_path, ckpt, existing):
    if existing:
        dcp.save(state(0), storage_writer=dtorch.FileSystemWriter(ckpt))
    results = race(tmp_path, ckpt, [1, 2], hold=2.0, lock_timeout=0)
    winners = [seed for seed, (code, _) in results.items() if code == 0]
    losers = [seed for seed, (code, _) in results.items() if code != 0]
    assert len(winners) == 1 and len(losers) == 1, results
    (winner,), (loser,) = winners, losers
    out = results[loser][1]
    assert "FAILED AbortedError" in out and "is locked by another save" in out, out
    winner_pid = re.search(r"SAVED pid=(\d+)", results[winner][1]).group(1)
    assert f"pid={winner_pid} " in out, out
    # The committed checkpoint is entirely the winner's; the loser wrote nothing.
    loads_as(ckpt, state(winner))
    only_committed_files_remain(ckpt)


def test_a_writer_with_lock_timeout_waits_for_the_holder(tmp_path, ckpt):
    results = race(tmp_path, ckpt, [1, 2], hold=1.0, lock_timeout=60)
    assert all(code == 0 for code, _ in results.values()), results
    # Both committed, one after the other: the checkpoint is one of them, whole.
    matches = []
    for seed in (1, 2):
        try:
            loads_as(ckpt, state(seed))
            matches.append(seed)
        except AssertionError:
            pass
    assert len(matches) == 1, matches
    only_committed_files_remain(ckpt)


def hold_lock(ckpt, **kwargs):
    """A writer that has gone as far as global planning: it holds the lock."""
    writer = dtorch.FileSystemWriter(ckpt, **kwargs)
    writer.set_up_storage_writer(True, rank=0, use_collectives=True)
    plan = writer.prepare_local_plan(SavePlan([]))
    writer.prepare_global_plan([plan])
    return writer


def test_contention_names_the_holder_and_a_dropped_writer_releases_the_lock(ckpt):
    holder = hold_lock(ckpt)
    line = (ckpt / ".dcpp.lock").read_text()
    m = LOCK_LINE.fullmatch(line)
    assert m and m.group(1) == str(os.getpid()) and m.group(2) == holder._tag, line
    with pytest.raises(CheckpointException) as e:
        dcp.save(state(1), storage_writer=dtorch.FileSystemWriter(ckpt))
    (err,) = failures(e.value)
    assert isinstance(err, dcpp.AbortedError) and line.strip() in str(err), err
    with pytest.raises(CheckpointException, match="still held after waiting 0.3 s"):
        dcp.save(state(1), storage_writer=dtorch.FileSystemWriter(ckpt, lock_timeout=0.3))
    assert not any(f.endswith(".distcp") for f in os.listdir(ckpt))  # nothing written
    # A save that failed on another rank never reaches finish(); its writer,
    # once dropped, lets go of the lock.
    del holder
    gc.collect()
    dcp.save(state(1), storage_writer=dtorch.FileSystemWriter(ckpt))
    loads_as(ckpt, state(1))
    # Never removed; emptied by its last holder.
    assert (ckpt / ".dcpp.lock").read_bytes() == b""


def test_reusing_a_writer_releases_the_lock_of_its_failed_save(ckpt):
    writer = hold_lock(ckpt)
    writer.reset()
    dcp.save(state(1), storage_writer=dtorch.FileSystemWriter(ckpt))
    writer = hold_lock(ckpt)
    dcp.save(state(2), storage_writer=writer)  # set_up_storage_writer releases, relocks
    loads_as(ckpt, state(2))


def test_a_save_that_fails_writing_releases_the_lock_and_leaves_the_checkpoint(ckpt):
    dcp.save(state(0), storage_writer=dtorch.FileSystemWriter(ckpt))
    before = set(os.listdir(ckpt))
    bad = {"c": torch.zeros(3, dtype=torch.complex32)}  # dcpp cannot write this dtype
    failed = dtorch.FileSystemWriter(ckpt)  # kept alive: its lock must go all the same
    with pytest.raises(CheckpointException):
        dcp.save(bad, storage_writer=failed)
    assert set(os.listdir(ckpt)) == before
    loads_as(ckpt, state(0))
    dcp.save(state(1), storage_writer=dtorch.FileSystemWriter(ckpt, lock_timeout=0))
    loads_as(ckpt, state(1))
    assert failed is not None


def test_overwrite_false_is_checked_again_under_the_lock(ckpt):
    late = dtorch.FileSystemWriter(ckpt, overwrite=False)
    late.set_up_storage_writer(True, rank=0, use_collectives=True)
    plan = late.prepare_local_plan(SavePlan([]))  # no checkpoint yet
    dcp.save(state(1), storage_writer=dtorch.FileSystemWriter(ckpt))  # another save commits
    with pytest.raises(dcpp.AlreadyExistsError):
        late.prepare_global_plan([plan])
    dcp.save(state(2), storage_writer=dtorch.FileSystemWriter(ckpt, lock_timeout=0))
    loads_as(ckpt, state(2))


def test_without_collectives_a_rank_commits_and_reclaims_its_own_files(ckpt):
    for seed in (1, 2):
        dcp.save(state(seed), storage_writer=dtorch.FileSystemWriter(ckpt),
                 no_dist=True, use_collectives=False)
    loads_as(ckpt, state(2))
    only_committed_files_remain(ckpt, metadata="__0.metadata", lock="__0.dcpp.lock")


def test_writer_takes_torchs_positional_arguments_in_torchs_order(ckpt):
    import inspect

    torch_params = list(inspect.signature(dcp.FileSystemWriter.__init__).parameters)
    ours = list(inspect.signature(dtorch.FileSystemWriter.__init__).parameters)
    assert ours[: len(torch_params)] == torch_params
    with pytest.raises(ValueError, match="lock_timeout"):
        dtorch.FileSystemWriter(ckpt, lock_timeout=-1)
    from torch.distributed.checkpoint.filesystem import SerializationFormat

    with pytest.raises(ValueError, match="torch.save"):
        dtorch.FileSystemWriter(ckpt, serialization_format=SerializationFormat.SAFETENSORS)


def test_the_lock_excludes_dcpps_own_save_both_ways(ckpt):
    import threading

    # This writer holds the lock: dcpp.save (the C++ Save) is refused, naming it.
    holder = hold_lock(ckpt)
    with pytest.raises(dcpp.AbortedError, match=f"pid={os.getpid()} .* save={holder._tag}"):
        dcpp.save({"w": torch.ones(3)}, ckpt)
    del holder
    gc.collect()

    # dcpp.save holds it (paused in its first progress report, while it
    # writes): this writer is refused, naming it.
    writing, go_on = threading.Event(), threading.Event()

    def progress(*args):
        if not writing.is_set():
            writing.set()
            go_on.wait(60)

    cpp_save = threading.Thread(target=dcpp.save, args=({"w": torch.ones(3)}, ckpt),
                                kwargs={"progress": progress})
    cpp_save.start()
    try:
        assert writing.wait(60)
        with pytest.raises(CheckpointException, match=f"pid={os.getpid()} .*save=[0-9a-f]{{8}}"):
            dcp.save({"w": torch.zeros(3)}, storage_writer=dtorch.FileSystemWriter(ckpt))
    finally:
        go_on.set()
        cpp_save.join()
    out = {"w": torch.zeros(3)}
    dcp.load(out, storage_reader=dtorch.FileSystemReader(ckpt))
    assert out["w"].tolist() == [1.0, 1.0, 1.0]
    dcp.save({"w": torch.full((3,), 2.0)}, storage_writer=dtorch.FileSystemWriter(ckpt))
    only_committed_files_remain(ckpt)
