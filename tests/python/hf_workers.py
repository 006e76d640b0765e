"""Multi-process side of test_safetensors.py: WORLD gloo processes save a
DTensor state dict (rows sharded unevenly, plus a 2-D sharded tensor on a
2x2 mesh when WORLD is 4) with torch's HuggingFaceStorageWriter
(save_distributed=True), with or without consolidation.

    python3 hf_workers.py WORLD CKPT {sharded|consolidated|dcp} SEED
    python3 hf_workers.py WORLD CKPT load-{sharded|consolidated} SEED
        WORLD ranks load CKPT into DTensors sharded by columns with
        dcpp.torch.HuggingFaceStorageReader and compare with global_state.

The full tensors are global_state(SEED, mode) on every rank; the test compares
what dcpp loads with it.
"""
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def global_state(seed, mode):
    g = torch.Generator().manual_seed(seed)
    sd = {
        "model.rows": torch.randn(10, 7, generator=g),
        "model.bf16": torch.randn(9, 5, generator=g).to(torch.bfloat16),
        "model.ids": torch.randint(0, 1000, (13, 3), generator=g),
        "model.grid": torch.randn(6, 9, generator=g),
    }
    if mode == "consolidated":
        # torch 2.13's consolidation fails on integer tensors (it sizes
        # elements with torch.finfo).
        del sd["model.ids"]
    return sd


def _run(rank, world, init_file, path, mode, seed):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    from torch.distributed.checkpoint import save
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    if mode.startswith("load-"):
        import dcpp.torch as dt
        from torch.distributed.checkpoint import load

        want = global_state(seed, mode[len("load-"):])
        state = {k: distribute_tensor(torch.zeros_like(v), mesh, [Shard(1)])
                 for k, v in want.items()}
        load(state, storage_reader=dt.HuggingFaceStorageReader(path, thread_count=2))
        for k, v in want.items():
            full = state[k].full_tensor()
            if not torch.equal(full.view(torch.uint8) if full.dtype == torch.bfloat16 else full,
                               v.view(torch.uint8) if v.dtype == torch.bfloat16 else v):
                print(f"MISMATCH {k}", flush=True)
                sys.exit(3)
        dist.barrier()
        dist.destroy_process_group()
        return
    state = {}
    for k, v in global_state(seed, mode).items():
        if k == "model.grid" and world == 4:
            mesh2 = init_device_mesh("cpu", (2, 2))
            state[k] = distribute_tensor(v, mesh2, [Shard(0), Shard(1)])
        else:
            state[k] = distribute_tensor(v, mesh, [Shard(0)])
    if mode == "dcp":
        save(state, checkpoint_id=path)  # a plain DCP checkpoint
    else:
        writer = HuggingFaceStorageWriter(path, save_distributed=True,
                                          enable_consolidation=(mode == "consolidated"))
        save(state, storage_writer=writer)
    dist.barrier()
    dist.destroy_process_group()


def main():
    world, path, mode, seed = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    init_file = os.path.join(tempfile.mkdtemp(), "init")
    mp.spawn(_run, args=(world, init_file, path, mode, seed), nprocs=world, join=True)


if __name__ == "__main__":
    main()
