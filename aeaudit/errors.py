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


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line for an error message: its type and first line."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if first.startswith("The following operation failed in the TorchScript interpreter"):
        return clip_text(text[-1], limit)  # TorchScript puts the real error, with its type, after its traceback
    return f"{type(exc).__name__}: {clip_text(first, limit)}".strip()


def clip_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
