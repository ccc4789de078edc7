"""The one error class for checkpoint mistakes, and a closest-match helper for its messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CheckpointError(ValueError):
    """A checkpoint cannot be saved or loaded as asked.

    The message names the folder, step, file or key at fault, what was found and what is
    allowed. Trainers print it without a traceback.
    """


def closest(name: str, known: Iterable[str]) -> str:
    """' (closest: X)' for the best match of `name` among `known`, or '' when nothing is near."""
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (closest: {match[0]!r})" if match else ""


def short_list(items: Iterable[object], limit: int = 8) -> str:
    """At most `limit` items for an error message, with a count of the rest."""
    items = list(items)
    head = ", ".join(repr(i) for i in items[:limit])
    return head + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def human_bytes(n: float) -> str:
    """1.5 GiB, 23.4 MiB, 512 B: sizes in messages."""
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
