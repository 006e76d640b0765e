"""Damaged checkpoints and what each reader makes of them.

Each case writes a small checkpoint (with torch's dcp.save or with
dcpp.save), damages it the way disks, bugs and attackers do, and hands it to
every reader in a child process with a time limit:

  torch        torch 2.13's dcp.load with its own FileSystemReader
  dcpp.load    dcpp.load(path) (a new state dict from .metadata)
  dcpp.torch   torch's dcp.load through dcpp.torch.FileSystemReader
  verify       `dcpp verify` (exit 0 clean, 1 damage found)

An outcome is one of: `error` (a clean exception / exit 1), `ok` (every
value equals what was saved), `WRONG` (loaded without complaint, values
differ), `HANG` (did not finish in time), `CODE RAN` (the pickle's payload
executed), `CRASH` (the process died). dcpp must never give WRONG, HANG,
CODE RAN or CRASH. test_damage_matrix.py asserts that; run this file to
print the table for docs/reliability.md:

    python3 tests/python/damage_matrix.py [--cli build/tools/dcpp/dcpp]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
READERS = ("torch", "dcpp.load", "dcpp.torch", "verify")
MARKER = "pwned"
TIMEOUT_S = 30


def find_cli() -> str | None:
    env = os.environ.get("DCPP_CLI")
    if env:
        return env
    for build in ("build", "build-asan"):
        p = ROOT / build / "tools" / "dcpp" / "dcpp"
        if p.exists():
            return str(p)
    return shutil.which("dcpp")


# --- the state and its checkpoints -----------------------------------------

def make_state():
    import torch

    g = torch.Generator().manual_seed(7)
    return {
        # Square, so swapped strides read back as the transpose.
        "w": torch.arange(16, dtype=torch.float32).reshape(4, 4) + 0.5,
        "big": torch.randn(128, 64, generator=g),
        "step": 42,
        "name": "run-1",
    }


def write_checkpoint(writer: str, path: Path, zstd: bool = False) -> None:
    import torch.distributed.checkpoint as dcp

    state = make_state()
    if writer == "torch":
        kwargs = {}
        if zstd:
            from torch.distributed.checkpoint._extension import ZStandard

            kwargs["_extensions"] = [ZStandard()]
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(path), **kwargs), no_dist=True)
    else:
        import dcpp

        dcpp.save(state, path, transforms=["stream.zstd/1"] if zstd else [])


def read_md(path: Path):
    # The harness made this file itself: unpickling it here is safe.
    with open(path / ".metadata", "rb") as f:
        return pickle.load(f)


def write_md(path: Path, md) -> None:
    with open(path / ".metadata", "wb") as f:
        pickle.dump(md, f)


def item_range(path: Path, fqn: str):
    """(file, offset, length) of the first stored item of `fqn`."""
    md = read_md(path)
    for index, info in md.storage_data.items():
        if index.fqn == fqn:
            return path / info.relative_path, info.offset, info.length
    raise KeyError(fqn)


def patch_in_item(path: Path, fqn: str, old: bytes, new: bytes) -> None:
    file, offset, length = item_range(path, fqn)
    data = bytearray(file.read_bytes())
    at = data.find(old, offset, offset + length)
    assert at >= 0, f"{old!r} not found in {fqn}'s bytes"
    data[at : at + len(old)] = new
    file.write_bytes(bytes(data))


# --- the damage -------------------------------------------------------------

def flip_tensor_byte(path: Path) -> None:
    import torch

    raw = (torch.arange(16, dtype=torch.float32) + 0.5).numpy().tobytes()
    probe = raw[20:28]
    file, offset, length = item_range(path, "w")
    data = bytearray(file.read_bytes())
    at = data.find(probe, offset, offset + length)
    assert at >= 0
    data[at + 2] ^= 0x10
    file.write_bytes(bytes(data))


def swap_strides(path: Path) -> None:
    # data.pkl of a 4x4 tensor holds its stride (4, 1) as BININT1 4,
    # BININT1 1, TUPLE2; (1, 4) reads the transpose.
    patch_in_item(path, "w", b"K\x04K\x01\x86", b"K\x01K\x04\x86")


def flip_value_byte(path: Path) -> None:
    patch_in_item(path, "step", b"K*", b"K+")  # BININT1 42 -> 43


def flip_compressed_byte(path: Path) -> None:
    file, offset, length = item_range(path, "big")
    data = bytearray(file.read_bytes())
    data[offset + length // 2] ^= 0x01
    file.write_bytes(bytes(data))


def truncate_data_file(path: Path) -> None:
    file, _, _ = item_range(path, "big")
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def remove_data_file(path: Path) -> None:
    file, _, _ = item_range(path, "big")
    file.unlink()


def truncate_metadata(path: Path) -> None:
    data = (path / ".metadata").read_bytes()
    (path / ".metadata").write_bytes(data[: len(data) * 2 // 3])


def oversized_declaration(path: Path) -> None:
    # A few edited numbers claim a 40000 x 40000 float32 tensor (6.4 GB)
    # for a 16-element chunk.
    md = read_md(path)
    for fqn, entry in md.state_dict_metadata.items():
        if fqn == "w":
            entry.size = type(entry.size)([40000, 40000])
            entry.chunks[0].sizes = type(entry.chunks[0].sizes)([40000, 40000])
    write_md(path, md)


def hostile_pickle(path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {path.parent / MARKER}",))

    (path / ".metadata").write_bytes(pickle.dumps(Payload()))


def fifo_data_file(path: Path) -> None:
    file, _, _ = item_range(path, "big")
    file.unlink()
    os.mkfifo(file)


def symlink_escape(path: Path) -> None:
    # relative_path "sub/<file>" where sub is a link to a directory outside
    # the checkpoint: the bytes are valid, their location is not.
    outside = path.parent / "outside"
    outside.mkdir()
    md = read_md(path)
    for index, info in md.storage_data.items():
        src = path / info.relative_path
        if src.exists():
            shutil.move(str(src), outside / info.relative_path)
        info.relative_path = "sub/" + info.relative_path
    write_md(path, md)
    os.symlink(outside, path / "sub")


@dataclass
class Case:
    name: str
    damage: Callable[[Path], None]
    zstd: bool = False
    expect_ok: bool = False  # the control: every reader must load it
    may_hang: bool = False  # readers run in a child process with a time limit


CASES = [
    Case("none (control)", lambda p: None, expect_ok=True),
    Case("one flipped bit in tensor data", flip_tensor_byte),
    Case("swapped strides in data.pkl", swap_strides),
    Case("flipped byte in a pickled value", flip_value_byte),
    Case("flipped byte in zstd data", flip_compressed_byte, zstd=True),
    Case("data file truncated", truncate_data_file),
    Case("data file missing", remove_data_file),
    Case(".metadata truncated", truncate_metadata),
    Case("oversized size in .metadata", oversized_declaration),
    Case("code in .metadata pickle", hostile_pickle),
    Case("FIFO as data file", fifo_data_file, may_hang=True),
    Case("symlinked dir leaves checkpoint", symlink_escape),
]


# --- readers ---------------------------------------

def evaluate(reader: str, path: str, expected: str) -> tuple[str, str]:
    """Runs one Python reader in this process: (outcome, detail)."""
    import torch

    want = torch.load(expected, weights_only=True)
    try:
        if reader == "dcpp.load":
            import dcpp

            got = dcpp.load(path, tensors="torch")
        else:
            import torch.distributed.checkpoint as dcp

            got = {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else v) for k, v in want.items()}
            got["step"], got["name"] = 0, ""
            if reader == "torch":
                dcp.load(got, checkpoint_id=path, no_dist=True)
            else:
                import dcpp.torch

                dcp.load(got, storage_reader=dcpp.torch.FileSystemReader(path), no_dist=True)
    except BaseException as e:  # torch's CheckpointException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return "error", f"{type(e).__name__}: {e}"[:300]
    return ("ok" if _same(want, got) else "WRONG"), ""


def _same(want, got) -> bool:
    import torch

    for k, v in want.items():
        g = got.get(k)
        if isinstance(v, torch.Tensor):
            g = torch.as_tensor(g)
            if g.shape != v.shape or g.dtype != v.dtype or not torch.equal(g, v):
                return False
        elif g != v:
            return False
    return True


CHILD = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[4])
from damage_matrix import evaluate
outcome, detail = evaluate(sys.argv[1], sys.argv[2], sys.argv[3])
print(json.dumps({"outcome": outcome, "detail": detail}))
"""


def run_reader(reader: str, ckpt: Path, expected: Path, cli: str | None,
               in_process: bool = False) -> tuple[str, str]:
    """One reader on one damaged checkpoint. `in_process` runs a Python
    reader here (faster; only for readers that cannot hang)."""
    marker = ckpt.parent / MARKER
    if in_process and reader != "verify":
        outcome = evaluate(reader, str(ckpt), str(expected))
        if marker.exists():
            marker.unlink()
            return "CODE RAN", "the pickle's payload executed"
        return outcome
    if reader == "verify":
        if not cli:
            return "n/a", "dcpp CLI not found"
        args = [cli, "verify", str(ckpt)]
    else:
        args = [sys.executable, "-c", CHILD, reader, str(ckpt), str(expected), str(Path(__file__).parent)]
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "HANG", f"no answer in {TIMEOUT_S} s"
    if marker.exists():
        marker.unlink()
        return "CODE RAN", "the pickle's payload executed"
    if reader == "verify":
        if p.returncode == 0:
            return "ok", p.stdout.strip()[-200:]
        if p.returncode == 1:
            return "error", p.stderr.strip()[-300:] or p.stdout.strip()[-300:]
        return "CRASH", f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
    if p.returncode != 0 or not p.stdout.strip():
        return "CRASH", f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return out["outcome"], out["detail"]


def run_case(case: Case, writer: str, workdir: Path, cli: str | None, readers=READERS,
             in_process: bool = False):
    """{reader: (outcome, detail)} for one damaged checkpoint."""
    import torch

    base = workdir / f"{writer}-{case.name.replace(' ', '_').replace('/', '_')}"
    base.mkdir(parents=True)
    expected = base / "expected.pt"
    state = make_state()
    torch.save(state, expected)
    results = {}
    for reader in readers:
        # A fresh copy per reader: a reader must not see another's leftovers.
        ckpt = base / reader / "ckpt"
        ckpt.parent.mkdir()
        write_checkpoint(writer, ckpt, zstd=case.zstd)
        case.damage(ckpt)
        results[reader] = run_reader(reader, ckpt, expected, cli, in_process and not case.may_hang)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default=find_cli(), help="the dcpp CLI (default: build/tools/dcpp/dcpp)")
    ap.add_argument("--writer", choices=("torch", "dcpp"), action="append")
    ap.add_argument("--details", action="store_true", help="print each reader's message")
    args = ap.parse_args()
    writers = args.writer or ["torch", "dcpp"]
    with tempfile.TemporaryDirectory() as tmp:
        for writer in writers:
            print(f"\nCheckpoint written by {writer}:\n")
            print("| damage | " + " | ".join(READERS) + " |")
            print("|---|" + "---|" * len(READERS))
            for case in CASES:
                res = run_case(case, writer, Path(tmp), args.cli)
                print(f"| {case.name} | " + " | ".join(res[r][0] for r in READERS) + " |")
                if args.details:
                    for r in READERS:
                        print(f"|  {r}: {res[r][1]} |")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
