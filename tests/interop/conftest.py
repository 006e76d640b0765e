import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _find(env, name):
    path = os.environ.get(env)
    if path:
        return path
    for build in ("build", "build-asan"):
        for sub in ("tools/dcpp", "tests"):
            p = os.path.join(ROOT, build, sub, name)
            if os.path.exists(p):
                return p
    pytest.skip(f"{name} not built: set {env} or build into {ROOT}/build")


@pytest.fixture(scope="session")
def cli():
    return _find("DCPP_CLI", "dcpp")


@pytest.fixture(scope="session")
def interop():
    return _find("DCPP_INTEROP", "dcpp_interop")


def run(args, expect_ok=True):
    """Runs a command; returns CompletedProcess. Asserts the exit status."""
    # errors="backslashreplace": a message may quote bytes of a damaged file.
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                       errors="backslashreplace", timeout=600)
    if expect_ok:
        assert p.returncode == 0, f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p
