"""Tests of the dcpp Python package (python/dcpp), run against the installed
package: `pip install --no-build-isolation .` then `pytest tests/python`.

During development, point PYTHONPATH at a directory holding the dcpp
package with the built extension module inside it.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

try:
    import dcpp  # noqa: F401
except ImportError as e:  # pragma: no cover - a setup error, not a test result
    raise ImportError(
        f"cannot import dcpp ({e}): install it first with `pip install --no-build-isolation .`"
    ) from e


def pytest_configure(config):
    # torch warns when dcp.save/dcp.load run without a process group.
    config.addinivalue_line("filterwarnings", "ignore:torch.distributed is disabled:UserWarning")


@pytest.fixture
def ckpt(tmp_path):
    """A checkpoint directory path that does not exist yet."""
    return tmp_path / "ckpt"
