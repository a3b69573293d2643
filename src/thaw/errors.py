"""The one exception type for bad user input: the CLI prints it as one line and exits non-zero."""


class ThawError(Exception):
    """A problem the user can fix. The message names the value, what is valid, and the fix."""
