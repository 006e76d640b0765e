#!/usr/bin/env python3
"""Regenerates the pickle and .metadata fixtures in this directory.

Every fixture is written by real CPython pickle (3.11) or real torch (2.13),
never by dcpp, so the C++ tests compare dcpp against the reference
implementations. Run from anywhere:

    python3 src/dcpp/format/testdata/make_testdata.py

Files written (next to this script):
  nested_p{0..5}.pkl       one plain-data object pickled at protocols 0..5
  nested.expected.txt      its canonical dump (see canon() below); the C++ test
                           prints the parsed graph the same way and compares
  torch_save_data.pkl      data.pkl taken out of a torch.save archive of an
                           OrderedDict of tensors (BINPERSID, REDUCE, ...)
  <name>.metadata          .metadata files written by dcp.save / pickle
  <name>.metadata.txt      what torch itself reads from them (see dump_metadata)

`--print-writer-cases` prints the protocol-2 bytes that the Writer test
hard-codes.
"""

import io
import math
import os
import pickle
import shutil
import struct
import sys
import zipfile
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
# Fixed checkpoint paths keep StorageMeta.checkpoint_id stable across runs.
CKPT_ROOT = "/tmp/dcpp_testdata"


# ---------------------------------------------------------------- plain pickles


def nested_object():
    shared = ["shared", 7]
    return {
        "ints": [0, 1, 255, 256, 65535, 65536, -1, -256, 2**31 - 1, -(2**31), 2**31,
                 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 2**100, -(2**100),
                 10**40, 2**2100],
        "floats": [0.0, -0.0, 1.5, -2.25, 1e300, 5e-324, math.inf, -math.inf, math.nan],
        "strings": ["", "a", "line\nbreak", "back\\slash \\u0041", "caf\u00e9 \u2603 \U0001f600",
                    "x" * 300, "nul\x00byte", "cr\r sub\x1a"],
        "bytes": [b"", b"abc", bytes(range(256)), bytearray(b"ba")],
        "consts": (None, True, False),
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)],
        "sets": [set(), {1, 2, 3}, frozenset(), frozenset({"f"})],
        "nested": {"a": {"b": {"c": [[], [[]], {}]}}, 3: "int key", (1, "t"): "tuple key"},
        "shared": [shared, shared, (shared,)],
        "big": list(range(1100)),  # more than one APPENDS batch
        "bigdict": {f"k{i}": i for i in range(1001)},  # more than one SETITEMS batch
    }


def canon(x):
    """A canonical text form of plain data; pickle_test.cc prints graphs alike."""
    if x is None:
        return "None"
    if x is True:
        return "True"
    if x is False:
        return "False"
    if isinstance(x, int):
        if -(2**63) <= x < 2**63:
            return f"int:{x}"
        return "bigint:" + pickle.encode_long(x).hex()
    if isinstance(x, float):
        return "float:" + struct.pack("<d", x).hex()
    if isinstance(x, str):
        return "str:" + x.encode("utf-8", "surrogatepass").hex()
    if isinstance(x, (bytes, bytearray)):
        return "bytes:" + bytes(x).hex()
    if isinstance(x, tuple):
        return "(" + ",".join(canon(v) for v in x) + ")"
    if isinstance(x, list):
        return "[" + ",".join(canon(v) for v in x) + "]"
    if isinstance(x, dict):
        return "{" + ",".join(canon(k) + ":" + canon(v) for k, v in x.items()) + "}"
    if isinstance(x, frozenset):
        return "frozenset{" + ",".join(canon(v) for v in x) + "}"
    if isinstance(x, set):
        return "set{" + ",".join(canon(v) for v in x) + "}"
    raise TypeError(type(x))


def write_plain_pickles():
    obj = nested_object()
    for proto in range(6):
        with open(os.path.join(HERE, f"nested_p{proto}.pkl"), "wb") as f:
            f.write(pickle.dumps(obj, protocol=proto))
    with open(os.path.join(HERE, "nested.expected.txt"), "w") as f:
        f.write(canon(obj) + "\n")


def write_torch_data_pkl():
    import torch

    sd = OrderedDict()
    sd["w"] = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    sd["b"] = torch.ones(3, dtype=torch.int64)
    buf = io.BytesIO()
    torch.save(sd, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        data = z.read(name)
    with open(os.path.join(HERE, "torch_save_data.pkl"), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- .metadata


def basic_state_dict():
    import torch

    torch.manual_seed(0)
    return {
        "model": {
            "weight": torch.nn.Parameter(torch.randn(4, 3)),  # requires_grad=True
            "bias": torch.zeros(3, dtype=torch.float64),
            "half": torch.ones(2, 2, dtype=torch.float16),
            "bf": torch.ones(3, dtype=torch.bfloat16),
            "i64": torch.arange(5),
            "i8": torch.tensor([-1, 2], dtype=torch.int8),
            "u8": torch.tensor([1, 2, 3], dtype=torch.uint8),
            "u16": torch.zeros(2, dtype=torch.uint16),
            "flags": torch.tensor([True, False]),
            "c64": torch.zeros(2, dtype=torch.complex64),
            "f8": torch.zeros(3, dtype=torch.float8_e4m3fn),
            "scalar": torch.tensor(3.5),  # 0-d
            "empty": torch.empty(0, 4),
        },
        "nested": {"list": [torch.ones(2), {"deep": torch.ones(1, 1, 2)}, "text-in-list"]},
        "name": "hello",
        "step": 42,
    }


def zstd_state_dict():
    import torch

    return {"a": torch.arange(100, dtype=torch.float32), "note": "zstd", "n": 7}


def dcp_save(name, state_dict, extensions=None):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    path = os.path.join(CKPT_ROOT, name)
    shutil.rmtree(path, ignore_errors=True)
    kwargs = {} if extensions is None else {"_extensions": extensions}
    dcp.save(state_dict, storage_writer=FileSystemWriter(path, **kwargs), no_dist=True)
    with open(os.path.join(path, ".metadata"), "rb") as f:
        return f.read()


def mem_format_code(fmt):
    import torch

    return {torch.contiguous_format: 0, torch.channels_last: 1, torch.preserve_format: 2}[fmt]


def dump_metadata(md):
    """What torch reads from a .metadata, in the line format of metadata_codec_test.cc."""
    import torch
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    def dims(size):
        return ",".join(str(d) for d in size)

    def storage(info):
        descs = getattr(info, "transform_descriptors", None) or []
        return f"{info.relative_path}:{info.offset}:{info.length}:{'|'.join(descs)}"

    lines = []
    version = md.__dict__.get("version")
    lines.append(f"version {version}")
    sm = md.__dict__.get("storage_meta")
    if sm is None:
        lines.append("storage_meta None")
    else:
        cid = sm.checkpoint_id
        lines.append(f"checkpoint_id {None if cid is None else os.fspath(cid)}")
        lines.append(f"save_id {sm.save_id}")
        lines.append(f"load_id {sm.load_id}")
        lines.append(f"modules {'|'.join(sm.modules)}")
    planner = md.planner_data or {}
    for fqn, meta in md.state_dict_metadata.items():
        path = planner.get(fqn, ())
        lines.append(f"entry {fqn}")
        lines.append("path " + "|".join(f"s:{p}" if isinstance(p, str) else f"i:{p}"
                                        for p in path))
        if isinstance(meta, TensorStorageMetadata):
            p = meta.properties
            assert p.layout == torch.strided
            lines.append(f"tensor {str(p.dtype).removeprefix('torch.')} rg={int(p.requires_grad)}"
                         f" mf={mem_format_code(p.memory_format)} pin={int(p.pin_memory)}"
                         f" size={dims(meta.size)}")
            for chunk in meta.chunks:
                info = md.storage_data[MetadataIndex(fqn, chunk.offsets)]
                lines.append(f"chunk {dims(chunk.offsets)} {dims(chunk.sizes)} {storage(info)}")
        else:
            info = md.storage_data[MetadataIndex(fqn)]
            lines.append(f"bytes {storage(info)}")
    return "\n".join(lines) + "\n"


def write_metadata_fixture(name, data):
    with open(os.path.join(HERE, f"{name}.metadata"), "wb") as f:
        f.write(data)
    md = pickle.loads(data)
    with open(os.path.join(HERE, f"{name}.metadata.txt"), "w") as f:
        f.write(dump_metadata(md))


def write_metadata_fixtures():
    from torch.distributed._shard.sharded_tensor import metadata as legacy
    from torch.distributed.checkpoint._extension import ZStandard
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    basic = dcp_save("basic", basic_state_dict())
    write_metadata_fixture("basic", basic)
    write_metadata_fixture("zstd", dcp_save("zstd", zstd_state_dict(), [ZStandard()]))

    # A checkpoint as written before StorageMeta and version existed: the same
    # object with those attributes removed from the instance, so the pickled
    # state lacks the keys and pickle.load falls back to the class defaults.
    md = pickle.loads(basic)
    del md.__dict__["storage_meta"]
    del md.__dict__["version"]
    write_metadata_fixture("no_storage_meta", pickle.dumps(md, protocol=4))

    # An early-2.x style file: the legacy _shard TensorProperties class, no
    # version, protocol 2 (GLOBAL, BINPUT, BINUNICODE, PosixPath parts).
    md = pickle.loads(basic)
    del md.__dict__["version"]
    for meta in md.state_dict_metadata.values():
        if isinstance(meta, TensorStorageMetadata):
            p = meta.properties
            meta.properties = legacy.TensorProperties(
                dtype=p.dtype, layout=p.layout, requires_grad=p.requires_grad,
                memory_format=p.memory_format, pin_memory=p.pin_memory)
    write_metadata_fixture("legacy_shard_p2", pickle.dumps(md, protocol=2))
    shutil.rmtree(CKPT_ROOT, ignore_errors=True)


# ---------------------------------------------------------------- writer cases


def print_writer_cases():
    import argparse

    cases = {
        "dict": {"a": [1, 2, (3, 4.5)], "b": None, "c": True, "d": False},
        "ints": [0, 255, 256, 65535, 65536, -1, -(2**31), 2**31 - 1, 2**31, 2**63 - 1, -(2**63),
                 128, -128, -129],
        "bytes": [b"abc", b"", b"\xff\x00", b"abc"],
        "globals": [OrderedDict, OrderedDict, argparse.Namespace],
        "newobj": argparse.Namespace(x=1, y="s"),
        "long_tuple": (1, 2, 3, 4, 5),
        "long_string": "x" * 300,
    }
    for name, obj in cases.items():
        data = pickle.dumps(obj, protocol=2)
        print(name, "".join(f"\\x{b:02x}" for b in data))
    many = [str(i) for i in range(300)]  # LONG_BINPUT / memo indices beyond 255
    many.append(many[-1])
    print("many_tail", "".join(f"\\x{b:02x}" for b in pickle.dumps(many, protocol=2)[-40:]))


def main():
    if "--print-writer-cases" in sys.argv:
        print_writer_cases()
        return
    write_plain_pickles()
    write_torch_data_pkl()
    write_metadata_fixtures()


if __name__ == "__main__":
    main()
