"""The optional dependencies: `pip install .` gives the ops (torch and numpy only); the
pipeline's libraries come with the `pipeline` extra, pycocotools (`affext data coco`) with
the `coco` extra. A part that needs one says which."""

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
# the extras by name, as pyproject.toml's [project.optional-dependencies] lists them
EXTRAS = {"pipeline": PIPELINE, "coco": {"pycocotools": "pycocotools"}}


class MissingExtraError(ImportError):
    """A library of an optional extra is not installed; the message says what to install."""


def require(what: str, modules: tuple[str, ...]) -> None:
    """Raise MissingExtraError naming what `what` needs and how to install it, when any of
    `modules` (import names of EXTRAS' libraries) cannot be imported."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    extras = [name for name, libraries in EXTRAS.items() if any(m in libraries for m in missing)]
    dists = [next(lib[m] for lib in EXTRAS.values() if m in lib) for m in missing]
    raise MissingExtraError(
        f"{what} needs {', '.join(dists)}, which come with the {' and '.join(extras)} "
        f"extra: pip install 'affext[{','.join(extras)}]'"
    )
