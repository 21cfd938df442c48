# Sourced by the other scripts: makes (once) the virtual environment .venv with affext's
# dependencies, builds affext into it, and activates it.
#   PYTHON        interpreter to create the venv with (default python3)
#   AFFEXT_VENV   where the venv lives (default .venv in the checkout)
#   AFFEXT_CUDA   1: build the CUDA kernels (fail if impossible), 0: CPU only, unset: auto
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${AFFEXT_VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  echo "== installing torch"
  python -m pip install -q torch
fi
# Dependencies come from pyproject.toml (the one list), installed with build isolation:
# pydensecrf2 is an sdist whose build needs Cython in its own build environment.
mapfile -t DEPS < <(python - "$ROOT/pyproject.toml" <<'PY'
import sys, tomllib
meta = tomllib.load(open(sys.argv[1], "rb"))
project = meta["project"]
deps = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
print("\n".join(["setuptools>=64", "wheel"] + [d for d in deps if not d.startswith("torch")]))
PY
)
python -m pip install -q "${DEPS[@]}"
# affext itself, built against the torch installed above (no isolation), only when its
# sources changed since the last build in this venv.
STAMP="$VENV/.affext-build-stamp"
# the compiler and the arch list are part of the build: a change rebuilds
SIG=$(cd "$ROOT" && cat setup.py pyproject.toml $(find csrc -type f | sort) | sha1sum | cut -d' ' -f1)-${AFFEXT_CUDA:-auto}-${CXX:-c++}-${TORCH_CUDA_ARCH_LIST:-default}
if [ "$(cat "$STAMP" 2>/dev/null)" != "$SIG" ] || ! python -c "import affext" 2>/dev/null; then
  echo "== building affext (AFFEXT_CUDA=${AFFEXT_CUDA:-auto})"
  (cd "$ROOT" && python -m pip install -q --no-build-isolation --no-deps -e .)
  echo "$SIG" > "$STAMP"
fi
python -c "import affext, json; print('affext build:', json.dumps(affext.build_info()))"
