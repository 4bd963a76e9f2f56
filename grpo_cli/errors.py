"""The two exception types a user sees as one line instead of a traceback.

The CLI turns a `UserError` into a one-line message and exit code 2, an `EnvFailure` into one line and
exit code 1; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class EnvFailure(RuntimeError):
    """An env raised (e.g. MuJoCo instability, an invalid camera frame) or its worker process died: the
    rollout can be retried."""
