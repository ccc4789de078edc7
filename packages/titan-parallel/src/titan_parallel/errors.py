"""The one error class for user mistakes, and the closest-match helper its messages use."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ParallelConfigError(ValueError):
    """A parallelization request that cannot work: the message names the argument, the bad value
    and what is allowed. Raised before anything is sharded where possible."""


def closest(name: str, known: Iterable[str]) -> str:
    """' (closest: 'x')' for the nearest known name, or '' when nothing is near."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (closest: {match[0]!r})" if match else ""


def one_of(arg: str, value: object, allowed: Iterable[str]) -> ParallelConfigError:
    """An error for `arg=value` not being one of `allowed`, with the closest match."""
    allowed = list(allowed)
    hint = closest(str(value), allowed)
    return ParallelConfigError(
        f"{arg}={value!r} is not supported; use one of {', '.join(map(repr, allowed))}{hint}"
    )
