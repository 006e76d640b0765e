"""dcpp.torch.ByteShuffle: the Python side of dcpp.byteshuffle/1, checked
against the C++ encoder and decoder in both directions."""
import io

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

import dcpp.torch as dtorch
from dcpp.torch import ByteShuffle


def shuffle_stream(data: bytes, width: int, block_log2: int) -> bytes:
    out = io.BytesIO()

    class Keep(io.BytesIO):
        def close(self):
            pass

    sink = Keep()
    w = ByteShuffle(width, block_log2).transform_to(sink)
    # Uneven writes: the writer must not depend on how input is split.
    for i in range(0, len(data), 7):
        w.write(data[i:i + 7])
    w.close()
    out.write(sink.getvalue())
    return out.getvalue()


def unshuffle_stream(stored: bytes) -> bytes:
    return ByteShuffle.from_descriptor("1").transform_from(io.BytesIO(stored)).read()


def test_layout_matches_the_format_description():
    # Width 2, blocks of 2 << 1 = 4 bytes: values a, b | c, d | e and a
    # trailing byte f. Each block holds byte 0 of its values, then byte 1;
    # the last block's bytes past its last whole value stay as they are.
    data = bytes([0xA0, 0xA1, 0xB0, 0xB1, 0xC0, 0xC1, 0xD0, 0xD1, 0xE0, 0xE1, 0xFF])
    expected = bytes([2, 1, 0xA0, 0xB0, 0xA1, 0xB1, 0xC0, 0xD0, 0xC1, 0xD1, 0xE0, 0xE1, 0xFF])
    assert shuffle_stream(data, 2, 1) == expected
    assert unshuffle_stream(expected) == data


@pytest.mark.parametrize("width", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("size", [0, 1, 15, 64, 1000, 4099])
def test_python_round_trip(width, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    stored = shuffle_stream(data, width, 3)
    assert len(stored) == size + 2
    assert unshuffle_stream(stored) == data


@pytest.mark.parametrize("header", [b"", b"\x02", b"\x00\x05", b"\x11\x05", b"\x02\x1f"])
def test_bad_headers_are_rejected(header):
    with pytest.raises(ValueError, match="byteshuffle"):
        unshuffle_stream(header + b"abcd")


@pytest.mark.parametrize("dtype,shape", [
    (torch.float32, (700, 512)),  # more than one 2^18-value block
    (torch.bfloat16, (3, 1000)),
    (torch.complex128, (33,)),  # 16-byte values
    (torch.int8, (5,)),
])
def test_cpp_encoder_python_decoder(ckpt, dtype, shape):
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 256, (int(np.prod(shape)) * dtype.itemsize,), dtype=torch.uint8,
                      generator=g).view(dtype).reshape(shape)
    sd = {"t": t, "v": {"x": "y"}}
    dcp.save(sd, storage_writer=dtorch.FileSystemWriter(ckpt, transforms=["dcpp.byteshuffle/1"]))
    out = {"t": torch.zeros(shape, dtype=dtype), "v": {"x": None}}
    reader = dcp.FileSystemReader(ckpt, _extension_registry=dtorch.extension_registry())
    dcp.load(out, storage_reader=reader)
    assert torch.equal(out["t"].view(torch.uint8), t.view(torch.uint8)) and out["v"] == {"x": "y"}


@pytest.mark.parametrize("width,block_log2", [(4, 2), (2, 10), (8, 0), (3, 5)])
def test_python_encoder_cpp_decoder(ckpt, width, block_log2):
    t = torch.randn(1000, 3)
    sd = {"t": t, "v": [1, "two"]}
    writer = dcp.FileSystemWriter(ckpt, _extensions=[ByteShuffle(width, block_log2)])
    dcp.save(sd, storage_writer=writer)
    out = {"t": torch.zeros(1000, 3), "v": None}
    dcp.load(out, storage_reader=dtorch.FileSystemReader(ckpt))
    assert torch.equal(out["t"], t) and out["v"] == [1, "two"]


def test_extension_registry_knows_byteshuffle_and_zstd():
    registry = dtorch.extension_registry()
    exts = registry.from_descriptor_list(["stream.zstd/1", "dcpp.byteshuffle/1"])
    assert [e.get_descriptor() for e in exts] == ["stream.zstd/1", "dcpp.byteshuffle/1"]
    with pytest.raises(ValueError):
        registry.from_descriptor_list(["dcpp.byteshuffle/2"])
