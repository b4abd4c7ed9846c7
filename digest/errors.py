"""The error hierarchy: every failure a user must act on is a DigestError, caught in the CLI."""

from __future__ import annotations


class DigestError(Exception):
    """A failure the user must act on; its message names the file, line, key or address."""

    exit_code = 1


class ConfigError(DigestError):
    """The settings file or environment holds a bad key or value."""


class ParseError(DigestError):
    """A dump cannot be parsed; carries the file name and line when known."""

    def __init__(self, reason: str, *, file: str | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        where = file or "<input>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {reason}")


class QueryError(DigestError):
    """A keyword query is malformed; carries the 1-based column and a hint."""

    def __init__(self, message: str, *, query: str, column: int, hint: str = "") -> None:
        self.query = query
        self.column = column
        self.hint = hint
        text = f"column {column}: {message}"
        if hint:
            text += f" (hint: {hint})"
        super().__init__(text)


class StoreError(DigestError):
    """The database cannot be reached or holds something unexpected."""


class NotFoundError(DigestError):
    """A named subscriber, digest or file does not exist."""


class ValidationError(DigestError):
    """User input (an email address, a cadence, a time zone...) is invalid."""


class DeliveryError(DigestError):
    """A message could not be handed to the transport."""


class RenderError(DigestError):
    """One digest cannot be rendered or built into a message: it fails alone, sending goes on."""


class LockError(DigestError):
    """Another daemon holds the database lock."""


class ConsentError(ValidationError):
    """An admin path tried to (re)subscribe someone who left or asked to be erased: only the
    person themselves can come back, by a new double opt-in. The message says when and how."""


class UsageError(DigestError):
    """The command was called wrongly (exit 2, as argparse's own usage errors)."""

    exit_code = 2
