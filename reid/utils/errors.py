"""User-facing errors.

Anything the user can fix (a missing folder, a bad config key, a corrupt checkpoint) raises
:class:`ReIDError` with a one-paragraph message. The command-line entry points catch it, print the
message and exit non-zero, so users never see a bare traceback for their own mistakes.
"""

from __future__ import annotations


class ReIDError(Exception):
    """An error caused by user input, with a message that says what to do about it."""

    exit_code = 2


class ConfigError(ReIDError):
    """An unknown config key, a wrongly typed value or a config file that cannot be read."""


class DatasetError(ReIDError):
    """A dataset folder that is missing, malformed, or holds an unreadable image."""


class CheckpointError(ReIDError):
    """A checkpoint that is missing, corrupt, unsafe, or does not match the model."""


def summarize_exception(exc: BaseException, limit: int = 300) -> str:
    """The gist of a library exception for a one-paragraph message: its first informative line.

    A header ending in ':' (e.g. torch's "Error(s) in loading state_dict for ReIDModel:") is joined with
    the line after it; an empty message falls back to the exception's type.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    gist = lines[0] + (" " + lines[1] if lines[0].endswith(":") and len(lines) > 1 else "")
    return gist if len(gist) <= limit else gist[: limit - 3] + "..."
