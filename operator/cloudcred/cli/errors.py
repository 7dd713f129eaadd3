"""The command-line companion's errors, each with its exit code.

Messages are one line for people; they never hold a secret value (the key material
read by ``rotate`` is never formatted into one).
"""

from __future__ import annotations

OK, ERROR, USAGE, TIMED_OUT = 0, 1, 2, 3


class CliError(Exception):
    """Ends the command with ``cloudcred: <message>`` on stderr and ``exit_code``."""

    exit_code = ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CliError):
    """Bad arguments or bad input: exit 2."""

    exit_code = USAGE


class NotFoundError(CliError):
    """The object named on the command line does not exist: exit 1."""


class ApiError(CliError):
    """The API server refused a request or could not be reached: exit 1. ``status`` is
    the HTTP status of a refusal (None when the server could not be reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TimedOutError(CliError):
    """The wait ran out: exit 3."""

    exit_code = TIMED_OUT
