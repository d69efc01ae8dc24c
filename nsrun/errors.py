"""Errors nsrun reports as one line on stderr, with the exit status scripts can trust."""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2


class NsrunError(Exception):
    """A failure of nsrun itself (exit 1)."""

    exit_code = EXIT_FAILURE


class UsageError(NsrunError):
    """Bad input: names, profiles, arguments, privileges (exit 2)."""

    exit_code = EXIT_USAGE


class ProfileError(UsageError):
    """A profile that cannot be used; the message names the file, the key and the reason."""

    def __init__(self, source: str, key: str | None, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        shown = source if source.isprintable() else repr(source)  # one line, whatever the path
        where = f"{shown}: {key}" if key else shown
        super().__init__(f"{where}: {reason}")
