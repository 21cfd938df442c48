"""The optional dependencies: `pip install .` gives the ops (torch and numpy only); the
pipeline's libraries come with the `pipeline` extra. A part that needs one says which."""

from __future__ import annotations

import importlib.util

PIPELINE_EXTRA = "pip install 'affext[pipeline]'"
# import name -> distribution, as pyproject.toml's `pipeline` extra lists them
PIPELINE = {
    "PIL": "pillow",
    "tqdm": "tqdm",
    "pydensecrf": "pydensecrf2",
    "matplotlib": "matplotlib",
    "yaml": "pyyaml",
}


class MissingExtraError(ImportError):
    """A library of an optional extra is not installed; the message says what to install."""


def require(what: str, modules: tuple[str, ...]) -> None:
    """Raise MissingExtraError naming `what` needs and how to install it, when any of
    `modules` (keys of PIPELINE) cannot be imported."""
    missing = [PIPELINE[m] for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"{what} needs {', '.join(missing)}, which come with the pipeline extra: "
            f"{PIPELINE_EXTRA}"
        )
