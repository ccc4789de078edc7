"""The one error class of titan-models, and the message for an unknown name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ModelConfigError(ValueError):
    """A model name, flavor, argument or parallel degree that cannot be used.

    The message names the argument, the bad value and what is allowed; the trainer prints it
    without a traceback.
    """


def unknown_name(what: str, value: object, known: Iterable[str]) -> ModelConfigError:
    """ModelConfigError for `value` not among `known`, with the closest match if there is one."""
    known = sorted(known)
    folded = [k for k in known if k.lower() == str(value).lower()]  # "8b" -> "8B"
    close = folded or difflib.get_close_matches(str(value), known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ModelConfigError(f"unknown {what} {value!r}: known {what}s are {', '.join(known)}{hint}")
