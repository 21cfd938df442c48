"""affext's version, the one place it is written.

pyproject.toml reads it ([tool.setuptools.dynamic]) and affext.__version__ re-exports it; modules
that record the version next to their outputs (affext.records, affext.bench.machine) import it from
here rather than from the package root.
"""

__version__ = "0.2.0"
