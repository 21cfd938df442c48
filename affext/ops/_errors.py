"""Errors of the kernels as the Python API raises them.

The kernels are built against PyTorch's stable ABI, across which an error arrives as
RuntimeError only. Argument checks run in the wrappers first (the fake kernels' checks,
affext/ops/_fake_checks.py); what only the kernel can find, reading the values (NaN, values out
of range) or its launch settings, it reports with a message that this module maps back to the
ValueError the op documents.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator


@contextlib.contextmanager
def value_errors(pattern: str) -> Iterator[None]:
    """Re-raises a kernel's RuntimeError whose message begins with a match of the regular
    expression pattern as ValueError (same message)."""
    try:
        yield
    except RuntimeError as exc:
        if re.match(pattern, str(exc)):
            raise ValueError(str(exc)) from None
        raise
