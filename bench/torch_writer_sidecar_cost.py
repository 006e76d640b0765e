"""Cost of the sidecar checksum file in dcpp.torch.FileSystemWriter: dcp.save of
20,000 small tensors with torch's writer and with dcpp.torch's, and the sidecar
step alone. Usage: python3 bench/torch_writer_sidecar_cost.py"""
import time, tempfile, torch, torch.distributed.checkpoint as dcp, dcpp.torch, dcpp
from dcpp import _dcpp
sd = {f"layer{i}.w": torch.zeros(4, 4) for i in range(20000)}
sd["step"] = 3
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter(); dcp.save(sd, storage_writer=dcp.FileSystemWriter(d + "/t"), no_dist=True); tt = time.perf_counter() - t
    t = time.perf_counter(); dcp.save(sd, storage_writer=dcpp.torch.FileSystemWriter(d + "/c"), no_dist=True); tc = time.perf_counter() - t
    data = open(d + "/c/.metadata", "rb").read()
    t = time.perf_counter(); _dcpp._write_checksum_file(d + "/c", data, sync=False); ts = time.perf_counter() - t
    print(f"20000 tensors: torch writer {tt:.2f} s, dcpp.torch writer {tc:.2f} s, sidecar alone {ts:.3f} s, metadata {len(data)/1e6:.1f} MB")
