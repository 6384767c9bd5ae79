"""Exceptions that the command line turns into one clear line and an exit code: 2 for bad input,
1 for a run that failed, 128 + signal number for a run stopped by a signal."""

from __future__ import annotations


def one_line(err: BaseException, limit: int = 200, *, first_line: bool = False) -> str:
    """An exception as a short single line for an ``error:`` message: its text with every run
    of whitespace (a crafted file can put newlines in names) made one space, cut at ``limit``
    characters, or its type's name when it has no text. ``first_line`` keeps only the first
    non-blank line, for messages that go on with a dump (the ONNX exporter's do)."""
    text = str(err)
    if first_line:
        text = next((line for line in text.splitlines() if line.strip()), "")
    text = " ".join(text.split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class UserError(Exception):
    """Bad input from the user: a wrong name, a bad value, missing data.

    The CLI prints ``error: <message>`` and exits with status 2; nothing is written.
    """


class UnknownModelError(UserError, KeyError):
    """An unregistered model name. Also a KeyError, as a registry lookup would raise."""

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return str(self.args[0]) if self.args else ""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept on disk."""


class WriteFailed(RuntimeError):
    """A run could not write one of its files (a full disk, an I/O error, a read-only
    filesystem); the previous version of the file is kept. The CLI exits with status 1."""


class Interrupted(BaseException):
    """A run stopped by SIGINT, SIGTERM or SIGUSR1. Like ``KeyboardInterrupt`` it is not an
    ``Exception``: an ``except Exception`` on its way up must not swallow the stop. The CLI
    prints the message (where to resume) and exits with 128 + ``signum``, as a shell reports a
    process ended by that signal (130, 143, 138)."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
