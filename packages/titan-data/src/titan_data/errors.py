"""The one error class for user mistakes in titan-data, and helpers that word its messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DataError(ValueError):
    """A user mistake about data: a bad name, path, field, size or file format.

    The message names the argument or path, the bad value and what is allowed, so the trainer can
    print it without a traceback.
    """


def unknown_name(kind: str, name: str, known: Iterable[str]) -> DataError:
    """An error for an unknown registry name, listing the known names and the closest match."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return DataError(f"unknown {kind} {name!r}: known {kind}s are {', '.join(known)}{hint}")


def check_positive(name: str, value: object) -> int:
    """`value` as a positive int, or a DataError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return value
