"""The one exception type for bad user input: the CLI prints it as one line and exits non-zero.

Exit codes of ``thaw`` (README, "What thaw promises"): 0 success; 1 an unexpected error; 2 a problem the
user can fix (bad input, a file that cannot be written); ``predict``, ``evaluate`` and ``embed`` exit
:data:`SOME_FAILED` when some inputs could not be read (the others have results) and :data:`NONE_READ` when
none could; 130 on Ctrl-C, 143 on SIGTERM.
"""

USER_ERROR = 2
SOME_FAILED = 3
NONE_READ = 4


class ThawError(Exception):
    """A problem the user can fix. The message names the value, what is valid, and the fix."""

    exit_code = USER_ERROR


class NothingRead(ThawError):
    """Not one input (image) could be read: ``predict``, ``evaluate`` and ``embed`` exit :data:`NONE_READ`."""

    exit_code = NONE_READ
