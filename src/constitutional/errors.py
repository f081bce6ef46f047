"""One error type for bad user input: the CLI prints it on one line and exits 2."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input the user can fix: a missing file, an invalid line, an unknown model.

    Args:
        message: what is wrong, in one line.
        path: the file at fault, if any.
        line: 1-based line number inside `path`, if known.
    """

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message, self.path, self.line = message, path, line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line else f"{self.path}: "
        return where + self.message


class BackendError(Exception):
    """A model backend failed for good (retries exhausted, server unreachable, missing feature)."""

    exit_code = 1
