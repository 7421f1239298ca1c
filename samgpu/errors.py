"""Every error a user can cause, in one place. The CLI prints such an error as one line
`samgpu: error: ...` (no traceback) and exits with its `exit_code`; API callers get ordinary
exception types too (InputError is a ValueError, SetupError a RuntimeError).

- UserError  (exit 2): what the user asked for is wrong (arguments, options, files).
- InputError (exit 2): a malformed input file, record or index (the message names file and line).
- SetupError (exit 1): the environment cannot run the request (CUDA missing, out of memory, ...).
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_ENVIRONMENT = 1


class UserError(Exception):
    """A problem with what the user asked for (input, options, environment): the CLI prints the
    message alone, without a traceback, and exits with `exit_code`."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(UserError, ValueError):
    """Bad input: a malformed input file or record (the message names file and line), a missing
    or corrupt index, an unknown dtype. A ValueError for API callers."""


class SetupError(UserError, RuntimeError):
    """The environment cannot run the request (CUDA missing, out of memory at set-up, ...)."""

    exit_code = EXIT_ENVIRONMENT


__all__ = ["EXIT_ENVIRONMENT", "EXIT_USAGE", "InputError", "SetupError", "UserError"]
