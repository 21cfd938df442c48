#!/usr/bin/env bash
# Lint and format checks (CI runs them): ruff for Python, clang-format for C++/CUDA.
# Configured in pyproject.toml ([tool.ruff]) and .clang-format. `--fix` rewrites instead.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
mapfile -t CSRC < <(git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh')
if [ "${1:-}" = "--fix" ]; then
  ruff check --fix . && ruff format . && clang-format -i "${CSRC[@]}"
else
  ruff check . && ruff format --check . && clang-format --dry-run --Werror "${CSRC[@]}"
fi
echo "lint: clean"
