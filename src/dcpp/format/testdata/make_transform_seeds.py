#!/usr/bin/env python3
"""Writes the seeds of fuzz/transform_fuzz.cc: a selector byte (0 = the chain
["stream.zstd/1"]) followed by zstd frames made by Python's zstandard, one
compressed in one shot (content size recorded) and one by the stream writer
torch's ZStandard extension uses (no content size)."""
import io
import os

import numpy as np
import zstandard

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(0)
weights = (rng.standard_normal(3000) * 0.02).astype(np.float32).tobytes()
with open(os.path.join(here, "transform_zstd.seed"), "wb") as f:
    f.write(bytes([0]) + zstandard.ZstdCompressor().compress(weights))
buf = io.BytesIO()
writer = zstandard.ZstdCompressor().stream_writer(buf, closefd=False)
writer.write(b"torch stream writer frame " * 50)
writer.flush(zstandard.FLUSH_FRAME)
with open(os.path.join(here, "transform_zstd_stream.seed"), "wb") as f:
    f.write(bytes([4]) + buf.getvalue())
