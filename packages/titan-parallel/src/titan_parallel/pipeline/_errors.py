"""The error raised for impossible pipeline / context-parallel requests.

titan-parallel has one error class for user mistakes; until it exists under
`titan_parallel.errors` this module defines a stand-in with the same name and base.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

try:  # the package-wide class, when present
    from titan_parallel.errors import ParallelConfigError  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on what else the package holds

    class ParallelConfigError(ValueError):  # type: ignore[no-redef]
        """A parallel layout or setting that cannot work (the message names argument and value)."""


def closest(name: str, known: Iterable[str]) -> str:
    """' (closest match: X)' for an unknown name, or '' when nothing is close."""
    lowered = {k.lower(): k for k in known}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.4)
    return f" (closest match: {lowered[hits[0]]!r})" if hits else ""
