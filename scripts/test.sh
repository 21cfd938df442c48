#!/usr/bin/env bash
# The test command: set up (once) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
