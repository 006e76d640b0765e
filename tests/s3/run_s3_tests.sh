#!/usr/bin/env bash
# Runs dcpp's S3 tests against a real, throw-away S3 server: a single-node
# Ceph cluster with its RADOS Gateway on 127.0.0.1 (s3server.sh, from the
# shared tools next to the repository, or $S3SERVER), started here and
# stopped on exit whatever happens. Runs the C++ tests (S3Test.* in
# dcpp_tests, from $BUILD_DIR, default build/) and, when python can import
# dcpp, tests/python/test_s3.py. Needs root and Debian's radosgw, ceph-mon,
# ceph-osd, ceph-common and curl (scripts/setup.sh installs them).
# S3_PORT / MON_PORT choose the ports (defaults 17480 / 13300).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$root/build}
python=${PYTHON:-python3}
# The shared tools sit next to the checkout (or next to the folder of
# worktrees holding it).
server=${S3SERVER:-}
for candidate in "$root/../shared/tools/s3server.sh" "$root/../../shared/tools/s3server.sh"; do
  [ -n "$server" ] || { [ -x "$candidate" ] && server=$candidate; }
done
[ -n "$server" ] && [ -x "$server" ] || {
  echo "run_s3_tests.sh: s3server.sh not found next to $root (set S3SERVER)" >&2; exit 1; }
work=$(mktemp -d)
trap '"$server" stop "$work/s3" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
out=$("$server" start "$work/s3")
set -a
eval "$out"
set +a
# The fault test pauses the gateway (SIGSTOP) mid-save and resumes it.
export S3_RGW_PID_FILE=$work/s3/run/client.rgw.pid
echo "S3 server at $S3_ENDPOINT"
"$build/tests/dcpp_tests" --gtest_filter='S3Test.*' --gtest_brief=1
if "$python" -c "import dcpp" 2>/dev/null; then
  "$python" -m pytest -q "$root/tests/python/test_s3.py"
else
  echo "python cannot import dcpp: tests/python/test_s3.py not run"
fi
