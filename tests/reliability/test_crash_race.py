"""Crash and race tests with real processes (issue 10, item 7).

test_sigkill_during_save: a save (into a new directory, or over a committed
checkpoint; 1 rank or 4 thread ranks) is SIGKILLed after a random delay
within 1.25 x the median of recent save times (measured here, so the kills
follow the machine's speed), five times in a row into one directory; after
every kill the directory must hold nothing, the old checkpoint or the new
one, each complete (`dcpp_crash_tool check` compares every byte), never a
mix. Then one save runs to the end: it must reclaim every file the kills
left (no unreferenced file remains: the disk holds only the committed
checkpoint).

test_race: two to four processes, released together, save different seeds
into one new or one existing directory. The committed result must be exactly
one seed; every process either succeeds or fails with a lock error naming
another racer as the holder (pid=..., host=...); at least one succeeds; when
exactly one succeeds its seed is the one committed; nothing unreferenced is
left behind. test_race_waiting_for_lock: the same with lock_timeout_ms, where
every racer must succeed; test_race_with_a_kill: one of three waiting racers
is SIGKILLed. (Both are skipped by a dcpp without SaveOptions.lock_timeout_ms.)

Environment: DCPP_CRASH_TOOL (the tool; found in build/ otherwise),
DCPP_RELIABILITY_SCALE (multiplies the repetitions, default 1),
DCPP_RELIABILITY_SEED (the random seed of the kill delays), and
DCPP_RELIABILITY_TABLE (a file to receive the outcome tables as Markdown).
"""
import os
import random
import re
import signal
import subprocess
import time

import pytest

SCALE = max(1, int(os.environ.get("DCPP_RELIABILITY_SCALE", "1")))
RNG_SEED = int(os.environ.get("DCPP_RELIABILITY_SEED",
                              str(random.SystemRandom().randrange(1 << 30))))

KILL_MIB = 16
KILL_SEQUENCES = 4 * SCALE  # per case: 4 cases x 4 x 5 = 80 kills
KILLS_PER_SEQUENCE = 5
RACE_MIB = 4
RACE_REPS = 20 * SCALE
WAIT_REPS = 8 * SCALE
TIMEOUT = 300

KILL_TITLE = (f"SIGKILL during save ({KILL_MIB} MiB, sync on; kill after a random delay "
              "within 1.25 x the median recent save time), by what the directory held "
              "before the kill")
KILL_COLUMNS = ["kills", "none", "old", "new", "torn", "torn that loads", "finished first"]
RECLAIM_TITLE = (f"Space after {KILLS_PER_SEQUENCE} kills, then one complete save "
                 "(leftovers: files no committed .metadata references)")
RECLAIM_COLUMNS = ["sequences", "save ms (first)", "checkpoint MiB", "max leftover MiB after kills",
                   "leftovers after the complete save", "problems"]
RACE_TITLE = (f"Processes racing into one directory ({RACE_MIB} MiB each, released together; "
              "racers alternate 1 and 4 thread ranks)")
RACE_COLUMNS = ["races", "none", "old", "new", "torn", "torn that loads", "0 ok", "1 ok",
                "2+ ok", "lock errors", "other errors", "winner not committed", "leftovers",
                "problems"]


# ---------------------------------------------------------------- the tool

def run(tool, *args, timeout=TIMEOUT):
    return subprocess.run([tool, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def check(tool, d, candidates=()):
    """'none', 'torn' or 'seed=S', and the tool's explanation."""
    args = ["check", d]
    cands = [c for c in candidates if c is not None]
    if cands:
        args += ["--candidates", ",".join(map(str, cands))]
    p = run(tool, *args)
    assert p.returncode == 0, f"check {d} failed ({p.returncode}): {p.stderr}"
    return p.stdout.strip(), p.stderr.strip()


def leftovers(tool, d):
    """(total bytes, [names]) of files the committed .metadata does not reference."""
    p = run(tool, "leftovers", d)
    assert p.returncode == 0, f"leftovers {d} failed ({p.returncode}): {p.stderr}"
    lines = p.stdout.strip().splitlines()
    total = lines[-1].split()
    assert total[0] == "total", p.stdout
    return int(total[1]), [line.split(" ", 1)[1] for line in lines[:-1]]


def start_save(tool, d, seed, mib, ranks, extra=()):
    args = [tool, "save", str(d), str(seed), "--mib", str(mib), "--ranks", str(ranks), *extra]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def save(tool, d, seed, mib, ranks=1):
    p = run(tool, "save", d, seed, "--mib", mib, "--ranks", ranks)
    assert p.returncode == 0, f"save {d} seed {seed} failed ({p.returncode}): {p.stderr}"


def classify(state, old, new):
    """none / old / new / torn, or 'other' for a seed nobody saved."""
    if state in ("none", "torn"):
        return state
    m = re.fullmatch(r"seed=(-?\d+)", state)
    if not m:
        return "torn"
    seed = int(m.group(1))
    if seed in new:
        return "new"
    if old is not None and seed == old:
        return "old"
    return "other"


def loads(state, why):
    """A torn result that loads without error (wrong bytes, not a failed load)."""
    return state != "none" and not why.startswith("torn: load failed")


def committed_seed(state):
    m = re.fullmatch(r"seed=(-?\d+)", state)
    return int(m.group(1)) if m else None


def timed_save(tool, d, seed, mib, ranks, must_succeed=True):
    """Seconds from the tool's "saving" line to its exit (and rc, stderr)."""
    p = start_save(tool, d, seed, mib, ranks)
    assert p.stdout.readline().strip() == "ready"
    assert p.stdout.readline().strip() == "saving"
    t0 = time.monotonic()
    _, err = p.communicate(timeout=TIMEOUT)
    if must_succeed:
        assert p.returncode == 0, err
        return time.monotonic() - t0
    return time.monotonic() - t0, p.returncode, err


def measure_save_seconds(tool, d, mib, ranks):
    """Median save times: into a new directory, and over a committed checkpoint."""
    fresh = sorted(timed_save(tool, d / f"fresh{i}", 901 + i, mib, ranks) for i in range(3))
    over = sorted(timed_save(tool, d / "fresh0", 911 + i, mib, ranks) for i in range(3))
    return fresh[1], over[1]


class SaveTimes:
    """Recent save times of one kind; the kill window follows the machine's load."""

    def __init__(self, first):
        self.recent = [first]

    def add(self, seconds):
        self.recent = (self.recent + [seconds])[-5:]

    def window(self):
        # A little past the median, so some kills land in the commit and the
        # cleanup after it, or after the exit.
        return 1.25 * sorted(self.recent)[len(self.recent) // 2]


# ---------------------------------------------------------------- SIGKILL

def directory_bytes(d):
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


@pytest.mark.parametrize("ranks", [1, 4])
@pytest.mark.parametrize("start", ["fresh", "overwrite"])
def test_sigkill_during_save(tool, tables, tmp_path, start, ranks):
    """Five kills in a row into one directory, then one complete save; repeated.

    "fresh" starts each sequence in a directory that does not exist,
    "overwrite" over a committed checkpoint (seed A, then seed B is killed).
    A kill that lands after the commit makes the next kill an overwrite, so
    the table counts kills by what the directory held just before each."""
    rng = random.Random(f"{RNG_SEED}-{start}-{ranks}")
    fresh_s, overwrite_s = measure_save_seconds(tool, tmp_path / "timing", KILL_MIB, ranks)
    times = {False: SaveTimes(fresh_s), True: SaveTimes(overwrite_s)}
    checkpoint_bytes = directory_bytes(tmp_path / "timing" / "fresh1")
    rank_text = f"{ranks} rank{'s' if ranks > 1 else ''}"
    max_leftover = 0
    bad_after_good_save = 0
    problems = []
    next_seed = 1
    for seq in range(KILL_SEQUENCES):
        d = tmp_path / f"seq{seq}"
        committed = None
        if start == "overwrite":
            committed = 1000 + seq
            save(tool, d, committed, KILL_MIB, ranks)
            state, why = check(tool, d)
            assert state == f"seed={committed}", why
        for kill in range(KILLS_PER_SEQUENCE):
            seed = next_seed
            next_seed += 1
            delay = rng.uniform(0, times[committed is not None].window())
            before = ("checkpoint committed (overwrite)" if committed is not None
                      else "new directory" if kill == 0
                      else "nothing committed, files of killed saves")
            p = start_save(tool, d, seed, KILL_MIB, ranks)
            assert p.stdout.readline().strip() == "ready"
            assert p.stdout.readline().strip() == "saving"
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            _, err = p.communicate(timeout=TIMEOUT)
            if p.returncode not in (0, -signal.SIGKILL):
                problems.append(f"seq {seq} seed {seed}: save failed on its own "
                                f"({p.returncode}): {err.strip()}")
            state, why = check(tool, d, [committed, seed])
            outcome = classify(state, committed, {seed})
            where = f"seq {seq}, seed {seed} over {committed}, killed after {delay * 1000:.0f} ms"
            torn_loads = 0
            if outcome in ("torn", "other"):
                torn_loads = int(loads(state, why))
                problems.append(f"{where}: {state}: {why}")
            elif outcome == "none" and committed is not None:
                problems.append(f"{where}: the committed seed {committed} is gone")
            elif p.returncode == 0 and outcome != "new":
                problems.append(f"{where}: the save reported success but {state} is committed")
            tables.count(KILL_TITLE, KILL_COLUMNS, f"{before}, {rank_text}", {
                "kills": 1, "none": outcome == "none", "old": outcome == "old",
                "new": outcome == "new", "torn": outcome in ("torn", "other"),
                "torn that loads": torn_loads, "finished first": p.returncode == 0})
            if outcome == "new":
                committed = seed
            max_leftover = max(max_leftover, leftovers(tool, d)[0])
        # One save to the end reclaims what the kills left.
        seed = next_seed
        next_seed += 1
        seconds, rc, err = timed_save(tool, d, seed, KILL_MIB, ranks, must_succeed=False)
        times[committed is not None].add(seconds)
        state, why = check(tool, d)
        left_bytes, left_names = leftovers(tool, d)
        if rc != 0 or state != f"seed={seed}":
            problems.append(f"seq {seq}: the save after the kills: rc {rc} "
                            f"{err.strip()}; check: {state} {why}")
        if left_names:
            bad_after_good_save += 1
            problems.append(f"seq {seq}: after a complete save {left_bytes} bytes are left "
                            f"unreferenced ({directory_bytes(d)} bytes in the directory for a "
                            f"{checkpoint_bytes}-byte checkpoint): {left_names}")
    case = f"{'new directory' if start == 'fresh' else 'committed checkpoint'}, {rank_text}"
    tables.add(RECLAIM_TITLE, RECLAIM_COLUMNS, case, {
        "sequences": KILL_SEQUENCES,
        "save ms (first)": f"{fresh_s * 1000:.0f} new, {overwrite_s * 1000:.0f} overwrite",
        "checkpoint MiB": f"{checkpoint_bytes / 2**20:.1f}",
        "max leftover MiB after kills": f"{max_leftover / 2**20:.1f}",
        "leftovers after the complete save": f"{bad_after_good_save} of {KILL_SEQUENCES}",
        "problems": len(problems)})
    assert not problems, (f"{len(problems)} problems (DCPP_RELIABILITY_SEED={RNG_SEED}):\n"
                          + "\n".join(problems[:20]))


# ---------------------------------------------------------------- races

def lock_error_problem(err, own_pid, pids):
    """None if `err` is a clear lock error naming another racer as the holder."""
    if not re.search(r"lock", err, re.IGNORECASE):
        return "does not mention the lock"
    holders = [int(x) for x in re.findall(r"pid=(\d+)", err)]
    if not holders:
        return "names no holder (pid=...)"
    if not any(h in pids and h != own_pid for h in holders):
        return f"names holder pid {holders}, not one of the other racers {sorted(pids - {own_pid})}"
    if "host=" not in err:
        return "names no host="
    return None


def race_once(tool, d, seeds, rank_counts, extra=()):
    """Starts one save per seed, releases them together; [(rc, stderr, pid)]."""
    procs = [start_save(tool, d, s, RACE_MIB, r, ["--wait-go", *extra])
             for s, r in zip(seeds, rank_counts)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            err = f"hung for {TIMEOUT} s and was killed; {err}"
        results.append((p.returncode, err.strip(), p.pid))
    return results


def run_races(tool, tables, tmp_path, title, case, existing, nprocs, reps, extra=(),
              all_must_succeed=False):
    counts = {k: 0 for k in ("none", "old", "new", "torn", "other")}
    torn_loads = 0
    ok_hist = {"0 ok": 0, "1 ok": 0, "2+ ok": 0}
    lock_errors = other_errors = winner_mismatch = leftover_runs = 0
    problems = []
    for rep in range(reps):
        d = tmp_path / f"{'existing' if existing else 'new'}{nprocs}_{rep}"
        old = None
        if existing:
            old = 10000 + rep
            save(tool, d, old, RACE_MIB)
        seeds = [100 * rep + i + 1 for i in range(nprocs)]
        rank_counts = [1 if (i + rep) % 2 == 0 else 4 for i in range(nprocs)]
        results = race_once(tool, d, seeds, rank_counts, extra)
        pids = {pid for _, _, pid in results}
        succeeded = [s for s, (rc, _, _) in zip(seeds, results) if rc == 0]
        for s, (rc, err, pid) in zip(seeds, results):
            if rc == 0:
                continue
            why = lock_error_problem(err, pid, pids) if rc == 1 else f"exit status {rc}"
            if why is None:
                lock_errors += 1
            else:
                other_errors += 1
                problems.append(f"rep {rep}: seed {s} failed and its error {why}: {err}")
        k = len(succeeded)
        ok_hist["0 ok" if k == 0 else "1 ok" if k == 1 else "2+ ok"] += 1
        if all_must_succeed and k != nprocs:
            problems.append(f"rep {rep}: {k} of {nprocs} saves succeeded waiting for the lock")
        state, why = check(tool, d, [old, *seeds])
        outcome = classify(state, old, set(seeds))
        counts[outcome] += 1
        seed = committed_seed(state)
        if outcome in ("torn", "other"):
            torn_loads += loads(state, why)
            problems.append(f"rep {rep} (seeds {seeds}, old {old}, ok {succeeded}): {state}: {why}")
        elif k == 0:
            problems.append(f"rep {rep}: no save succeeded; committed: {state}")
        elif seed not in succeeded:
            winner_mismatch += 1
            problems.append(f"rep {rep}: {succeeded} succeeded but {state} is committed")
        left_bytes, left_names = leftovers(tool, d)
        if left_names:
            leftover_runs += 1
            problems.append(f"rep {rep}: {left_bytes} bytes left unreferenced: {left_names}")
    tables.add(title, RACE_COLUMNS, case, {
        "races": reps, "none": counts["none"], "old": counts["old"], "new": counts["new"],
        "torn": counts["torn"] + counts["other"], "torn that loads": torn_loads, **ok_hist,
        "lock errors": lock_errors, "other errors": other_errors,
        "winner not committed": winner_mismatch, "leftovers": leftover_runs,
        "problems": len(problems)})
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("nprocs", [2, 3, 4])
@pytest.mark.parametrize("existing", [False, True], ids=["new_dir", "existing_dir"])
def test_race(tool, tables, tmp_path, existing, nprocs):
    case = f"{nprocs} processes, {'existing checkpoint' if existing else 'new directory'}"
    run_races(tool, tables, tmp_path, RACE_TITLE, case, existing, nprocs, RACE_REPS)


def lock_timeout_supported(tool, tmp_path):
    p = run(tool, "save", tmp_path / "probe", 1, "--mib", 1, "--lock-timeout-ms", 1)
    return p.returncode != 2


@pytest.mark.parametrize("existing", [False, True], ids=["new_dir", "existing_dir"])
def test_race_waiting_for_lock(tool, tables, tmp_path, existing):
    """With SaveOptions.lock_timeout_ms every racer waits its turn and succeeds."""
    if not lock_timeout_supported(tool, tmp_path):
        pytest.skip("this dcpp has no SaveOptions.lock_timeout_ms")
    case = f"3 processes waiting (lock_timeout_ms 60000), " \
           f"{'existing checkpoint' if existing else 'new directory'}"
    run_races(tool, tables, tmp_path, RACE_TITLE, case, existing, 3, WAIT_REPS,
              extra=["--lock-timeout-ms", "60000"], all_must_succeed=True)


@pytest.mark.parametrize("existing", [False, True], ids=["new_dir", "existing_dir"])
def test_race_with_a_kill(tool, tables, tmp_path, existing):
    """Three savers wait for the lock; one is SIGKILLed at a random moment.

    The kill releases its lock, so the other two still succeed; what is
    committed is complete (the killed saver's seed only if its commit
    landed); after one more save nothing unreferenced is left."""
    if not lock_timeout_supported(tool, tmp_path):
        pytest.skip("this dcpp has no SaveOptions.lock_timeout_ms")
    rng = random.Random(f"{RNG_SEED}-race-kill-{existing}")
    fresh_s, overwrite_s = measure_save_seconds(tool, tmp_path / "timing", RACE_MIB, 1)
    case = f"3 processes waiting, one SIGKILLed at random, " \
           f"{'existing checkpoint' if existing else 'new directory'}"
    counts = {k: 0 for k in ("none", "old", "new", "torn", "other")}
    torn_loads = other_errors = winner_mismatch = leftover_runs = 0
    ok_hist = {"0 ok": 0, "1 ok": 0, "2+ ok": 0}
    problems = []
    for rep in range(WAIT_REPS):
        d = tmp_path / f"{'existing' if existing else 'new'}_{rep}"
        old = None
        if existing:
            old = 10000 + rep
            save(tool, d, old, RACE_MIB)
        seeds = [100 * rep + i + 1 for i in range(3)]
        victim = rng.randrange(3)
        # Up to three saves' time: the victim may be first, second or last.
        delay = rng.uniform(0, 3 * (overwrite_s if existing else fresh_s))
        procs = [start_save(tool, d, s, RACE_MIB, 1 if (i + rep) % 2 == 0 else 4,
                            ["--wait-go", "--lock-timeout-ms", "60000"])
                 for i, s in enumerate(seeds)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        time.sleep(delay)
        procs[victim].send_signal(signal.SIGKILL)
        succeeded = []
        for i, p in enumerate(procs):
            _, err = p.communicate(timeout=TIMEOUT)
            if p.returncode == 0:
                succeeded.append(seeds[i])
            elif i != victim:
                other_errors += 1
                problems.append(f"rep {rep}: seed {seeds[i]} failed ({p.returncode}): {err}")
        k = len(succeeded)
        ok_hist["0 ok" if k == 0 else "1 ok" if k == 1 else "2+ ok"] += 1
        state, why = check(tool, d, [old, *seeds])
        outcome = classify(state, old, set(seeds))
        counts[outcome] += 1
        seed = committed_seed(state)
        if outcome in ("torn", "other"):
            torn_loads += loads(state, why)
            problems.append(f"rep {rep} (seeds {seeds}, victim {seeds[victim]}): {state}: {why}")
        elif seed not in succeeded and seed != seeds[victim]:
            winner_mismatch += 1
            problems.append(f"rep {rep}: {succeeded} succeeded but {state} is committed")
        final = 100 * rep + 50
        save(tool, d, final, RACE_MIB)
        left_bytes, left_names = leftovers(tool, d)
        if left_names or check(tool, d)[0] != f"seed={final}":
            leftover_runs += 1
            problems.append(f"rep {rep}: after one more save {left_bytes} bytes are left "
                            f"unreferenced: {left_names}")
    tables.add(RACE_TITLE, RACE_COLUMNS, case, {
        "races": WAIT_REPS, "none": counts["none"], "old": counts["old"], "new": counts["new"],
        "torn": counts["torn"] + counts["other"], "torn that loads": torn_loads, **ok_hist,
        "lock errors": 0, "other errors": other_errors, "winner not committed": winner_mismatch,
        "leftovers": leftover_runs, "problems": len(problems)})
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
