#!/usr/bin/env bash
# Lint, format and type checks (CI runs them): ruff for Python, clang-format for C++/CUDA,
# mypy on the public API. Configured in pyproject.toml ([tool.ruff], [tool.mypy]) and
# .clang-format. `--fix` rewrites instead (and then type-checks).
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
mapfile -t CSRC < <(git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh')
# one command a line: under set -e a failure inside an `a && b` list does not stop the script
if [ "${1:-}" = "--fix" ]; then
  ruff check --fix .
  ruff format .
  clang-format -i "${CSRC[@]}"
else
  ruff check .
  ruff format --check .
  clang-format --dry-run --Werror "${CSRC[@]}"
fi
# the files [tool.mypy] lists
mypy
echo "lint: clean"
