"""`python -m affext`: the same command as `affext`."""

import sys

from .cli import main

sys.exit(main())
