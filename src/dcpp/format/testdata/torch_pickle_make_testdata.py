#!/usr/bin/env python3
"""Writes the torch.save fixtures torch_pickle_test.cc decodes.

Each torch_pickle_<case>.pt is torch.save(obj, BytesIO()) (archive name
"archive", as DCP writes its items) of the object listed below; the C++ test
states the expected dtype/shape/strides/bytes or Value for each case. Run from
anywhere: python3 torch_pickle_make_testdata.py [--out DIR]   (needs torch and numpy)
"""
import collections
import io
import os
import sys
import types

import numpy as np
import torch

# A class whose pickle names a module other than __main__, like user code.
mymod = types.ModuleType("mymod")


class MyClass:
    def __init__(self):
        self.x = 1


MyClass.__module__ = "mymod"
MyClass.__qualname__ = "MyClass"
mymod.MyClass = MyClass
sys.modules["mymod"] = mymod


def cases():
    base = torch.arange(10, dtype=torch.int32)
    shared = torch.arange(4, dtype=torch.float32)
    return {
        # Tensor archives (DCP tensor items).
        "tensor_transposed": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),
        "tensor_0d": torch.tensor(2.5, dtype=torch.float64),
        "tensor_empty": torch.zeros(0, 3, dtype=torch.int16),
        "tensor_uint16": torch.tensor([0, 1, 2, 65535], dtype=torch.uint16),
        "tensor_offset": base[2:5],
        "tensor_parameter": torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16)),
        # Values (DCP BYTE_IO items).
        "value_nested": {
            "int": 7,
            "neg": -(2**63),
            "float": 0.5,
            "str": "héllo",
            "bytes": b"\x00\xffab",
            "none": None,
            "flags": [True, False],
            "tuple": (1, "a", 2.0, None),
            "od": collections.OrderedDict([("b", 2), ("a", 1)]),
            3: "int key",
            "size": torch.Size([2, 3]),
        },
        "value_shared": (shared, shared[1:], shared),
        "value_userclass": {"obj": MyClass()},
        "value_numpy": np.float64(1.5),
    }


def main():
    out = os.path.dirname(os.path.abspath(__file__))
    if "--out" in sys.argv:
        out = sys.argv[sys.argv.index("--out") + 1]
    for name, obj in cases().items():
        buf = io.BytesIO()
        torch.save(obj, buf)
        with open(os.path.join(out, f"torch_pickle_{name}.pt"), "wb") as f:
            f.write(buf.getvalue())


if __name__ == "__main__":
    main()
