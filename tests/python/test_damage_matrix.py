"""dcpp's readers on damaged checkpoints (tests/python/damage_matrix.py):
every damage is a clean error, the intact control loads exactly, and nothing
is silently wrong, hangs, runs code or crashes. Checkpoints are written by
torch's dcp.save and by dcpp.save."""
import pytest

from damage_matrix import CASES, find_cli, run_case

DCPP_READERS = ("dcpp.load", "dcpp.torch", "verify")


@pytest.mark.parametrize("writer", ["torch", "dcpp"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_dcpp_never_silently_wrong(case, writer, tmp_path):
    cli = find_cli()
    readers = DCPP_READERS if cli else DCPP_READERS[:2]
    results = run_case(case, writer, tmp_path, cli, readers=readers, in_process=True)
    for reader, (outcome, detail) in results.items():
        want = "ok" if case.expect_ok else "error"
        assert outcome == want, f"{reader} on '{case.name}' ({writer}-written): {outcome}: {detail}"
