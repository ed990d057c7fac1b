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
