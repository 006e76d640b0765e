#!/usr/bin/env bash
# Runs the libFuzzer targets in fuzz/ (ASan + UBSan), for a quick CI check
# or a long campaign.
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS] [-j JOBS] [-w WORKDIR]
#
# TARGET is a fuzz/<TARGET>_fuzz.cc name (pickle, metadata, ...; default all,
# one after the other), SECONDS the time per target (default 60). -j runs
# JOBS fuzzing processes per target (libFuzzer's -fork mode, which also keeps
# going after a crash so one campaign can find several). New corpus entries
# go to WORKDIR/<target>/corpus (default build-fuzz/fuzz-work), never into
# the repository; the seeds in fuzz/corpus/<target>/ are only read. Crash,
# leak and timeout inputs are kept in WORKDIR/<target>/artifacts/ (reproduce
# one with build-fuzz/fuzz/<target>_fuzz FILE). Each run appends its
# execution count to WORKDIR/<target>/executions, and the summary prints the
# run's and the total count per target.
#
# Builds build-fuzz (clang, DCPP_BUILD_FUZZERS=ON) if needed. Exit status 1
# if any target reported a crash, leak, timeout or out-of-memory.
# Environment: FUZZ_NICE=N runs the fuzzers under nice -n N; FUZZ_ARGS adds
# libFuzzer flags (e.g. FUZZ_ARGS=-max_len=65536).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

target=all
seconds=60
jobs=1
work=$root/build-fuzz/fuzz-work
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    -j) jobs=$2; shift 2 ;;
    -j*) jobs=${1#-j}; shift ;;
    -w) work=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ ${#positional[@]} -ge 1 ] && target=${positional[0]}
[ ${#positional[@]} -ge 2 ] && seconds=${positional[1]}
mkdir -p "$work"
work=$(cd "$work" && pwd)

if [ "$target" = all ]; then
  targets=()
  for f in fuzz/*_fuzz.cc; do
    n=${f#fuzz/}
    targets+=("${n%_fuzz.cc}")
  done
else
  targets=("$target")
fi

# The build: its own directory, every object instrumented (see CMakeLists.txt).
if [ ! -f build-fuzz/CMakeCache.txt ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDCPP_BUILD_FUZZERS=ON -DDCPP_BUILD_TESTS=OFF -DDCPP_BUILD_TOOLS=OFF \
    -DDCPP_BUILD_BENCHMARKS=OFF -DDCPP_BUILD_PYTHON=OFF -DDCPP_WITH_MPI=OFF
fi
cmake --build build-fuzz --target "${targets[@]/%/_fuzz}"

nice_cmd=()
[ -n "${FUZZ_NICE:-}" ] && nice_cmd=(nice -n "$FUZZ_NICE")
# abort_on_error: a report ends the process at once (libFuzzer then saves the
# input); detect_leaks: leaks count as failures.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:symbolize=1}
if [ -z "${ASAN_SYMBOLIZER_PATH:-}" ] && ! command -v llvm-symbolizer >/dev/null &&
   [ -x /usr/lib/llvm-14/bin/llvm-symbolizer ]; then
  export ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-14/bin/llvm-symbolizer
fi
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=()
summary=()
for t in "${targets[@]}"; do
  bin=build-fuzz/fuzz/${t}_fuzz
  dir=$work/$t
  mkdir -p "$dir/corpus" "$dir/artifacts"
  flags=(-max_total_time="$seconds" -timeout=20 -rss_limit_mb=2560
         -artifact_prefix="$dir/artifacts/" -print_final_stats=1)
  [ -f "fuzz/dict/$t.dict" ] && flags+=(-dict="fuzz/dict/$t.dict")
  [ "$jobs" -gt 1 ] && flags+=(-fork="$jobs" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  seeds=()
  [ -d "fuzz/corpus/$t" ] && seeds+=("fuzz/corpus/$t")
  before=$(find "$dir/artifacts" -type f | wc -l)
  log=$dir/log.$(date -u +%Y%m%dT%H%M%S)
  start=$(date +%s)
  touch "$dir/.started"
  status=0
  # shellcheck disable=SC2086
  "${nice_cmd[@]}" "$bin" "${flags[@]}" ${FUZZ_ARGS:-} "$dir/corpus" "${seeds[@]}" >"$log" 2>&1 ||
    status=$?
  elapsed=$(( $(date +%s) - start ))
  # Executions: the final stats in one-process mode, the last progress line
  # ("#N ...") in fork mode.
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ -z "$execs" ]; then
    execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  fi
  execs=${execs:-0}
  echo "$(date -u +%FT%TZ) $execs $elapsed" >>"$dir/executions"
  total=$(awk '{s += $2} END {print s + 0}' "$dir/executions")
  after=$(find "$dir/artifacts" -type f | wc -l)
  line=$(printf '%-14s %12s execs in %5ss (%s total)' "$t" "$execs" "$elapsed" "$total")
  if [ "$status" -ne 0 ] || [ "$after" -gt "$before" ]; then
    failed+=("$t")
    line="$line  FAILED (exit $status; artefacts in $dir/artifacts; log $log)"
    grep -m1 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|SUMMARY' "$log" || true
    tail -n 40 "$log"
    # The failing inputs, so a CI log alone is enough to reproduce them.
    find "$dir/artifacts" -type f -newer "$dir/.started" | while read -r a; do
        echo "--- $a ($(stat -c %s "$a") bytes, base64, first 4 KiB):"
        head -c 4096 "$a" | base64
      done
  fi
  summary+=("$line")
done

printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found problems in: ${failed[*]}" >&2
  exit 1
fi
