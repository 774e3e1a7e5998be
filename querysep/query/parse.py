"""What the user asked for: instruction parsing and the `Query` value object.

A query names one target. "extract the dog" and "dog" extract the dog; "remove the dog" and
"everything except the dog" ask for the rest of the mixture. The verb never reaches CLAP: it
was trained on captions, and "remove the dog" embeds close to "dog".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from querysep.errors import QueryError

Mode = Literal["extract", "remove"]

_ARTICLE = r"(?:(?:all|any)\s+(?:of\s+)?)?(?:the\s+|a\s+|an\s+|some\s+|that\s+|this\s+)?"
_POLITE = r"(?:(?:please|can you|could you|now)\s+)*"
_REMOVE = re.compile(
    _POLITE + r"(?:remove|mute|suppress|silence|get\s+rid\s+of|eliminate|erase|delete|filter\s+out"
    r"|cut\s+out|take\s+out|cancel)\s+" + _ARTICLE + r"(?P<x>.+)",
    re.IGNORECASE,
)
_EXCEPT = re.compile(
    _POLITE + r"(?:(?:keep|extract|give\s+me|get)\s+)?(?:everything|all|anything)\s+"
    r"(?:except|but|other\s+than|apart\s+from)\s+(?:for\s+)?" + _ARTICLE + r"(?P<x>.+)",
    re.IGNORECASE,
)
_EXTRACT = re.compile(
    _POLITE + r"(?:extract|isolate|keep|get|separate|give\s+me|pull\s+out|find|retain)\s+"
    r"(?:only\s+)?" + _ARTICLE + r"(?P<x>.+)",
    re.IGNORECASE,
)
_BUT_NOT = re.compile(r"(?P<x>.+?)\s*,?\s+but\s+not\s+" + _ARTICLE + r"(?P<neg>.+)", re.IGNORECASE)
_ONLY = re.compile(r"(?:only|just)\s+" + _ARTICLE + r"(?P<x>.+)", re.IGNORECASE)


_NOT_A_SOUND = {
    "the", "a", "an", "all", "any", "some", "this", "that", "it", "everything", "only", "just",
    "extract", "isolate", "keep", "get", "separate", "remove", "mute", "suppress", "silence",
    "delete", "erase", "eliminate", "cancel", "find", "retain",
}  # fmt: skip


#: Words that join sounds but name none ("extract everything except" names nothing).
_LINKS = {"except", "but", "not", "without", "and", "or", "of"}


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().strip(".!?;:,").strip()


def parse_instruction(text: str) -> tuple[Mode, str, str | None]:
    """Split an instruction into (mode, sound description, negative description or None)."""
    if not isinstance(text, str):
        raise QueryError(f"a text query must be a string, got {type(text).__name__}")
    cleaned = _clean(text)
    if not cleaned:
        raise QueryError("the query is empty: describe the sound to extract, e.g. 'dog barking'")
    mode: Mode = "extract"
    body = cleaned
    for pattern, pattern_mode in ((_EXCEPT, "remove"), (_REMOVE, "remove"), (_EXTRACT, "extract")):
        match = pattern.fullmatch(cleaned)
        if match:
            mode, body = pattern_mode, _clean(match["x"])  # type: ignore[assignment]
            break
    else:
        match = _ONLY.fullmatch(cleaned)
        if match:
            body = _clean(match["x"])
    negative = None
    match = _BUT_NOT.fullmatch(body)
    if match:
        body, negative = _clean(match["x"]), _clean(match["neg"]) or None
    if not body or all(w in _NOT_A_SOUND | _LINKS for w in body.lower().split()):
        raise QueryError(f"the query {text.strip()!r} names no sound after its verb")
    return mode, body, negative


@dataclass(frozen=True)
class AudioQuery:
    """An example recording of the sound to extract: a path, or an array with its rate."""

    audio: Any
    sample_rate: int | None = None

    def describe(self) -> str:
        if isinstance(self.audio, (str, Path)):
            return f"audio:{Path(self.audio).name}"
        return "audio-example"


QueryPart = str | AudioQuery


@dataclass(frozen=True)
class Query:
    """One target: weighted positive parts (text and/or audio) and optional negatives.

    Several positives are embedded and averaged with their weights (their union); negatives
    say what must not be extracted.
    """

    positives: tuple[QueryPart, ...]
    weights: tuple[float, ...] = ()
    negatives: tuple[QueryPart, ...] = ()
    mode: Mode = "extract"
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def files(self) -> tuple[Path, ...]:
        """The audio examples it reads from disk: inputs, never to be overwritten."""
        parts = self.positives + self.negatives
        return tuple(
            Path(p.audio)
            for p in parts
            if isinstance(p, AudioQuery) and isinstance(p.audio, str | Path)
        )

    def __post_init__(self) -> None:
        if not self.positives:
            raise QueryError("a query needs at least one text or audio part")
        weights = self.weights or (1.0,) * len(self.positives)
        if any(isinstance(w, bool) or not isinstance(w, int | float) for w in weights):
            raise QueryError(f"query weights must be numbers, got {weights}")
        if len(weights) != len(self.positives):
            raise QueryError(f"{len(self.positives)} query parts but {len(weights)} weights")
        if any(not 0 <= w < float("inf") for w in weights) or sum(weights) <= 0:
            raise QueryError(
                f"query weights must be finite, non-negative and not all zero: {weights}"
            )
        object.__setattr__(self, "weights", tuple(float(w) for w in weights))
        if self.mode not in ("extract", "remove"):
            raise QueryError(f"query mode must be 'extract' or 'remove', not {self.mode!r}")
        if not self.label:
            object.__setattr__(self, "label", " + ".join(_describe(p) for p in self.positives))

    @classmethod
    def from_text(cls, text: str) -> Query:
        mode, body, negative = parse_instruction(text)
        return cls(
            (body,), negatives=(negative,) if negative else (), mode=mode, label=_clean(text)
        )

    @classmethod
    def make(
        cls,
        text: str | Sequence[str] | None = None,
        audio: Any = None,
        *,
        sample_rate: int | None = None,
        weights: Sequence[float] | None = None,
        negative: Any = None,
        mode: Mode | None = None,
    ) -> Query:
        """Build a mixed query: text (one or several) and/or an audio example, with weights.

        Instruction verbs in the text still set the mode, unless `mode` is given.
        """
        parts: list[QueryPart] = []
        negatives: list[QueryPart] = []
        modes: set[str] = set()
        labels: list[str] = []
        if text is not None and not isinstance(text, str | AudioQuery | list | tuple):
            raise QueryError(f"a query is text or an AudioQuery, got {type(text).__name__}")
        items = [text] if isinstance(text, str | AudioQuery) else list(text or [])
        for t in items:
            if isinstance(t, AudioQuery):  # Query.make(AudioQuery(...)) positionally
                parts.append(t)
                labels.append(t.describe())
                continue
            if not isinstance(t, str):
                raise QueryError(f"a query part is text or an AudioQuery, got {type(t).__name__}")
            parsed = cls.from_text(t)
            parts.extend(parsed.positives)
            negatives.extend(parsed.negatives)
            modes.add(parsed.mode)
            labels.append(parsed.label)
        if audio is not None:
            example = audio if isinstance(audio, AudioQuery) else AudioQuery(audio, sample_rate)
            parts.append(example)
            labels.append(example.describe())
        if len(modes) > 1 and mode is None:
            raise QueryError("one query cannot both extract and remove: split it into two queries")
        negatives.extend(_as_parts(negative))
        if weights is not None and (
            isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__")
        ):
            raise QueryError(
                f"weights must be a list or tuple of numbers, one per query part, got {weights!r}"
            )
        return cls(
            tuple(parts),
            tuple(weights) if weights is not None else (),
            tuple(negatives),
            mode or (modes.pop() if modes else "extract"),  # type: ignore[arg-type]
            " + ".join(labels),
        )

    def with_negatives(self, negative: Any) -> Query:
        extra = _as_parts(negative)
        if not extra:
            return self
        return Query(
            self.positives, self.weights, self.negatives + tuple(extra), self.mode, self.label
        )


def _as_parts(value: Any) -> list[QueryPart]:
    if value is None:
        return []
    if isinstance(value, (str, AudioQuery)):
        items: list[Any] = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise QueryError(
            f"a negative query must be text or an AudioQuery, got {type(value).__name__}"
        )
    parts: list[QueryPart] = []
    for item in items:
        if isinstance(item, AudioQuery):
            parts.append(item)
        elif isinstance(item, str):
            _, body, _ = parse_instruction(item)
            parts.append(body)
        else:
            raise QueryError(
                f"a negative query must be text or an AudioQuery, got {type(item).__name__}"
            )
    return parts


def _describe(part: QueryPart) -> str:
    return part if isinstance(part, str) else part.describe()


def as_query(value: Any) -> Query:
    """Normalise what the API accepts for one query: a string, an AudioQuery or a Query."""
    if isinstance(value, Query):
        return value
    if isinstance(value, str):
        return Query.from_text(value)
    if isinstance(value, Path):  # a path object can only mean an example recording
        value = AudioQuery(value)
    if isinstance(value, AudioQuery):
        return Query((value,), label=value.describe())
    raise QueryError(
        "a query must be text, a Path to an example, querysep.AudioQuery or querysep.Query, "
        f"got {type(value).__name__}"
    )


def as_queries(value: Any) -> tuple[list[Query], bool]:
    """Returns the queries and whether the caller passed a list (so wants a list back)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise QueryError("the list of queries is empty")
        return [as_query(v) for v in value], True
    return [as_query(value)], False


def slug(text: str, max_len: int = 48) -> str:
    """File-name-safe form of a query label."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:max_len].rstrip("-") or "query"
