#!/usr/bin/env bash
# Runs every test: unit tests (beside their sources), integration tests and
# the interop tests against real PyTorch, in a release build and again under
# AddressSanitizer + UndefinedBehaviorSanitizer. Expects scripts/setup.sh to
# have run (it does so itself when build/ is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d build ] || bash scripts/setup.sh
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build
(cd build && ctest --output-on-failure -j "$jobs")
# The Python package as installed by setup.sh (pip install .).
python3 -m pytest -q tests/python

cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DDCPP_SANITIZE=ON
cmake --build build-asan
# Python loads no sanitized code; the C++ tools it runs are sanitized.
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j "$jobs")
echo "all tests passed"
