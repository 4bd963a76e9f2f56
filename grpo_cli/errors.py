"""One exception type for every input a user can get wrong.

The CLI turns a `UserError` into a one-line message and exit code 2; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""
