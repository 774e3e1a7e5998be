"""Exceptions. Every failure a user can cause is a `QuerysepError` with a one-line message."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of a library's error, for one-line messages that keep its gist."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class QuerysepError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class AudioError(QuerysepError):
    """Unreadable, empty, non-finite or out-of-range audio (input or output)."""


class QueryError(QuerysepError):
    """An empty, malformed or unusable query."""


class ModelLoadError(QuerysepError):
    """A model bundle, config or hub download that cannot be used."""


class ConfigError(ModelLoadError):
    """A model config with missing or invalid fields."""


class DataError(QuerysepError):
    """A manifest, corpus or dataset that cannot be used as given."""
