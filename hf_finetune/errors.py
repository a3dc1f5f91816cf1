"""The one exception type for mistakes a user can fix.

Raise ``UserError("what is wrong: how to fix it")``; every step's ``main`` turns it into one line
on stderr and exit status 2. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input, with a one-line message that says how to fix it."""
