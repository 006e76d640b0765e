#!/usr/bin/env python3
"""Writes the small checkpoints under tests/data/torch-<version>/ with
whatever torch runs this script (any version from 2.3 on), and
expected.json beside them: every entry's value, tensors as dtype, shape
and the sha256 of their bytes (row-major, little-endian).

    python make_torch_fixtures.py [OUT_ROOT]   # default: beside this file

Fixtures (each a directory):
  model_optim/  dcp.save (one process) of a small model (float32 and
                bfloat16 parameters), its Adam state (0-d step tensors,
                param_groups lists), a 0-d tensor and plain values.
  two_rank/     dcp.save on 2 gloo processes: DTensors row-sharded
                unevenly (5 rows -> 3 + 2, 7 -> 4 + 3, 3 -> 2 + 1), a
                replicated tensor, plain values.
  hf/           (torch with hf_storage only) HuggingFaceStorageWriter with
                fqn_to_index_mapping: two .safetensors files and the index.
The tests read these files with dcpp alone (tests/python/test_torch_fixtures.py).
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    return torch.__version__.split("+")[0]


def tensor_desc(t):
    t = t.detach().contiguous().cpu()
    raw = t.reshape(-1).view(torch.uint8) if t.element_size() != 1 or t.dtype != torch.uint8 \
        else t.reshape(-1)
    return {"__tensor__": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
            "sha256": hashlib.sha256(raw.numpy().tobytes()).hexdigest()}


def describe(v):
    """JSON form of a state dict: dict keys as strings, tuples as lists."""
    if isinstance(v, torch.Tensor):
        if hasattr(v, "full_tensor"):
            v = v.full_tensor()
        return tensor_desc(v)
    if isinstance(v, dict):
        return {str(k): describe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [describe(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"no JSON form for {type(v)}")


def model_optim_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.LayerNorm(6),
                                torch.nn.Linear(6, 4))
    model[2].to(torch.bfloat16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for _ in range(2):
        x = torch.randn(3, 8)
        h = model[1](model[0](x))
        model[2](h.bfloat16()).float().sum().backward()
        opt.step()
        opt.zero_grad()
    return {"model": model.state_dict(), "optim": opt.state_dict(),
            "extra": {"scalar": torch.tensor(2.5, dtype=torch.float64), "epoch": 7,
                      "name": "fixture", "ratio": 0.125, "flags": [True, None, 3]}}


def global_two_rank_state():
    g = torch.Generator().manual_seed(1)
    return {"model": {"w": torch.randn(5, 8, generator=g),
                      "b": torch.randn(7, generator=g),
                      "e": torch.randn(3, 4, generator=g).bfloat16(),
                      "rep": torch.arange(6, dtype=torch.int64)},
            "step": 11}


def _dtensor_api():
    try:
        from torch.distributed.tensor import Shard, distribute_tensor
    except ImportError:  # torch < 2.4
        from torch.distributed._tensor import Shard, distribute_tensor
    from torch.distributed.device_mesh import init_device_mesh
    return Shard, distribute_tensor, init_device_mesh


def _two_rank_worker(rank, world, init_file, path):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    Shard, distribute_tensor, init_device_mesh = _dtensor_api()
    mesh = init_device_mesh("cpu", (world,))
    full = global_two_rank_state()
    state = {"model": {k: (v if k == "rep" else distribute_tensor(v, mesh, [Shard(0)]))
                       for k, v in full["model"].items()},
             "step": full["step"]}
    dcp.save(state, checkpoint_id=path)
    # Every rank returns from save only after .metadata is written. No
    # teardown: torch 2.3.1's gloo group can spin forever in it.
    sys.stdout.flush()
    os._exit(0)


def hf_state():
    g = torch.Generator().manual_seed(2)
    return {"embed.weight": torch.randn(10, 6, generator=g),
            "layers.0.weight": torch.randn(6, 6, generator=g).bfloat16(),
            "layers.0.bias": torch.randn(6, generator=g).half(),
            "norm.scale": torch.tensor(1.5),
            "ids": torch.arange(5, dtype=torch.int32)}


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else HERE
    out = os.path.join(root, f"torch-{_version()}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    expected = {"torch": torch.__version__}

    sd = model_optim_state()
    dcp.save(sd, checkpoint_id=os.path.join(out, "model_optim"))
    expected["model_optim"] = describe(sd)

    import torch.multiprocessing as mp

    init = os.path.join(tempfile.mkdtemp(), "init")
    mp.spawn(_two_rank_worker, args=(2, init, os.path.join(out, "two_rank")), nprocs=2,
             join=True)
    expected["two_rank"] = describe(global_two_rank_state())

    try:
        from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
    except ImportError:
        HuggingFaceStorageWriter = None
    if HuggingFaceStorageWriter is not None:
        hf = hf_state()
        mapping = {k: (1 if i < 2 else 2) for i, k in enumerate(hf)}
        dcp.save(hf, storage_writer=HuggingFaceStorageWriter(os.path.join(out, "hf"),
                                                             fqn_to_index_mapping=mapping))
        expected["hf"] = describe(hf)

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(out) for n in ns)
    print(f"wrote {out} ({total} bytes)")


if __name__ == "__main__":
    main()
