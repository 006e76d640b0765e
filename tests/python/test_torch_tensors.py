"""dcpp.save / dcpp.load with torch tensors, and interop with torch's own
dcp.save / dcp.load through torch's FileSystemWriter / FileSystemReader."""
import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

import dcpp

TORCH_DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64,
    torch.complex128, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
    torch.uint16, torch.uint32, torch.uint64, torch.bool, torch.float8_e4m3fn,
    torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu,
]


def random_tensor(shape, dtype, seed=0):
    """Random bit patterns, so any misplaced or converted byte shows."""
    g = torch.Generator().manual_seed(seed)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        raw &= 1
    return raw.view(dtype).reshape(shape)


def same_bits(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)))


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_every_torch_dtype_round_trips_through_dcpp(ckpt, dtype):
    t = random_tensor((3, 5), dtype)
    dcpp.save({"t": t}, ckpt)
    out = dcpp.load(ckpt, tensors="torch")["t"]
    assert isinstance(out, torch.Tensor) and same_bits(t, out)
    dst = torch.zeros(3, 5, dtype=dtype)
    dcpp.load({"t": dst}, ckpt)
    assert same_bits(t, dst)


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_torch_reads_what_dcpp_writes_and_back(ckpt, tmp_path, dtype):
    t = random_tensor((4, 3), dtype, 1)
    dcpp.save({"t": t, "step": 3}, ckpt)
    dst = {"t": torch.zeros(4, 3, dtype=dtype), "step": 0}
    dcp.load(dst, checkpoint_id=ckpt)
    assert same_bits(t, dst["t"]) and dst["step"] == 3

    other = tmp_path / "torch_written"
    dcp.save({"t": t, "step": 4}, checkpoint_id=other)
    out = dcpp.load(other, tensors="torch")
    assert same_bits(t, out["t"]) and out["step"] == 4


def test_numpy_dtypes_come_back_as_numpy_by_default(ckpt):
    dcpp.save({"f": torch.arange(4, dtype=torch.float32), "b": torch.ones(2, dtype=torch.bfloat16)},
              ckpt)
    out = dcpp.load(ckpt, keys=["f"])
    assert isinstance(out["f"], np.ndarray) and out["f"].tolist() == [0, 1, 2, 3]
    with pytest.raises(TypeError, match="bfloat16.*tensors='torch'"):
        dcpp.load(ckpt)


def test_views_conjugates_parameters_and_grads(ckpt):
    base = random_tensor((6, 8), torch.float32, 2)
    c = torch.complex(torch.randn(3), torch.randn(3))
    sd = {
        "t": base.t(),
        "slice": base[1:5, ::3],
        "conj": c.conj(),  # lazily conjugated: must be saved resolved
        "neg": c.conj().imag,  # a negative view
        "param": torch.nn.Parameter(torch.randn(4)),
        "expanded": torch.ones(1, 3).expand(4, 3),
    }
    dcpp.save(sd, ckpt)
    out = dcpp.load(ckpt, tensors="torch")
    for k, v in sd.items():
        assert torch.equal(out[k], v.detach().resolve_conj().resolve_neg()), k
        assert not out[k].requires_grad


def test_load_into_views_and_conjugated_destinations(ckpt):
    src = torch.randn(4, 4)
    csrc = torch.complex(torch.randn(3), torch.randn(3))
    dcpp.save({"a": src, "c": csrc}, ckpt)
    big = torch.zeros(8, 8)
    cdst = torch.zeros(3, dtype=torch.complex64).conj()
    dcpp.load({"a": big[::2, 4:], "c": cdst}, ckpt)
    assert torch.equal(big[::2, 4:], src) and big[1::2].abs().sum() == 0
    assert torch.equal(cdst, csrc)


def test_stateful_objects_at_the_top_level(ckpt, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    dcpp.save({"model": model, "optim": opt, "epoch": 2}, ckpt)

    model2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    model2(torch.randn(5, 4)).sum().backward()
    opt2.step()
    sd = {"model": model2, "optim": opt2, "epoch": 0}
    dcpp.load(sd, ckpt)
    assert sd["model"] is model2 and sd["epoch"] == 2
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 0.01
    for k in s1["state"]:
        assert torch.equal(s1["state"][k]["exp_avg"], s2["state"][k]["exp_avg"])
    # The same entries as torch's dcp.save writes for the same objects.
    dcp.save({"model": model, "optim": opt, "epoch": 2}, checkpoint_id=tmp_path / "torch")
    keys = dcpp.read_metadata(ckpt).keys()
    assert keys == dcpp.read_metadata(tmp_path / "torch").keys()
    assert "model.0.weight" in keys and "optim.state.0.exp_avg" in keys


def test_other_objects_are_pickled_like_dcp(ckpt):
    sd = {"np_scalar": np.float32(1.5), "big": 2**80, "dev": torch.device("cpu"),
          "set": {1, 2}, "dtype": torch.float16}
    dcpp.save(sd, ckpt)
    # torch reads them as DCP would have written them.
    dst = {k: None for k in sd}
    dcp.load(dst, checkpoint_id=ckpt)
    assert dst == sd
    out = dcpp.load(ckpt)
    assert out["big"] == 2**80 and out["dev"] == torch.device("cpu") and out["set"] == {1, 2}
    assert out["dtype"] == torch.float16
    # numpy scalars are not on torch's weights_only allow-list: left unopened
    # unless the caller trusts the checkpoint.
    assert isinstance(out["np_scalar"], dcpp.Opaque)
    assert out["np_scalar"].load(weights_only=False) == np.float32(1.5)
    assert dcpp.load(ckpt, weights_only=False)["np_scalar"] == np.float32(1.5)


def test_tensors_on_the_meta_device_are_rejected_with_their_name(ckpt):
    with pytest.raises(Exception, match=r"state_dict\['m'\]\['w'\]"):
        dcpp.save({"m": {"w": torch.empty(2, device="meta")}}, ckpt)
    assert not ckpt.exists() or not (ckpt / ".metadata").exists()


def test_sparse_tensors_are_rejected(ckpt):
    with pytest.raises(ValueError, match="strided"):
        dcpp.save({"s": torch.eye(3).to_sparse()}, ckpt)


def test_torch_zstd_checkpoint_loads_with_dcpp(ckpt):
    from torch.distributed.checkpoint._extension import ZStandard

    t = torch.zeros(128, 128)
    t[3, 4] = 7
    writer = dcp.FileSystemWriter(ckpt, _extensions=[ZStandard()])
    dcp.save({"t": t, "meta": {"k": "v"}}, storage_writer=writer)
    storage = dcpp.read_metadata(ckpt)["t"].chunks[0].storage
    assert storage.transform_descriptors == ["stream.zstd/1"]
    out = dcpp.load(ckpt, tensors="torch")
    assert torch.equal(out["t"], t) and out["meta"] == {"k": "v"}


def test_dcpp_zstd_checkpoint_loads_with_torch(ckpt):
    t = torch.randn(64, 64)
    dcpp.save({"t": t, "meta": [1, 2]}, ckpt, transforms=["stream.zstd/1"])
    dst = {"t": torch.zeros(64, 64), "meta": None}
    dcp.load(dst, checkpoint_id=ckpt)
    assert torch.equal(dst["t"], t) and dst["meta"] == [1, 2]
