"""Errors a user can cause. The CLI turns each into one line and an exit code; nothing else does."""

from __future__ import annotations

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_GATE_FAILED = 2
EXIT_INTERRUPTED = 3
EXIT_CRASH = 4  # a bug in eikd-edge, not in the user's input


class EikdError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""

    exit_code = EXIT_USER_ERROR


class GateFailed(EikdError):
    """An exported artifact or a student did not pass a parity/accuracy gate."""

    exit_code = EXIT_GATE_FAILED


class Interrupted(EikdError):
    """The user stopped a long job (Ctrl-C); the last checkpoint is intact."""

    exit_code = EXIT_INTERRUPTED
