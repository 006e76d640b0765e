#!/usr/bin/env bash
# Regenerates every generated section of docs/benchmarks.md, one script per
# section, each writing only between its own <!-- NAME:begin --> and
# <!-- NAME:end --> markers:
#
#   bench/regenerate_docs.sh            # full sizes (tens of minutes)
#   bench/regenerate_docs.sh --quick    # small sizes, one repetition (minutes)
#   bench/regenerate_docs.sh --only entrybench,pybench
#   bench/regenerate_docs.sh --list     # the sections and their commands
#
# Needs the dcpp CLI (cmake --build build --target dcpp_cli) and a Python
# with dcpp installed (pip install .; --python or $PYTHON picks it). The
# metadata scale section also needs the C++ benchmarks
# (-DDCPP_BUILD_BENCHMARKS=ON, target metadata_bench). A script that is not
# in the tree is skipped with a note; one that fails is reported at the end
# (exit status 1) without stopping the others, and leaves its section as it
# was. Besides the sections listed here, any other bench/*.py that takes
# --write-docs is run too (with --quick when it takes that).
set -uo pipefail

cd "$(dirname "$0")/.."
QUICK=0
DOC=docs/benchmarks.md
PY=${PYTHON:-python3}
ONLY=""
LIST=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --doc) DOC=$2; shift ;;
    --python) PY=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --list) LIST=1 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "regenerate_docs.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

failed=()
ran=()

# section NAME SCRIPT "FULL ARGS" "QUICK ARGS": runs bench/SCRIPT with the
# arguments for the mode (word-split), unless --only excludes NAME.
section() {
  local name=$1 script=$2 full=$3 quick=$4
  ran+=("$script")
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then return; fi
  local args=$full
  [ "$QUICK" = 1 ] && args=$quick
  if [ "$LIST" = 1 ]; then
    echo "$name: $PY bench/$script $args"
    return
  fi
  if [ ! -f "bench/$script" ]; then
    echo "== $name: skipped (bench/$script is not in this tree)"
    return
  fi
  echo "== $name: $PY bench/$script $args"
  # shellcheck disable=SC2086
  if ! "$PY" "bench/$script" $args; then
    echo "== $name: FAILED (its section is unchanged)"
    failed+=("$name")
  fi
}

# Whether bench/SCRIPT mentions OPTION (so it is passed only to scripts that
# take it).
takes() { [ -f "bench/$1" ] && grep -q -- "$2" "bench/$1"; }
q() { takes "$1" --quick && echo --quick; }

section bench run_benchmarks.py \
  "--doc $DOC" \
  "--doc $DOC --size-gib 0.25 --small-count 2000 --reps 1"
section entrybench entry_points.py \
  "--write-docs $DOC" \
  "--write-docs $DOC --quick"
section pybench python_api_bench.py \
  "--write-docs $DOC" \
  "--write-docs $DOC --size-mib 64 --repeats 1"
section asyncbench async_bench.py \
  "--write-docs $DOC" \
  "--write-docs $DOC --size-mib 128 --reps 1 --saves 10"
if [ -x build/bench/metadata_bench ] || [ "$LIST" = 1 ]; then
  section mdscale metadata_scale.py \
    "--write-docs $DOC" \
    "--write-docs $DOC --ranks 64,256 --reps 1"
else
  ran+=(metadata_scale.py)
  echo "== mdscale: skipped (build/bench/metadata_bench not built: -DDCPP_BUILD_BENCHMARKS=ON)"
fi
section convertbench convert_bench.py \
  "--write-docs $DOC" \
  "--write-docs $DOC $(q convert_bench.py)"
section torchsave torch_save_bench.py \
  "--write-docs $DOC" \
  "--write-docs $DOC $(q torch_save_bench.py)"

# Any other script with a section of its own (the safetensors and scale
# tables among them, whatever their file names).
for path in bench/*.py; do
  script=${path#bench/}
  case " ${ran[*]} " in *" $script "*) continue ;; esac
  takes "$script" "--write-docs" || continue
  name=$(grep -o '<!-- [a-z0-9_-]*:begin -->' "$path" | head -1 | sed 's/<!-- \(.*\):begin -->/\1/')
  section "${name:-${script%.py}}" "$script" "--write-docs $DOC" "--write-docs $DOC $(q "$script")"
done

if [ "$LIST" = 1 ]; then exit 0; fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "regenerate_docs.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "regenerate_docs.sh: $DOC regenerated"
