"""The one exception type the command line turns into `error: ...` and exit code 2."""


class UserError(Exception):
    """Bad input from the user (configuration, data, paths): reported in one line, no traceback."""
