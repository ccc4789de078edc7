"""`opt(default, doc)`: a dataclass field that carries its one-line doc (shown by --help)."""

from __future__ import annotations

from dataclasses import MISSING, Field, field, fields, is_dataclass
from typing import Any


def opt(default: Any, doc: str, *, choices: tuple[str, ...] | None = None) -> Any:
    meta = {"doc": doc, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def sub(cls: type, doc: str) -> Any:
    """A nested section (e.g. quantize.linear.float8)."""
    return field(default_factory=cls, metadata={"doc": doc, "choices": None})


def doc_of(f: Field) -> str:
    return f.metadata.get("doc", "")


def choices_of(f: Field) -> tuple[str, ...] | None:
    return f.metadata.get("choices")


def default_of(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def section_fields(obj_or_cls: Any) -> list[Field]:
    assert is_dataclass(obj_or_cls)
    return list(fields(obj_or_cls))
