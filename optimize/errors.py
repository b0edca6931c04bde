"""The one exception type for mistakes a user can fix.

The CLI catches :class:`MoptError` in one place, prints its message on one line to stderr and exits 1.
Anything else is a bug and keeps its traceback.
"""


class MoptError(Exception):
    """A user-facing error: the message says what was wrong and what to do about it."""
