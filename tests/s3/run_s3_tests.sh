#!/usr/bin/env bash
# Runs dcpp's S3 tests against a real, throw-away S3 server: a single-node
# Ceph cluster with its RADOS Gateway on 127.0.0.1 (s3server.sh, from the
# shared tools next to the repository, or $S3SERVER), started here and
# stopped on exit whatever happens. Runs the C++ tests (S3Test.* in
# dcpp_tests, from $BUILD_DIR, default build/), `mpirun -np 4 dcpp demo`
# against the gateway when MPI and the CLI are there, and, when python can
# import dcpp, tests/python/test_s3.py. Needs root and Debian's radosgw, ceph-mon,
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
# 4 MPI processes save row shards to the gateway and load column shards
# back, checking every byte (the CLI's demo), then `dcpp verify` reads it all.
cli=$build/tools/dcpp/dcpp
if command -v mpirun >/dev/null && [ -x "$cli" ]; then
  export AWS_ENDPOINT_URL=$S3_ENDPOINT AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
  curl -sSf -X PUT --aws-sigv4 aws:amz:us-east-1:s3 --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$S3_ENDPOINT/mpi-demo"
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np 4 \
    -x AWS_ENDPOINT_URL -x AWS_ACCESS_KEY_ID -x AWS_SECRET_ACCESS_KEY \
    "$cli" demo --size-mib 16 --dir s3://mpi-demo/ckpt --keep --quiet
  "$cli" verify s3://mpi-demo/ckpt --quiet
else
  echo "mpirun or the dcpp CLI missing: the MPI demo over S3 not run"
fi
if "$python" -c "import dcpp" 2>/dev/null; then
  "$python" -m pytest -q "$root/tests/python/test_s3.py"
else
  echo "python cannot import dcpp: tests/python/test_s3.py not run"
fi
