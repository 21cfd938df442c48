#!/usr/bin/env bash
# Everything a GPU machine should check, in one go:
#   scripts/gpu_check.sh OUT_DIR [pytest arguments, e.g. -m cuda]
# 1. builds affext WITH its CUDA kernels (AFFEXT_CUDA=1: the build fails if it cannot
#    compile them) and checks that torch sees a GPU and affext was built for it;
#      GPU_CHECK_ENV=venv     (default) into the virtual environment of scripts/env.sh
#                             (.venv, or $AFFEXT_VENV; creating one needs the network);
#      GPU_CHECK_ENV=current  in place (build_ext --inplace) for the python on PATH, which
#                             must already have torch with CUDA, numpy, matplotlib, pytest;
# 2. runs the test suite, the whole of it unless pytest arguments are given (the CUDA tests
#    skip themselves only where no GPU is seen, and step 1 has made sure one is);
# 3. runs `affext bench --device cuda`, and with GPU_CHECK_CPU_BENCH=1 the CPU bench too;
# 4. runs the AffinityNet training-step benchmark (benchmarks/bench_train_step.py: resnet38,
#    B=8, 448 crop, affext's ops vs psa's formulation, step time and peak memory);
# 5. runs PAR against AFA / ToCo's formulation on the GPU (benchmarks/bench_par.py: B=2 at
#    224x224 and ToCo's training step, B=4 with both thresholds' 42 channels);
# 6. runs make-rw's device path against psa's per-image path (benchmarks/bench_make_rw.py:
#    resnet38, 500x375 images, images/s of each);
# 7. runs the dense CRF's CUDA tests (tests/test_dense_crf.py -m cuda, also when pytest
#    arguments narrow step 2) and its benchmark against pydensecrf
#    (benchmarks/bench_dense_crf.py: 375x500 with 3 and 21 labels, la + ha, a batch of 8).
# The build uses the system compiler (CC=/usr/bin/gcc CXX=/usr/bin/g++) where it exists and
# CC/CXX are not set: some GPU machines put first on PATH a gcc that links libstdc++
# statically, and with such a build every error raised inside an op crashes the process
# (segfault) instead of raising an exception (setup.py warns about it).
# Leaves under OUT_DIR: build.log, tests.log, bench_cuda.{json,png,log}
# bench_walk_cuda.{json,log}, bench_par_cuda.{json,log} (bench_cpu.{json,png,log}),
# train_step.{json,log}, bench_make_rw.{json,log}, crf_tests.log, bench_crf_cuda.{json,log},
# and summary.txt with each step's exit
# status. The steps after a
# failed test step still run; the script exits non-zero if any step failed.
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [pytest arguments]" >&2
  exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
FAILED=0

build() {
  export AFFEXT_CUDA=1
  if [ -z "${CC:-}" ] && [ -z "${CXX:-}" ] && [ -x /usr/bin/gcc ] && [ -x /usr/bin/g++ ]; then
    export CC=/usr/bin/gcc CXX=/usr/bin/g++
  fi
  echo "C++ compiler: ${CXX:-c++} ($(command -v "${CXX:-c++}"))"
  case "${GPU_CHECK_ENV:-venv}" in
    venv)
      # shellcheck disable=SC1091
      . "$ROOT/scripts/env.sh" || return 1 ;;
    current)
      (cd "$ROOT" && MAX_JOBS=${MAX_JOBS:-8} python setup.py build_ext --inplace) || return 1
      export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" ;;
    *)
      echo "GPU_CHECK_ENV must be venv or current, got ${GPU_CHECK_ENV}" >&2
      return 1 ;;
  esac
  nvidia-smi || true
  python - <<'PY'
import json, sys
import torch
import affext
info = affext.build_info()
print("torch", torch.__version__, "CUDA", torch.version.cuda)
print(json.dumps(info, indent=2))
if not info["cuda"]:
    sys.exit("affext was built without its CUDA kernels")
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
print("device:", torch.cuda.get_device_name(0))
PY
}

# The build runs in this shell, not a subshell, so that its environment (the venv, or
# PYTHONPATH) holds for the steps below; env.sh turns on `set -e`, turned off again here.
echo "== build with the CUDA kernels (log: $OUT/build.log)"
build > "$OUT/build.log" 2>&1
rc=$?
set +e
echo "build: exit $rc" | tee -a "$SUMMARY"
if [ "$rc" -ne 0 ]; then
  tail -n 30 "$OUT/build.log" >&2
  echo "the build or the GPU check failed: see $OUT/build.log" >&2
  exit 1
fi
cd "$ROOT"

step() {  # step NAME LOG COMMAND...: run it, its stdout and stderr to LOG; record the status
  local name=$1 log=$2
  shift 2
  echo "== $name (log: $log)"
  "$@" > "$log" 2>&1
  local status=$?
  echo "$name: exit $status" | tee -a "$SUMMARY"
  [ "$status" -eq 0 ] || FAILED=1
}

# `affext bench` where the command line exists (affext.cli), else the same module directly.
if python -c "import affext.cli" 2> /dev/null && command -v affext > /dev/null; then
  BENCH=(affext bench)
else
  BENCH=(python -m affext.bench)
fi

step tests "$OUT/tests.log" python -m pytest -q -ra "$@"
step "bench cuda" "$OUT/bench_cuda.log" \
  "${BENCH[@]}" --device cuda --json "$OUT/bench_cuda.json" --plot "$OUT/bench_cuda.png"
step "bench walk cuda" "$OUT/bench_walk_cuda.log" python -m pytest -q -s -k cuda \
  benchmarks/bench_random_walk.py --benchmark-json="$OUT/bench_walk_cuda.json"
step "bench par cuda" "$OUT/bench_par_cuda.log" python -m pytest -q -s -k cuda \
  benchmarks/bench_par.py --benchmark-json="$OUT/bench_par_cuda.json"
if [ "${GPU_CHECK_CPU_BENCH:-0}" = 1 ]; then
  step "bench cpu" "$OUT/bench_cpu.log" \
    "${BENCH[@]}" --device cpu --json "$OUT/bench_cpu.json" --plot "$OUT/bench_cpu.png"
fi
step "train step" "$OUT/train_step.log" python -m pytest -q -s -k cuda \
  benchmarks/bench_train_step.py --benchmark-json="$OUT/train_step.json"
step "bench make-rw" "$OUT/bench_make_rw.log" \
  python benchmarks/bench_make_rw.py --device cuda --json "$OUT/bench_make_rw.json"
step "dcrf cuda tests" "$OUT/crf_tests.log" python -m pytest -q -ra -m cuda tests/test_dense_crf.py
step "bench dcrf cuda" "$OUT/bench_crf_cuda.log" python -m pytest -q -s -k cuda \
  benchmarks/bench_dense_crf.py --benchmark-json="$OUT/bench_crf_cuda.json"

echo "== summary ($SUMMARY)"
cat "$SUMMARY"
tail -n 1 "$OUT/tests.log"
# The bench's tables (stdout) follow its progress lines (stderr) in its log.
sed -n '/^affext bench, /,$p' "$OUT/bench_cuda.log"
grep -h '^\[cuda' "$OUT/bench_walk_cuda.log" "$OUT/bench_par_cuda.log" "$OUT/train_step.log" \
  "$OUT/bench_crf_cuda.log"
tail -n 1 "$OUT/crf_tests.log"
sed -n '/^make-rw device path/,$p' "$OUT/bench_make_rw.log"
exit "$FAILED"
