#!/usr/bin/env python3
"""Writes the torch.save fixtures that zip_test.cc compares dcpp's writer against.

Each fixture is a real torch.save archive (zip_torch_<case>.zip) plus a manifest
(zip_torch_<case>.txt) that lists, from Python's own zipfile module, the
records in archive order with their bytes in hex, so the C++ test can lay the
same records out and compare every byte without trusting dcpp's reader.

Manifest format (one item per line):
  archive <archive name>
  alignment <n>
  compute_crc32 <0|1>
  record <name> <size> <hex bytes, or '-' when omitted>
  gap <offset> <size>        (big case only: bytes cut out of the .bin file)

The big case saves a tensor of 2**32 + 1 bytes so that both zip64 paths are
exercised (a record of size >= 0xFFFFFFFF and records whose local header
offset is >= 0xFFFFFFFF). Its data is all zeros and is cut out of the stored
file (zip_torch_big_skeleton.bin), leaving only headers; CRCs are disabled so
that the C++ side never has to read the 4 GiB.

Usage: python3 make_zip_testdata.py [--big] [--out DIR]   (needs torch; --big needs
~5 GiB of memory and ~5 GiB of free disk in the temp directory)
"""
import io
import os
import struct
import sys
import tempfile
import zipfile

import torch
import torch.utils.serialization

OUT = os.path.dirname(os.path.abspath(__file__))


def raw_read(archive_bytes, info):
    # zipfile.read would verify CRCs, which are 0 when torch skipped them.
    offset = info.header_offset
    nl, el = struct.unpack("<HH", archive_bytes[offset + 26:offset + 30])
    start = offset + 30 + nl + el
    return archive_bytes[start:start + info.file_size]


def manifest(archive_bytes, alignment, crc):
    lines = ["archive archive", f"alignment {alignment}", f"compute_crc32 {int(crc)}"]
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as z:
        for info in z.infolist():
            name = info.filename.split("/", 1)[1]
            lines.append(f"record {name} {info.file_size} {raw_read(archive_bytes, info).hex() or '-'}")
    return lines


def save(obj, alignment=64, crc=True):
    torch.utils.serialization.config.save.storage_alignment = alignment
    torch.serialization.set_crc32_options(crc)
    try:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()
    finally:
        torch.utils.serialization.config.save.storage_alignment = 64
        torch.serialization.set_crc32_options(True)


def write_case(case, data, lines):
    with open(os.path.join(OUT, f"zip_torch_{case}.zip"), "wb") as f:
        f.write(data)
    with open(os.path.join(OUT, f"zip_torch_{case}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def small_cases():
    t = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    cases = {
        "4x4": (t, 64, True),
        "nocrc": (t, 64, False),
        "multi": ({"e": torch.empty(0), "x": torch.ones(3),
                   "y": torch.arange(1000, dtype=torch.int64)}, 64, True),
        "align100": (torch.ones(3), 100, True),
    }
    for case, (obj, alignment, crc) in cases.items():
        data = save(obj, alignment, crc)
        write_case(case, data, manifest(data, alignment, crc))


def big_case():
    big = torch.zeros(2**32 + 1, dtype=torch.uint8)
    small = torch.arange(4, dtype=torch.int32)
    torch.serialization.set_crc32_options(False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # Saved to a file, not a buffer, to keep memory down; torch then
            # names the archive after the file ("big"); the manifest says so.
            path = os.path.join(tmp, "big.pt")
            torch.save({"big": big, "small": small}, path)
            del big
            write_big_skeleton(path)
    finally:
        torch.serialization.set_crc32_options(True)


def write_big_skeleton(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f, zipfile.ZipFile(path) as z:
        infos = z.infolist()
        big_info = next(i for i in infos if i.file_size >= 0xFFFFFFFF)
        f.seek(big_info.header_offset + 26)
        nl, el = struct.unpack("<HH", f.read(4))
        gap_offset = big_info.header_offset + 30 + nl + el
        gap_size = big_info.file_size
        f.seek(0)
        head = f.read(gap_offset)
        f.seek(gap_offset + gap_size)
        tail = f.read()
        assert len(head) + gap_size + len(tail) == size
        # Member offsets below the gap index `head`; the rest index `tail`.
        def read(info):
            start = info.header_offset
            buf, base = (head, 0) if start < gap_offset else (tail, gap_offset + gap_size)
            nl2, el2 = struct.unpack("<HH", buf[start - base + 26:start - base + 30])
            data_at = start - base + 30 + nl2 + el2
            return buf[data_at:data_at + info.file_size]
        lines = [f"archive {infos[0].filename.split('/', 1)[0]}", "alignment 64",
                 "compute_crc32 0"]
        for info in infos:
            name = info.filename.split("/", 1)[1]
            if info is big_info:
                lines.append(f"record {name} {info.file_size} -")
            else:
                lines.append(f"record {name} {info.file_size} {read(info).hex() or '-'}")
        lines.append(f"gap {gap_offset} {gap_size}")
    with open(os.path.join(OUT, "zip_torch_big_skeleton.bin"), "wb") as f:
        f.write(head + tail)
    with open(os.path.join(OUT, "zip_torch_big_skeleton.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    # --out DIR writes elsewhere (zip_test.cc does, to check the installed
    # torch against the writer as well as the committed files).
    if "--out" in sys.argv:
        OUT = sys.argv[sys.argv.index("--out") + 1]
        os.makedirs(OUT, exist_ok=True)
    small_cases()
    if "--big" in sys.argv[1:]:
        big_case()
