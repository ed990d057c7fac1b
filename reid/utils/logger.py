"""Logging to the console and OUTPUT_DIR/log.txt; only rank 0 speaks."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from reid.utils.fsio import describe_write_error

_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


class _LogFileHandler(logging.FileHandler):
    """log.txt. A write that fails (a full disk) is said once on the console, in our words, and the file is
    dropped for the rest of the run: the run goes on logging to the console, instead of logging printing its
    own traceback for every line."""

    def __init__(self, path: Path, owner: logging.Logger) -> None:
        super().__init__(path)
        self.owner = owner
        self.dropped = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.dropped:  # a dropped handler would reopen the file (mode "a") and fail again
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            return super().handleError(record)
        with self.lock:
            if self.dropped:
                return
            self.dropped = True
        message = describe_write_error(error, self.baseFilename, note="Log lines go to the console only from now on.")
        sys.stderr.write(message + "\n")
        self.owner.removeHandler(self)
        try:
            self.close()
        except OSError:
            pass  # closing flushes into the same full disk


def setup_logger(output_dir: str | Path | None = None, rank: int = 0, name: str = "reid") -> logging.Logger:
    """Configure the ``reid`` logger once per call site; non-zero ranks only log warnings."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(console)
    if output_dir is not None and rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = _LogFileHandler(Path(output_dir) / "log.txt", logger)
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(file_handler)
    return logger
