"""State dicts the interop tests save and load: a small model with its Adam
optimizer state, every dtype DCP can save, 0-d, empty and non-contiguous
tensors, nested containers and plain values."""
import torch

ALL_DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16,
    torch.complex64, torch.complex128,
    torch.int8, torch.int16, torch.int32, torch.int64,
    torch.uint8, torch.uint16, torch.uint32, torch.uint64,
    torch.bool,
    torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
    torch.float8_e8m0fnu,
]


def random_bits(shape, dtype, gen):
    """A tensor of `dtype` whose bytes are random (NaNs included: compared bitwise)."""
    n = 1
    for d in shape:
        n *= d
    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * itemsize,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


def model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Embedding(11, 8),
        torch.nn.Linear(8, 16),
        torch.nn.LayerNorm(16),
        torch.nn.Linear(16, 4),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    loss = model(torch.arange(6).reshape(2, 3)).square().mean()
    loss.backward()
    opt.step()
    return model, opt


def full_state_dict(seed=0):
    gen = torch.Generator().manual_seed(seed)
    model, opt = model_and_optimizer(seed)
    base = random_bits((6, 4), torch.float32, gen)
    return {
        "model": model.state_dict(),
        "optim": opt.state_dict(),
        "dtypes": {str(dt).removeprefix("torch."): random_bits((3, 5), dt, gen) for dt in ALL_DTYPES},
        "special": {
            "scalar": torch.tensor(3.25),
            "scalar_int": torch.tensor(-7, dtype=torch.int64),
            "empty": torch.empty(0, 3),
            "empty_1d": torch.empty(0, dtype=torch.bfloat16),
            "transposed": base.t(),  # dense, non-contiguous: saved with its strides
            "sliced": base[:, ::2],  # non-dense view: DCP saves a compact copy
            "big": random_bits((300, 257), torch.bfloat16, gen),
        },
        "nested": {"a": {"b": {"c": torch.arange(5, dtype=torch.int32)}}, "list": [torch.ones(2), {"x": torch.zeros(1)}, 7]},
        "plain": {
            "int": 42,
            "neg_big": -(2**40),
            "float": 0.1,
            "bool": True,
            "none": None,
            "str": "héllo wörld",
            "bytes": b"\x00\x01binary\xff",
            "tuple": (1, "two", 3.0),
            "list_of_ints": [1, 2, 3],
            "empty_list": [],
        },
        "step": 1000,
    }


def zeros_like_state(sd):
    """The same structure with every tensor zeroed (same dtype, shape, strides)
    and every plain value replaced by a placeholder, to load into."""
    if isinstance(sd, torch.Tensor):
        t = torch.empty_like(sd)  # keeps the strides of dense layouts
        t.untyped_storage().fill_(0)
        return t
    if isinstance(sd, dict):
        return {k: zeros_like_state(v) for k, v in sd.items()}
    if isinstance(sd, list):
        return [zeros_like_state(v) for v in sd]
    return None
