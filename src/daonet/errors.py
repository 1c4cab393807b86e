"""One error family, so every entry point can answer with a message that says what to fix."""

from __future__ import annotations


class DaonetError(Exception):
    """Base class: ``str(err)`` is a complete, user-facing sentence (what is wrong, how to fix it)."""


class InputError(DaonetError, ValueError):
    """An input array or argument has the wrong shape, dtype, range or contains NaN/inf."""


class DatasetError(DaonetError):
    """A data set is unknown, not installed, or its files are malformed."""


class BundleError(DaonetError):
    """A bundle is missing files, was tampered with, or does not match its counterpart."""


class VersionMismatchError(BundleError):
    """Device and server halves come from different models or versions."""

    def __init__(self, message: str, *, expected: str, got: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class PayloadError(DaonetError, ValueError):
    """A sparse payload is malformed, truncated or inconsistent with the model."""


class MalformedPayloadError(PayloadError):
    """The bytes cannot be framed as a payload at all (truncated, wrong magic, bad widths): HTTP 400."""


class InvalidPayloadError(PayloadError):
    """A well-framed payload whose content is impossible (index range, duplicates, negative, NaN): HTTP 422."""
