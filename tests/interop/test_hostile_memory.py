"""Hostile checkpoints that aim at memory: they must fail with a clear
error (exit 1) in bounded memory, never allocate what .metadata merely
claims, and never die of an uncaught std::bad_alloc (exit 134)."""
import dataclasses
import os
import pickle
import resource
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp


def run_limited(args, address_space, tmp_path):
    """Runs `args` with RLIMIT_AS = address_space; returns (exit code,
    stderr, peak RSS in MiB)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as o, open(err, "wb") as e:
        p = subprocess.Popen([str(a) for a in args], stdout=o, stderr=e, preexec_fn=limit)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, err.read_text(errors="replace"), usage.ru_maxrss / 1024


def test_inspect_of_a_node_bomb_under_4_gib(cli, tmp_path):
    # 17 MB of EMPTY_LIST opcodes: each a graph node. Before the pickle
    # memory cap this reached 2.8 GB and, under a 4 GiB limit, aborted.
    ckpt = tmp_path / "bomb"
    ckpt.mkdir()
    (ckpt / ".metadata").write_bytes(b"\x80\x02" + b"]" * (17 << 20) + b".")
    code, err, rss = run_limited([cli, "inspect", ckpt], 4 << 30, tmp_path)
    assert code == 1, f"exit {code}: {err}"
    assert "RESOURCE_EXHAUSTED" in err and ".metadata" in err, err
    assert "terminate" not in err
    assert rss < 1500, f"peak RSS {rss:.0f} MiB"


def small_checkpoint(path):
    dcp.save({"w": torch.arange(100, dtype=torch.float32), "step": 7},
             checkpoint_id=str(path), no_dist=True)


def edit_metadata(path, edit):
    """Rewrites torch's .metadata with the entry 'w' changed by `edit`
    (the test's own file, so pickle is fine here)."""
    with open(path / ".metadata", "rb") as f:
        md = pickle.load(f)
    md.state_dict_metadata["w"] = edit(md.state_dict_metadata["w"])
    with open(path / ".metadata", "wb") as f:
        pickle.dump(md, f)


def claim_2gib(w):  # chunk and tensor claim 2^29 float32 elements
    size = torch.Size([1 << 29])
    chunk = dataclasses.replace(w.chunks[0], sizes=size)
    return dataclasses.replace(w, size=size, chunks=[chunk])


def claim_16gib_2d(w):
    size = torch.Size([1 << 16, 1 << 16])
    chunk = dataclasses.replace(w.chunks[0], offsets=torch.Size([0, 0]), sizes=size)
    return dataclasses.replace(w, size=size, chunks=[chunk])


def claim_16gib_tensor_only(w):  # the chunks stay: they no longer tile the tensor
    return dataclasses.replace(w, size=torch.Size([1 << 32]))


@pytest.mark.parametrize("edit", [claim_2gib, claim_16gib_2d, claim_16gib_tensor_only])
def test_oversized_declarations_fail_before_allocating(cli, tmp_path, edit):
    ckpt = tmp_path / "ckpt"
    small_checkpoint(ckpt)
    edit_metadata(ckpt, edit)
    # convert reads every entry (LoadAll); 1 GiB of address space is far
    # below what the edited sizes claim.
    code, err, rss = run_limited([cli, "convert", "--quiet", ckpt, tmp_path / "out"], 1 << 30,
                                 tmp_path)
    assert code == 1, f"exit {code}: {err}"
    assert "DATA_LOSS" in err and "'w'" in err, err
    assert rss < 200, f"peak RSS {rss:.0f} MiB"


def test_oversized_declaration_through_python(tmp_path):
    pytest.importorskip("dcpp")
    ckpt = tmp_path / "ckpt"
    small_checkpoint(ckpt)
    edit_metadata(ckpt, claim_2gib)
    script = ("import dcpp, sys\n"
              "try:\n"
              "    dcpp.load_all(sys.argv[1])\n"
              "except dcpp.CorruptCheckpointError as e:\n"
              "    print(e, file=sys.stderr); sys.exit(3)\n")
    code, err, rss = run_limited([sys.executable, "-c", script, ckpt], 4 << 30, tmp_path)
    assert code == 3, f"exit {code}: {err}"
    assert "'w'" in err, err
