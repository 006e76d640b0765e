#!/usr/bin/env bash
# Runs every test: unit tests (beside their sources), integration tests and
# the interop tests against real PyTorch, in a release build; the installed
# package from a C++-only outside project; the tests again under
# AddressSanitizer + UndefinedBehaviorSanitizer; the thread and storage tests
# under ThreadSanitizer; and each libFuzzer target for a short while.
# Expects scripts/setup.sh to have run (it does so itself when build/ is
# missing). FUZZ_SECONDS sets the time per fuzz target (default 15).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d build ] || bash scripts/setup.sh
jobs=$(nproc)
stage() { echo "=== $1 ($(date -u +%T))"; }

stage "release build and tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build
(cd build && ctest --output-on-failure -j "$jobs")
# The Python package as installed by setup.sh (pip install .).
python3 -m pytest -q tests/python

# The S3 back end against a real S3 server: the script starts a local Ceph
# RADOS Gateway, runs the S3 tests (C++ and Python) and stops it on exit.
stage "S3 tests against a local Ceph RADOS Gateway"
bash tests/s3/run_s3_tests.sh

# The installed package used by a project that enables only C++, exactly as
# README.md says (find_package(dcpp), target dcpp::dcpp); main.cc is the
# README's C++ quick start.
stage "outside project against cmake --install"
outside=$(mktemp -d)
cmake --install build --prefix "$outside/install" >/dev/null
cmake -S tests/outside_project -B "$outside/build" -G Ninja -DCMAKE_PREFIX_PATH="$outside/install"
cmake --build "$outside/build"
"$outside/build/app"
rm -rf "$outside"

stage "AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DDCPP_SANITIZE=ON
cmake --build build-asan
# Python loads no sanitized code; the C++ tools it runs are sanitized.
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j "$jobs")

# ThreadSanitizer over everything that runs threads: thread ranks and
# collectives, the thread pool, the I/O engine (save/load), the storage
# layer and the stream transforms. Only the library and dcpp_tests are built.
stage "ThreadSanitizer"
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDCPP_TSAN=ON \
  -DDCPP_BUILD_TOOLS=OFF -DDCPP_BUILD_BENCHMARKS=OFF -DDCPP_BUILD_PYTHON=OFF -DDCPP_WITH_MPI=OFF
cmake --build build-tsan --target dcpp_tests
tsan_filter='ThreadGroup*:SingleProcessGroup*:DistributedTest.*:SharedReadTest.*:CheckpointTest.*:ParallelFor*'
tsan_filter+=':SplitWriterThreads*:*Storage*:ChunkStream*:DataFiles*:Transform*:FileTest.*:Async*:Staging*'
# setarch -R (no address randomization) where the sandbox allows it:
# ThreadSanitizer's fixed memory layout can fail ("unexpected memory
# mapping") under the high mmap randomization of some kernels.
norandom=()
setarch "$(uname -m)" -R true 2>/dev/null && norandom=(setarch "$(uname -m)" -R)
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 "${norandom[@]}" \
  build-tsan/tests/dcpp_tests --gtest_brief=1 --gtest_filter="$tsan_filter"

# libFuzzer (clang, ASan + UBSan) over every decoder of untrusted bytes,
# starting from the torch-written seeds in fuzz/corpus; any crash, leak,
# timeout or out-of-memory fails. Long campaigns: scripts/fuzz.sh.
stage "libFuzzer"
fuzz_work=$(mktemp -d)
bash scripts/fuzz.sh all "${FUZZ_SECONDS:-15}" -w "$fuzz_work"
rm -rf "$fuzz_work"
stage "done"
echo "all tests passed"
