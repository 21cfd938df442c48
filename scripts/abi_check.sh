#!/usr/bin/env bash
# The stable-ABI check of the compiled library: a CPU wheel built against one torch installs
# with --no-deps next to another torch and passes the op tests there, both ways; and the
# built library references no at::/c10::/torch:: C++ symbol (only torch's C shim).
#
# Usage: scripts/abi_check.sh PYTHON_A PYTHON_B [WORKDIR]
#   PYTHON_A, PYTHON_B: two interpreters with different torch versions (e.g. the oldest the
#   library targets, 2.13, and the newest), each with numpy, pytest, pillow and tqdm (the tests'
#   helpers) and ninja (the build). WORKDIR (default: a new temporary folder) receives the
#   wheels, the installs and the logs. The build honours CC, CXX and MAX_JOBS (set
#   CC=/usr/bin/gcc CXX=/usr/bin/g++ where the default compiler links libstdc++ statically,
#   see setup.py).
set -euo pipefail
shopt -s inherit_errexit
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -lt 2 ]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
PY_A=$1
PY_B=$2
WORK=${3:-$(mktemp -d)}
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
# a WORKDIR inside the checkout (CI's .abi-check) is not copied into the builds' sources
EXCLUDE_WORK=()
case "$WORK" in
  "$ROOT"/*) EXCLUDE_WORK=("--exclude=./${WORK#"$ROOT"/}") ;;
esac
OP_TESTS=(test_affinity.py test_pair_loss.py test_random_walk.py test_par.py test_dense_crf.py
  test_op_errors.py test_opcheck.py)

torch_of() { "$1" -c 'import torch; print(torch.__version__)'; }

# build PYTHON NAME: a CPU wheel of a copy of the checkout, built against PYTHON's torch, in
# $WORK/NAME/wheel; prints its path.
build() {
  local py=$1 dir="$WORK/$2"
  rm -rf "$dir" && mkdir -p "$dir/src" "$dir/wheel"
  (tar -C "$ROOT" --exclude=.git --exclude=build --exclude='*.so' --exclude='*.egg-info' \
    --exclude='.venv*' "${EXCLUDE_WORK[@]}" -cf - . | tar -C "$dir/src" -xf -) &&
    (cd "$dir/src" && AFFEXT_CUDA=0 "$py" -m pip wheel --no-deps --no-build-isolation \
    -w "$dir/wheel" .) >"$dir/build.log" 2>&1 || {
    tail -30 "$dir/build.log" >&2
    echo "abi_check: the build with $py failed ($dir/build.log)" >&2
    exit 1
  }
  ls "$dir"/wheel/affext-*.whl
}

# audit WHEEL: the library's undefined dynamic symbols hold no at::/c10::/torch:: C++ name.
audit() {
  local wheel=$1 dir
  dir=$(mktemp -d -p "$WORK")
  (cd "$dir" && "$PY_A" -m zipfile -e "$wheel" .)
  local lib
  lib=$(ls "$dir"/affext/_C*.so)
  local bad
  bad=$(nm -D --undefined-only "$lib" | c++filt | grep -E 'at::|c10::|torch::' || true)
  if [ -n "$bad" ]; then
    echo "abi_check: $(basename "$wheel") needs C++ symbols of torch:" >&2
    echo "$bad" >&2
    exit 1
  fi
  echo "audit: $(basename "$lib") in $(basename "$wheel"): no at::/c10::/torch:: symbols"
}

# run_tests WHEEL PYTHON NAME: the wheel installed with --no-deps into $WORK/NAME-site, and
# the op tests of the checkout run by PYTHON against it (from $WORK, so that the checkout's
# own affext is not the one imported).
run_tests() {
  local wheel=$1 py=$2 site="$WORK/$3-site"
  rm -rf "$site"
  "$py" -m pip install --quiet --no-deps --target "$site" "$wheel"
  local where
  where=$(cd "$WORK" && PYTHONPATH="$site" "$py" -c \
    'import affext, torch; print(affext.__file__, "torch", torch.__version__)')
  echo "tests: $(basename "$wheel") with $where"
  case "$where" in
    "$site"/*) ;;
    *)
      echo "abi_check: affext was not imported from $site" >&2
      exit 1
      ;;
  esac
  local log="$WORK/$3-tests.log"
  (cd "$WORK" && PYTHONPATH="$site" "$py" -m pytest -q -p no:cacheprovider \
    "${OP_TESTS[@]/#/$ROOT/tests/}") >"$log" 2>&1 || {
    tail -30 "$log" >&2
    echo "abi_check: the op tests failed ($log)" >&2
    exit 1
  }
  tail -1 "$log"
}

echo "abi_check: torch $(torch_of "$PY_A") ($PY_A) and torch $(torch_of "$PY_B") ($PY_B), in $WORK"
WHEEL_A=$(build "$PY_A" a)
WHEEL_B=$(build "$PY_B" b)
for w in "$WHEEL_A" "$WHEEL_B"; do
  echo "wheel: $(basename "$w"), $(stat -c %s "$w") bytes"
  audit "$w"
done
run_tests "$WHEEL_A" "$PY_B" a-on-b
run_tests "$WHEEL_B" "$PY_A" b-on-a
echo "abi_check: passed"
