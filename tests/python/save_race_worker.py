"""One process of test_torch_writer_commit.py's races: saves a state with
dcpp.torch.FileSystemWriter into a directory other processes save into too.

    python3 save_race_worker.py CKPT SEED READY_DIR RACERS HOLD LOCK_TIMEOUT

Builds state(SEED) (test_torch_storage.py), creates READY_DIR/SEED and waits
until RACERS files are there (so the racers start together), then runs
dcp.save with a writer that pauses HOLD seconds inside write_data (while the
coordinator holds the directory lock). Prints "SAVED pid=<pid>" and exits 0,
or prints "FAILED <error>" and exits 1.
"""
import os
import sys
import time
import warnings

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

import dcpp.torch as dtorch

sys.path.insert(0, os.path.dirname(__file__))
from test_torch_storage import state  # noqa: E402


class SlowWriter(dtorch.FileSystemWriter):
    def __init__(self, *args, hold, **kwargs):
        super().__init__(*args, **kwargs)
        self.hold = hold

    def write_data(self, plan, planner):
        time.sleep(self.hold)
        return super().write_data(plan, planner)


def main(ckpt, seed, ready_dir, racers, hold, lock_timeout):
    warnings.simplefilter("ignore")
    sd = state(int(seed))
    open(os.path.join(ready_dir, seed), "w").close()
    deadline = time.monotonic() + 120
    while len(os.listdir(ready_dir)) < int(racers) and time.monotonic() < deadline:
        time.sleep(0.005)
    writer = SlowWriter(ckpt, hold=float(hold), lock_timeout=float(lock_timeout))
    try:
        dcp.save(sd, storage_writer=writer)
    except CheckpointException as e:
        errors = [f[0] if isinstance(f, tuple) else f for f in e.failures.values()]
        print("FAILED", " | ".join(f"{type(x).__name__}: {x}" for x in errors), flush=True)
        return 1
    print(f"SAVED pid={os.getpid()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
