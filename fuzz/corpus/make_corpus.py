#!/usr/bin/env python3
"""Regenerates the seed corpora of the libFuzzer targets in fuzz/.

Every seed is written by real torch (2.13) or CPython, never by dcpp (the one
exception: the dcpp.byteshuffle/1 stream transform, which only dcpp defines,
is written through torch's own writer with dcpp.torch.ByteShuffle as the
extension). Run from anywhere:

    python3 fuzz/corpus/make_corpus.py

It replaces fuzz/corpus/<target>/ for every target below. Inputs are kept
small (tiny tensors) so the whole corpus stays well under 2 MiB; libFuzzer
grows it in a work directory during campaigns (scripts/fuzz.sh).

  metadata/      .metadata of dcp.save runs: plain, nested (planner data with
                 list indices), zstd, byteshuffle, 2-rank DTensor shards,
                 and the legacy fixtures of src/dcpp/format/testdata
  pickle/        the same .metadata pickles, data.pkl of torch.save archives,
                 plain pickles at protocols 0..5
  zip/           torch.save archives and the items of a .distcp data file
  torch_pickle/  torch.save archives of tensors (views, offsets, dtypes) and
                 values; data.pkl alone (the target wraps it in an archive)
  chunk_stream/  tensor items cut from .distcp files (torch.save archives)
  transform/     selector byte + stored item of a zstd / byteshuffle save
                 (the selector picks the chain, see transform_fuzz.cc)
  json/          JSON documents (CPython's json module)
  safetensors/   files written by the safetensors package (every dtype it
                 has, 0-d and empty tensors, metadata, torch's DCP sharding
                 info); `make_corpus.py safetensors` rewrites only these
  torch_save/    whole torch.save files of state dicts (nested model and
                 optimizer, tied and transposed tensors, a strided slice,
                 dtypes, 0-d and empty tensors); `make_corpus.py torch_save`
                 rewrites only these
"""

import hashlib
import io
import json
import math
import os
import pickle
import shutil
import socket
import sys
import tempfile
import zipfile
from collections import OrderedDict

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TESTDATA = os.path.join(REPO, "src", "dcpp", "format", "testdata")
TARGETS = ["metadata", "pickle", "zip", "torch_pickle", "chunk_stream", "transform", "json",
           "safetensors", "torch_save"]
# Fixed checkpoint paths keep StorageMeta.checkpoint_id stable across runs.
ROOT = "/tmp/dcpp_fuzz_corpus"
# The transform chains of transform_fuzz.cc, as recorded in .metadata.
CHAINS = [["stream.zstd/1"], ["dcpp.byteshuffle/1"],
          ["stream.zstd/1", "dcpp.byteshuffle/1"], ["dcpp.byteshuffle/1", "stream.zstd/1"]]


def put(target, name, data):
    """Writes one seed; identical contents are kept once."""
    path = os.path.join(HERE, target, name)
    with open(path, "wb") as f:
        f.write(data)


def torch_save(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def data_pkl(archive):
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        return z.read(name)


# ---------------------------------------------------------------- state dicts


def plain_state_dict():
    g = torch.Generator().manual_seed(0)
    return {
        "model.weight": torch.randn(4, 3, generator=g),
        "model.bias": torch.arange(4, dtype=torch.float32),
        "model.emb": torch.randn(3, 2, generator=g).to(torch.bfloat16),
        "model.mask": torch.tensor([True, False, True]),
        "model.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "model.half": torch.ones(2, 2, dtype=torch.float16),
        "model.u8": torch.arange(5, dtype=torch.uint8),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "step": 42,
        "lr": 0.001,
        "name": "run-1",
        "blob": b"\x00\x01bytes",
    }


def nested_state_dict():
    # Nested dicts and lists become FQNs with planner_data paths that hold
    # strings and list indices (flatten_state_dict).
    return {
        "model": {"layers": [{"w": torch.full((2, 2), float(i))} for i in range(3)],
                  "head": {"w": torch.eye(2), "b": torch.zeros(2, dtype=torch.float64)}},
        "optim": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.ones(2, 2)}},
                  "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1],
                                    "name": None, "amsgrad": False}]},
        "extra": [1, "two", 3.0, {"four": 4}],
    }


def compressible_state_dict():
    return {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8) * 0.5,
            "b": torch.zeros(16, dtype=torch.bfloat16), "step": 3,
            "text": "repeated " * 8}


def save(name, state_dict, extensions=None):
    path = os.path.join(ROOT, name)
    shutil.rmtree(path, ignore_errors=True)
    kwargs = {} if extensions is None else {"_extensions": extensions}
    dcp.save(state_dict, storage_writer=FileSystemWriter(path, **kwargs), no_dist=True)
    return path


def read(path, name):
    with open(os.path.join(path, name), "rb") as f:
        return f.read()


def items(path):
    """(fqn, is_tensor, transform descriptors, stored bytes) of every item."""
    md = FileSystemReader(path).read_metadata()
    out = []
    for index, info in md.storage_data.items():
        meta = md.state_dict_metadata[index.fqn]
        data = read(path, info.relative_path)[info.offset:info.offset + info.length]
        descs = list(getattr(info, "transform_descriptors", None) or [])
        out.append((index.fqn, isinstance(meta, TensorStorageMetadata), descs, data))
    return sorted(out, key=lambda x: x[0])


# ---------------------------------------------------------------- 2-rank save


def _sharded_worker(rank, world, port, path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    full = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    sd = {"rows": distribute_tensor(full, mesh, [Shard(0)]),
          "cols": distribute_tensor(full.to(torch.bfloat16), mesh, [Shard(1)]),
          "uneven": distribute_tensor(torch.arange(5, dtype=torch.int32), mesh, [Shard(0)]),
          "replicated": distribute_tensor(torch.ones(3), mesh, [Replicate()]),
          "step": 9}
    dcp.save(sd, storage_writer=FileSystemWriter(path))
    torch.distributed.destroy_process_group()


def sharded_save():
    path = os.path.join(ROOT, "sharded")
    shutil.rmtree(path, ignore_errors=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_sharded_worker, args=(2, port, path), nprocs=2, join=True)
    return path


# ---------------------------------------------------------------- targets


def safetensors_seeds():
    """Seeds of the safetensors target, written by the safetensors package."""
    import torch
    from safetensors.torch import save as st_save

    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
              torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
              torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32,
              torch.uint64, torch.complex64]
    every = {f"t.{str(d).split('.')[-1]}": torch.zeros(2, 3).to(d) for d in dtypes}
    put("safetensors", "every_dtype.safetensors", st_save(every))
    put("safetensors", "scalar_and_empty.safetensors",
        st_save({"s": torch.tensor(1.5), "e": torch.zeros(0, 4), "x": torch.arange(6.0)},
                metadata={"format": "pt"}))
    put("safetensors", "empty.safetensors", st_save({}))
    info = {"w": {"saved_offsets": [2, 0]}}
    put("safetensors", "dcp_sharded.safetensors",
        st_save({"w": torch.ones(2, 4)},
                metadata={"DCP_SHARDING_INFO": json.dumps(info)}))


def torch_save_seeds():
    """Seeds of the torch_save target: torch.save files of state dicts."""
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    model = {"embed.weight": w, "head.weight": w,  # tied
             "proj": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3).t(),
             "slice": torch.arange(16, dtype=torch.int32).reshape(4, 4)[:, ::2],
             "half": torch.ones(3, dtype=torch.float16), "mask": torch.tensor([True, False]),
             "bytes": torch.arange(5, dtype=torch.uint8), "scalar": torch.tensor(7),
             "empty": torch.zeros(0, 3)}
    optim = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(3, 4)}},
             "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0],
                               "name": "g0"}]}
    put("torch_save", "state_dict.pt", torch_save({"model": model, "optim": optim, "step": 3}))
    put("torch_save", "flat.pt", torch_save({"a": torch.ones(2), "b": 1.5, "c": None}))
    put("torch_save", "empty_dict.pt", torch_save({}))


def main():
    if sys.argv[1:] == ["torch_save"]:
        shutil.rmtree(os.path.join(HERE, "torch_save"), ignore_errors=True)
        os.makedirs(os.path.join(HERE, "torch_save"))
        torch_save_seeds()
        return
    if sys.argv[1:] == ["safetensors"]:
        shutil.rmtree(os.path.join(HERE, "safetensors"), ignore_errors=True)
        os.makedirs(os.path.join(HERE, "safetensors"))
        safetensors_seeds()
        return
    for t in TARGETS:
        shutil.rmtree(os.path.join(HERE, t), ignore_errors=True)
        os.makedirs(os.path.join(HERE, t))

    from torch.distributed.checkpoint._extension import ZStandard

    saves = {"plain": save("plain", plain_state_dict()),
             "nested": save("nested", nested_state_dict()),
             "zstd": save("zstd", compressible_state_dict(), [ZStandard()]),
             "sharded": sharded_save()}
    try:
        import dcpp.torch as dt

        saves["shuffle"] = save("shuffle", compressible_state_dict(), [dt.ByteShuffle(width=4)])
        saves["shuffle_zstd"] = save("shuffle_zstd", compressible_state_dict(),
                                     [dt.ByteShuffle(width=2, block_log2=3), ZStandard()])
    except ImportError:
        print("dcpp.torch not importable: no byteshuffle seeds", file=sys.stderr)

    safetensors_seeds()
    torch_save_seeds()

    # .metadata: the metadata target and (being pickles) the pickle target.
    for name, path in saves.items():
        md = read(path, ".metadata")
        put("metadata", f"{name}.metadata", md)
        put("pickle", f"{name}.metadata", md)
    for name in ("legacy_shard_p2", "no_storage_meta"):
        put("metadata", f"{name}.metadata", read(TESTDATA, f"{name}.metadata"))

    # Items of the data files.
    seen = set()
    for name, path in saves.items():
        for fqn, is_tensor, descs, data in items(path):
            key = hashlib.sha1(data).hexdigest()[:10]
            if key in seen:
                continue
            seen.add(key)
            safe = fqn.replace("/", "_")
            if descs:
                if descs in CHAINS:
                    put("transform", f"{name}_{safe}", bytes([CHAINS.index(descs)]) + data)
                continue
            put("zip", f"{name}_{safe}.pt", data)
            if is_tensor:
                put("chunk_stream", f"{name}_{safe}.pt", data)
            else:
                put("torch_pickle", f"{name}_{safe}.pt", data)

    # torch.save archives of tensors: views, offsets, dtypes.
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "transposed": base.t(),
        "offset": base[1:, 2:],
        "strided": base[:, ::2],
        "expanded": torch.ones(1, 3).expand(4, 3),
        "zero_d": torch.tensor(1.25, dtype=torch.float64),
        "empty": torch.zeros(0, 3, dtype=torch.int16),
        "bool": torch.tensor([[True, False], [False, True]]),
        "bf16": torch.linspace(-1, 1, 7).to(torch.bfloat16),
        "int8": torch.arange(-4, 4, dtype=torch.int8),
        "uint16": torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16),
        "complex": torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64),
        "fp8": torch.zeros(4, dtype=torch.float8_e4m3fn),
        "channels_last": torch.zeros(1, 2, 2, 2).to(memory_format=torch.channels_last),
        "parameter": torch.nn.Parameter(torch.ones(2, 2)),
        "grad": torch.ones(3, requires_grad=True),
    }
    for name, t in tensors.items():
        archive = torch_save(t)
        put("torch_pickle", f"tensor_{name}.pt", archive)
        put("chunk_stream", f"tensor_{name}.pt", archive)
        put("zip", f"tensor_{name}.pt", archive)
        put("pickle", f"tensor_{name}.data.pkl", data_pkl(archive))
    # Values (the non-tensor items DCP writes with torch.save).
    shared = torch.arange(4.0)
    values = {
        "ints": [0, 1, -1, 255, 256, 2**31, -(2**63), 2**70],
        "floats": [0.5, -0.0, math.inf, math.nan, 1e-300],
        "strings": {"a": "caf\u00e9", "b": "", "c": "\U0001f600" * 3},
        "nested": OrderedDict(a=[1, (2, 3)], b={"c": None, 4: True}),
        "shared": {"x": shared, "view": shared[1:3], "again": shared},
        "state_dict": torch.nn.Linear(3, 2).state_dict(),
        "bytes": b"\x00\xff raw",
        "set": {1, 2, 3},
    }
    for name, v in values.items():
        archive = torch_save(v)
        put("torch_pickle", f"value_{name}.pt", archive)
        put("zip", f"value_{name}.pt", archive)
        # Not starting with "PK": the target wraps it in an archive that
        # holds storages data/0 and data/1.
        put("torch_pickle", f"value_{name}.data.pkl", data_pkl(archive))
        put("pickle", f"value_{name}.data.pkl", data_pkl(archive))
    for name in ("zip_torch_4x4.zip", "zip_torch_align100.zip", "zip_torch_multi.zip",
                 "zip_torch_nocrc.zip"):
        put("zip", name, read(TESTDATA, name))
    for name in ("transform_zstd.seed", "transform_zstd_stream.seed"):
        put("transform", name, read(TESTDATA, name))

    # Plain pickles at every protocol.
    obj = {"ints": [0, 1, 255, 256, 65536, -1, 2**31, 2**64, -(2**100)],
           "floats": [1.5, -0.0, math.inf], "str": ["", "x" * 260, "caf\u00e9"],
           "bytes": [b"", b"ab", bytearray(b"c")], "tuple": [(), (1,), (1, 2), (1, 2, 3)],
           "set": [set(), frozenset({1})], "memo": [[1], [1]], "none": None, True: False}
    obj["memo"].append(obj["memo"][0])
    for proto in range(6):
        put("pickle", f"plain_p{proto}.pkl", pickle.dumps(obj, protocol=proto))

    # JSON.
    docs = {
        "metadata_dump": {fqn: {"dtype": "float32", "size": [4, 3], "chunks": [
            {"offsets": [0, 0], "sizes": [4, 3], "file": "__0_0.distcp", "offset": 0,
             "length": 1234}]} for fqn in ("model.weight", "model.bias")},
        "scalars": [None, True, False, 0, -1, 1.5e300, -2.5e-300, 12345678901234567890,
                    "esc \" \\ / \b \f \n \r \t \u0001 \u00e9 \U0001f600"],
        "nested": {"a": {"b": {"c": [[[]], {}, [{"d": []}]]}}},
        "bench": {"name": "load", "gib_per_s": 3.25, "runs": [1.0, 1.1, 0.98],
                  "threads": 8, "ok": True},
    }
    for name, doc in docs.items():
        put("json", f"{name}.json", json.dumps(doc, indent=2, ensure_ascii=False).encode())
        put("json", f"{name}.ascii.json", json.dumps(doc, separators=(",", ":")).encode())
    # The first byte also picks duplicate-key handling (see json_fuzz.cc).
    put("json", "dup_keys.json", b'{"k": 1, "k": 2}')
    put("json", "dup_keys_allowed.json", b'  {"k": 1, "k": 2}')

    shutil.rmtree(ROOT, ignore_errors=True)
    total = 0
    for t in TARGETS:
        files = os.listdir(os.path.join(HERE, t))
        size = sum(os.path.getsize(os.path.join(HERE, t, f)) for f in files)
        total += size
        print(f"{t:14s} {len(files):3d} seeds {size:8d} bytes")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
