"""dcpp.save takes the checkpoint directory's lock (.dcpp.lock, flock): a
save that finds it held fails at once naming the holder, or waits up to
lock_timeout seconds."""
import fcntl
import os
import threading
import time

import numpy as np
import pytest

import dcpp


def hold_lock(path):
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / ".dcpp.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, b"pid=1 host=elsewhere started=2026-01-01T00:00:00Z save=deadbeef\n", 0)
    return fd


def test_held_lock_fails_at_once_naming_the_holder(ckpt):
    fd = hold_lock(ckpt)
    try:
        start = time.monotonic()
        with pytest.raises(dcpp.AbortedError, match="host=elsewhere"):
            dcpp.save({"w": np.ones(4)}, ckpt)
        assert time.monotonic() - start < 5
        assert not (ckpt / ".metadata").exists()
    finally:
        os.close(fd)


def test_lock_timeout_waits_for_the_holder(ckpt):
    fd = hold_lock(ckpt)
    threading.Timer(0.3, os.close, args=(fd,)).start()
    dcpp.save({"w": np.arange(4.0)}, ckpt, lock_timeout=10)
    np.testing.assert_array_equal(dcpp.load(ckpt)["w"], np.arange(4.0))


def test_lock_timeout_is_checked():
    with pytest.raises(ValueError, match="lock_timeout"):
        dcpp.save({"w": np.ones(1)}, "unused", lock_timeout=-1)
