"""One exception type for mistakes a user can fix: stages print it without a traceback."""


class UserError(Exception):
    """Bad input, params or missing weights. The message names the file/param and the fix."""
