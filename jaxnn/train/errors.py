"""Failures of a run that the user can cause or fix, each with the exit code train.py returns.

    RunError                      base: ``exit_code``, ``path`` (or None) and a message that
                                  says what to do
      InputError         exit 2   bad input: the command, the config, the data, the workdir
        ConfigMismatchError       the workdir holds a run of another config
        DataError                 the data cannot be read or is malformed (missing file, bad
                                  column, unknown label, failed checksum)
        DataMismatchError         the workdir holds a run on other data
        EmptySplitError           a split got no examples
        WorkdirBusyError          another live process holds the workdir's lock
      EnvironmentFailure exit 1   the machine: disk full, no permission, a read-only filesystem,
                                  no readable checkpoint left
    NonFiniteLossError   exit 3   the loss became NaN/inf (a FloatingPointError, not a RunError)

train.py prints ``error: <message>`` and returns ``exit_code``.
"""

from __future__ import annotations

import errno
from pathlib import Path

__all__ = [
    "ConfigMismatchError",
    "DataError",
    "DataMismatchError",
    "EmptySplitError",
    "EnvironmentFailure",
    "InputError",
    "NonFiniteLossError",
    "RunError",
    "WorkdirBusyError",
    "environment_failure",
]


class RunError(Exception):
    """A failure with a message for the user, the ``path`` it concerns and an ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


class InputError(RunError, ValueError):
    """Bad input (exit code 2): change the command, the config, the data or the workdir."""

    exit_code = 2


class ConfigMismatchError(InputError):
    """The workdir holds a run of a different config (use another workdir, or overwrite)."""


class DataError(InputError):
    """The data cannot be read or is malformed: the message names the file and the problem."""


class DataMismatchError(InputError):
    """The workdir holds a run on different data (use another workdir, or overwrite)."""


class EmptySplitError(InputError):
    """The validation or the test split has no example."""


class WorkdirBusyError(InputError):
    """Another live process holds the workdir's lock; ``holder`` is its lock record."""

    def __init__(self, message: str, path: str | Path | None = None, holder: dict | None = None):
        super().__init__(message, path)
        self.holder = holder or {}


class EnvironmentFailure(RunError, OSError):
    """The machine failed the run (exit code 1): no space, no permission, unreadable files."""

    exit_code = 1


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step (exit code 3)."""

    exit_code = 3

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


# errno values that mean "the machine", with what to do about them
_ADVICE = {
    errno.ENOSPC: "free some space (or use a --workdir on another disk) and run the same command",
    errno.EDQUOT: "free some space within your quota and run the same command",
    errno.EACCES: "give this user write permission there, or use another --workdir",
    errno.EPERM: "give this user write permission there, or use another --workdir",
    errno.EROFS: "the filesystem is read-only: use a --workdir on a writable one",
}


def _os_error_in(err: BaseException) -> OSError | None:
    """The first OSError with an errno in ``err``, its causes or its contexts (orbax wraps them)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _ADVICE:
            return err
        err = err.__cause__ or err.__context__
    return None


def environment_failure(
    err: BaseException, path: str | Path, doing: str
) -> EnvironmentFailure | None:
    """An `EnvironmentFailure` naming ``path`` when ``err`` comes from a full disk, a missing
    permission or a read-only filesystem (anywhere in its chain); None for any other error."""
    found = _os_error_in(err)
    if found is None:
        return None
    reason = found.strerror or str(found)
    return EnvironmentFailure(
        f"{doing} {path} failed: {reason} [errno {found.errno}]; {_ADVICE[found.errno]} "
        "(the run resumes from its last complete checkpoint)",
        path,
    )
