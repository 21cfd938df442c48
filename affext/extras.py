"""The optional dependencies: `pip install .` gives the ops (torch and numpy only); the
pipeline's libraries come with the `pipeline` extra, pydensecrf (the reference dense CRF,
crf backend "pydensecrf") with `crf-reference`, pycocotools (`affext data coco`) with `coco`.
A part that needs one says which."""

from __future__ import annotations

import importlib.util

from .errors import AffextError

# extra -> {import name: distribution}, as pyproject.toml's optional dependencies list them
EXTRAS = {
    "pipeline": {
        "PIL": "pillow",
        "tqdm": "tqdm",
        "matplotlib": "matplotlib",
        "yaml": "pyyaml",
    },
    "crf-reference": {"pydensecrf": "pydensecrf2"},
    "coco": {"pycocotools": "pycocotools"},
}
PIPELINE = EXTRAS["pipeline"]
PIPELINE_EXTRA = "pip install 'affext[pipeline]'"


class MissingExtraError(AffextError, ImportError):
    """A library of an optional extra is not installed; the message says what to install."""


def require(what: str, modules: tuple[str, ...]) -> None:
    """Raise MissingExtraError naming what `what` needs and how to install it, when any of
    `modules` (import names of EXTRAS) cannot be imported."""
    extra_of = {m: extra for extra, names in EXTRAS.items() for m in names}
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        extras = sorted({extra_of[m] for m in missing}, key=list(EXTRAS).index)
        names = ", ".join(EXTRAS[extra_of[m]][m] for m in missing)
        come = "comes" if len(missing) == 1 else "come"
        which = f"the {extras[0]} extra" if len(extras) == 1 else f"the extras {', '.join(extras)}"
        raise MissingExtraError(
            f"{what} needs {names}, which {come} with {which}: "
            f"pip install 'affext[{','.join(extras)}]'"
        )
