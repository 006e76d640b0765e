"""A plain-file description of a state dict, shared by the tests and the
C++ helper `dcpp_interop` (tests/interop_tool.cc).

Directory layout: manifest.json plus one .bin file per tensor. Each value is a
JSON object tagged by "t":
  none | bool(v) | int(v) | float(bits: hex of the IEEE-754 double)
  str(v) | bytes(hex) | list(items) | tuple(items) | dict(keys, values)
  tensor(dtype, shape, strides, storage_offset, file): the file holds the
    tensor's storage bytes from element 0 of the storage; the tensor starts
    at storage_offset elements and is laid out by strides (in elements).
  opaque(description): something only Python can represent (written by the
    C++ side when it loads a pickled object it keeps as raw bytes).
"""
import json
import os
import struct

import torch

__all__ = ["write_manifest", "read_manifest", "assert_same", "flat_items"]


def _float_bits(x):
    return struct.pack(">d", x).hex()


def write_manifest(value, directory):
    os.makedirs(directory, exist_ok=True)
    counter = [0]

    def enc(v):
        if v is None:
            return {"t": "none"}
        if isinstance(v, bool):
            return {"t": "bool", "v": v}
        if isinstance(v, int):
            return {"t": "int", "v": v}
        if isinstance(v, float):
            return {"t": "float", "bits": _float_bits(v)}
        if isinstance(v, str):
            return {"t": "str", "v": v}
        if isinstance(v, bytes):
            return {"t": "bytes", "hex": v.hex()}
        if isinstance(v, list):
            return {"t": "list", "items": [enc(x) for x in v]}
        if isinstance(v, tuple):
            return {"t": "tuple", "items": [enc(x) for x in v]}
        if isinstance(v, dict):
            return {"t": "dict", "keys": [enc(k) for k in v], "values": [enc(x) for x in v.values()]}
        if isinstance(v, torch.Tensor):
            name = f"{counter[0]}.bin"
            counter[0] += 1
            storage = v.untyped_storage()
            raw = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),))
            with open(os.path.join(directory, name), "wb") as f:
                f.write(raw.numpy().tobytes())
            return {
                "t": "tensor",
                "dtype": str(v.dtype).removeprefix("torch."),
                "shape": list(v.shape),
                "strides": list(v.stride()),
                "storage_offset": v.storage_offset(),
                "file": name,
            }
        raise TypeError(f"cannot describe {type(v)}")

    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(enc(value), f)


def read_manifest(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        doc = json.load(f)

    def dec(j):
        t = j["t"]
        if t == "none":
            return None
        if t in ("bool", "int", "str"):
            return j["v"]
        if t == "float":
            return struct.unpack(">d", bytes.fromhex(j["bits"]))[0]
        if t == "bytes":
            return bytes.fromhex(j["hex"])
        if t == "list":
            return [dec(x) for x in j["items"]]
        if t == "tuple":
            return tuple(dec(x) for x in j["items"])
        if t == "dict":
            return {dec(k): dec(v) for k, v in zip(j["keys"], j["values"])}
        if t == "tensor":
            dtype = getattr(torch, j["dtype"])
            with open(os.path.join(directory, j["file"]), "rb") as f:
                raw = f.read()
            storage = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
            base = torch.empty(0, dtype=dtype)
            base.set_(storage, j["storage_offset"], j["shape"], j["strides"])
            return base
        if t == "opaque":
            return ("<opaque>", j["description"])
        raise ValueError(f"unknown manifest tag {t}")

    return dec(doc)


def flat_items(state_dict):
    """FQN -> value, with DCP's own flattening."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    flat, _ = flatten_state_dict(state_dict)
    return flat


def _same(a, b, where):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{where}: {type(a)} vs {type(b)}"
        assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} vs {b.dtype}"
        assert a.shape == b.shape, f"{where}: shape {a.shape} vs {b.shape}"
        if a.numel():
            ab = a.contiguous().reshape(-1).view(torch.uint8)
            bb = b.contiguous().reshape(-1).view(torch.uint8)
            assert torch.equal(ab, bb), f"{where}: tensor bytes differ"
        return
    if isinstance(a, float) and isinstance(b, float):
        assert _float_bits(a) == _float_bits(b), f"{where}: {a!r} vs {b!r}"
        return
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__} ({a!r} vs {b!r})"
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_same(expected, actual):
    """Every flattened value equal, bit for bit, and the same set of FQNs."""
    fe, fa = flat_items(expected), flat_items(actual)
    assert sorted(fe) == sorted(fa), f"FQNs differ: only expected {sorted(set(fe) - set(fa))}, only actual {sorted(set(fa) - set(fe))}"
    for k in fe:
        _same(fe[k], fa[k], k)
