"""Error types that map onto the CLI's exit codes."""
from __future__ import annotations


class AeauditError(Exception):
    """Base class for errors aeaudit raises on purpose."""

    exit_code = 3


class InputError(AeauditError):
    """Bad input or usage: the message is one line saying what, where and how to fix it (exit 2)."""

    exit_code = 2


class UntrustedCheckpointError(InputError):
    """Loading would unpickle arbitrary objects and the user did not pass --trust-checkpoint."""
