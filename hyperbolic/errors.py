"""The one base error for "the run cannot start or go on as asked": every entry script's ``main``
catches ``UserError`` alone, logs its message and exits with status 2.

A subclass's message names the file, row, column or flag at fault and the fix. Errors of the
code itself are never ``UserError``: they keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Input or settings the run cannot use as given; the message says what to change."""
