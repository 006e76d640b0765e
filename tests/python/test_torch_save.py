"""torch.save files in both directions, against torch 2.13: a torch.save
file opens as a checkpoint (dcpp.load, dcpp convert to DCP and safetensors,
read with a safe unpickler), and `dcpp convert --to torch-save` writes what
torch's dcp_to_torch_save writes, streamed."""
import copy
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

import dcpp

HERE = os.path.dirname(__file__)

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


def _cli():
    cli = os.environ.get("DCPP_CLI") or os.path.join(HERE, "..", "..", "build", "tools", "dcpp",
                                                     "dcpp")
    if not os.path.exists(cli):
        pytest.skip("dcpp CLI not built")
    return cli


def training_state():
    """A model + Adam state dict with every kind of leaf dcpp must carry."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    embed = torch.randn(10, 8)
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    return {
        "model": model.state_dict(),  # an OrderedDict with _metadata
        "optim": opt.state_dict(),  # int-keyed state, param_groups lists
        "tied": {"embed.weight": embed, "lm_head.weight": embed},  # one storage
        "views": {
            "transposed": torch.randn(5, 7).t(),
            "offset": base[2:4],  # storage offset, storage shared with "slice"
            "slice": base[:, ::2],  # not a run of its storage
        },
        "dtypes": {
            "bf16": torch.randn(3, 4).bfloat16(),
            "f16": torch.randn(4).half(),
            "i32": torch.arange(6, dtype=torch.int32),
            "bool": torch.tensor([True, False, True]),
            "u8": torch.arange(9, dtype=torch.uint8).reshape(3, 3),
            "scalar": torch.tensor(3.5),
            "empty": torch.zeros(0, 5),
        },
        "step": 1000,
        "lr": 0.5,
        "name": "run-7",
        "flags": [1, 2, 3],
    }


def assert_equal(got, want, path="root"):
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), path
        assert got.dtype == want.dtype and got.shape == want.shape, path
        assert torch.equal(got, want), path
    elif isinstance(want, dict):
        assert isinstance(got, dict), (path, type(got))
        assert list(got.keys()) == list(want.keys()), (path, list(got), list(want))
        for k in want:
            assert_equal(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert_equal(g, w, f"{path}.{i}")
    else:
        assert got == want and type(got) is type(want), (path, got, want)


def load_dcp_as_torch(path):
    """What dcp_to_torch_save would hold: the DCP checkpoint, unflattened."""
    sd = {}
    _load_state_dict(sd, storage_reader=dcp.FileSystemReader(str(path)),
                     planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    return sd


def test_torch_save_to_dcp_loads_equal(tmp_path):
    state = training_state()
    torch.save(state, tmp_path / "model.pt")
    dcpp.convert(tmp_path / "model.pt", tmp_path / "dcp")
    # torch's DCP reads it back into the original structure.
    target = copy.deepcopy(state)
    for v in target["views"].values():
        v.zero_()
    dcp.load(target, storage_reader=dcp.FileSystemReader(str(tmp_path / "dcp")))
    assert_equal(target, state)
    # Same checkpoint as torch's own torch_save_to_dcp, entry for entry.
    torch_save_to_dcp(tmp_path / "model.pt", tmp_path / "torch_dcp")
    assert_equal(load_dcp_as_torch(tmp_path / "dcp"), load_dcp_as_torch(tmp_path / "torch_dcp"))
    # And it opens as a checkpoint directly.
    md = dcpp.read_metadata(tmp_path / "model.pt")
    assert "views.transposed" in md.keys()
    loaded = dcpp.load(tmp_path / "model.pt", tensors="torch")
    assert_equal(loaded["tied"]["lm_head.weight"], state["tied"]["embed.weight"])
    assert_equal(loaded["views"]["slice"], state["views"]["slice"])


def test_dcp_to_torch_save_matches_torch(tmp_path):
    state = training_state()
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp_path / "dcp")))
    dcpp.convert(tmp_path / "dcp", tmp_path / "out.pt", to="torch-save")
    dcp_to_torch_save(tmp_path / "dcp", tmp_path / "ref.pt")
    want = torch.load(tmp_path / "ref.pt", weights_only=False)
    assert_equal(torch.load(tmp_path / "out.pt", weights_only=True), want)
    assert_equal(torch.load(tmp_path / "out.pt", weights_only=False), want)
    # --keys and --dtype apply as in the other directions.
    out = subprocess.run([_cli(), "convert", "--quiet", str(tmp_path / "dcp"),
                          str(tmp_path / "model_bf16.pt"), "--keys", "model.*", "--dtype", "bf16"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = torch.load(tmp_path / "model_bf16.pt", weights_only=True)
    assert list(got) == ["model"]
    for k, v in want["model"].items():
        assert got["model"][k].dtype == torch.bfloat16
        assert torch.equal(got["model"][k], v.bfloat16()), k


def test_torch_save_round_trip_through_dcpp(tmp_path):
    state = training_state()
    torch.save(state, tmp_path / "model.pt")
    dcpp.convert(tmp_path / "model.pt", tmp_path / "again.pt", to="torch-save")
    torch_save_to_dcp(tmp_path / "model.pt", tmp_path / "torch_dcp")
    dcp_to_torch_save(tmp_path / "torch_dcp", tmp_path / "ref.pt")
    assert_equal(torch.load(tmp_path / "again.pt", weights_only=True),
                 torch.load(tmp_path / "ref.pt", weights_only=False))


def test_torch_save_to_safetensors_with_keys(tmp_path):
    from safetensors.torch import load_file

    state = training_state()
    torch.save(state, tmp_path / "model.pt")
    out = subprocess.run([_cli(), "convert", "--quiet", str(tmp_path / "model.pt"),
                          str(tmp_path / "st"), "--to", "safetensors"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "--keys" in out.stderr  # values cannot go in
    out = subprocess.run([_cli(), "convert", "--quiet", str(tmp_path / "model.pt"),
                          str(tmp_path / "st"), "--to", "safetensors", "--keys", "model.*",
                          "--keys", "views.*"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = load_file(tmp_path / "st" / "model-00001-of-00001.safetensors")
    want = {f"model.{k}": v for k, v in state["model"].items()}
    want.update({f"views.{k}": v for k, v in state["views"].items()})
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(2), "x": Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(dcpp.DcppError, match="system"):
        dcpp.convert(tmp_path / "evil.pt", tmp_path / "out")
    with pytest.raises(dcpp.DcppError, match="evil.pt"):
        dcpp.read_metadata(tmp_path / "evil.pt")
    out = subprocess.run([_cli(), "inspect", str(tmp_path / "evil.pt")], capture_output=True,
                         text=True)
    assert out.returncode != 0 and "is not allowed" in out.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    # A damaged file is a clear error naming it.
    torch.save({"w": torch.ones(1000)}, tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(dcpp.DcppError, match="cut.pt"):
        dcpp.read_metadata(tmp_path / "cut.pt")


def _peak_rss_mib(cmd):
    """Runs `cmd` in a fresh process and returns its child's peak RSS."""
    probe = ("import resource, subprocess, sys\n"
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "sys.stderr.write(r.stderr)\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
             "sys.exit(r.returncode)\n")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_streaming_keeps_memory_bounded(tmp_path):
    # 640 MiB of tensors; the conversions must stay under 512 MiB.
    big = {f"layers.{i}.weight": torch.full((8192, 4096), float(i)) for i in range(5)}
    big["step"] = 7
    torch.save(big, tmp_path / "big.pt")
    del big
    rss = _peak_rss_mib([_cli(), "convert", "--quiet", "--no-sync", str(tmp_path / "big.pt"),
                         str(tmp_path / "st"), "--to", "safetensors", "--keys", "layers.*"])
    assert rss <= 512, f"torch.save -> safetensors peak RSS {rss} MiB"
    dcp.save({"w": torch.ones(8192, 8192 * 5 // 2)},  # 640 MiB in one tensor
             storage_writer=dcp.FileSystemWriter(str(tmp_path / "dcp")))
    rss = _peak_rss_mib([_cli(), "convert", "--quiet", "--no-sync", str(tmp_path / "dcp"),
                         str(tmp_path / "out.pt"), "--to", "torch-save"])
    assert rss <= 512, f"DCP -> torch.save peak RSS {rss} MiB"
    got = torch.load(tmp_path / "out.pt", weights_only=True, mmap=True)
    assert got["w"].shape == (8192, 20480) and bool((got["w"] == 1).all())
