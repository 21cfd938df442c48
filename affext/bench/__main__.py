"""`python -m affext.bench`: the same as `affext bench`."""

import sys

from .cli import run_cli

sys.exit(run_cli())
