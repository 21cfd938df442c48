"""`python -m affext.irn`: the same commands as `affext irn`."""

import sys

from .cli import main

sys.exit(main())
