#!/usr/bin/env bash
# Installs what dcpp needs on a fresh Debian machine (run as root), then
# builds it into build/. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends \
    g++ make ninja-build pkg-config zlib1g-dev libzstd-dev libgtest-dev libgmock-dev \
    libopenmpi-dev openmpi-bin \
    clang libclang-rt-14-dev llvm time \
    libcurl4-openssl-dev libssl-dev curl radosgw ceph-mon ceph-osd ceph-common
  # clang + libclang-rt-14-dev: libFuzzer and the sanitizer runtimes for the
  # fuzz targets (scripts/fuzz.sh); llvm: llvm-symbolizer, so sanitizer
  # reports name source lines; time: /usr/bin/time measures peak memory in
  # the hostile-input tests. libcurl + OpenSSL: the S3 back end; curl and
  # the Ceph packages: the throw-away S3 server the S3 tests run against
  # (tests/s3/run_s3_tests.sh).
fi
command -v cmake >/dev/null || python3 -m pip install -q cmake
command -v ninja >/dev/null || python3 -m pip install -q ninja
# torch==2.13.0 is the CPU build the interop tests compare against; pin it.
python3 -m pip install -q torch==2.13.0 numpy pytest zstandard safetensors==0.8.0 nanobind scikit-build-core
# mpi4py (built against the OpenMPI installed above): the Python tests of
# dcpp.save/load(process_group=MPI.COMM_WORLD) under mpirun.
python3 -m pip install -q mpi4py
# The S3 interop tests: torch's FsspecWriter/Reader over s3fs, and AWS's
# s3torchconnector DCP reader, against the same bucket as dcpp.
python3 -m pip install -q s3fs s3torchconnector tenacity
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build
# The Python package (python/), built from the same tree by scikit-build-core.
python3 -m pip install -q --no-build-isolation .
