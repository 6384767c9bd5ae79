"""Exceptions that the command line turns into one clear line and exit code 2."""

from __future__ import annotations


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
