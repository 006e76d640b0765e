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


TIME = "/usr/bin/time"


def _sanitized(binary):
    """Whether `binary` is built with AddressSanitizer (or another sanitizer
    whose runtime maps shadow memory up front)."""
    with open(binary, "rb") as f:
        data = f.read()
    return b"__asan_init" in data or b"__tsan_init" in data


def run_limited(args, address_space, tmp_path):
    """Runs `args` with RLIMIT_AS = address_space; returns (exit code,
    stderr, peak RSS in MiB). The peak comes from /usr/bin/time, a small
    process between: a child forked from pytest would report pytest's own
    resident set as its peak (Linux keeps the high-water mark across exec)."""
    if not os.access(TIME, os.X_OK):
        pytest.skip(f"{TIME} is not installed")
    if _sanitized(str(args[0])):
        pytest.skip("a sanitizer build reserves terabytes of address space: no RLIMIT_AS")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    p = subprocess.run([TIME, "-f", "maxrss_kb=%M"] + [str(a) for a in args], capture_output=True,
                       text=True, preexec_fn=limit, timeout=600)
    lines = p.stderr.rstrip("\n").split("\n")
    assert lines[-1].startswith("maxrss_kb="), p.stderr
    err = "\n".join(lines[:-1])
    # /usr/bin/time prints "Command exited with non-zero status N" first.
    err = "\n".join(l for l in err.split("\n") if not l.startswith("Command exited"))
    return p.returncode, err, int(lines[-1].split("=")[1]) / 1024


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
              "    dcpp.load(sys.argv[1])\n"
              "except dcpp.CorruptCheckpointError as e:\n"
              "    print(e, file=sys.stderr); sys.exit(3)\n")
    code, err, rss = run_limited([sys.executable, "-c", script, ckpt], 4 << 30, tmp_path)
    assert code == 3, f"exit {code}: {err}"
    assert "'w'" in err, err


def test_out_of_memory_in_python_is_resource_exhausted(tmp_path):
    # A 96 MiB value loaded by a process that limits itself to 64 MiB more
    # address space than it has: dcpp.ResourceExhaustedError (a
    # MemoryError), not an abort.
    pytest.importorskip("dcpp")
    script = ("import dcpp, resource, sys\n"
              "dcpp.save({'blob': b'x' * (96 << 20)}, sys.argv[1])\n"
              "vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
              "resource.setrlimit(resource.RLIMIT_AS, (vm + (64 << 20),) * 2)\n"
              "try:\n"
              "    dcpp.load(sys.argv[1])\n"
              "except dcpp.ResourceExhaustedError as e:\n"
              "    print(e, file=sys.stderr); sys.exit(3)\n")
    p = subprocess.run([sys.executable, "-c", script, tmp_path / "ckpt"], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 3, f"exit {p.returncode}: {p.stderr}"
    assert "out of memory" in p.stderr, p.stderr
