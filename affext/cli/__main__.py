"""`python -m affext.cli`: the same command as `affext`."""

import sys

from . import main

sys.exit(main())
