"""Turn TOML values and command-line strings into a field's declared type, or say why not."""

from __future__ import annotations

import types
import typing
from typing import Any

from titan_train.errors import ConfigError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null", ""}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    base, optional = _unwrap_optional(tp)
    origin = typing.get_origin(base)
    if origin is list:
        inner = typing.get_args(base)[0]
        name = f"list of {type_name(inner)}"
    else:
        name = {int: "integer", float: "number", bool: "true/false", str: "string"}.get(base, str(base))
    return f"{name} or none" if optional else name


def a_type(tp: Any) -> str:
    name = type_name(tp)
    return ("an " if name[0] in "aeiou" else "a ") + name


def coerce(key: str, value: Any, tp: Any, *, from_cli: bool) -> Any:
    """Convert `value` for config key `key`; ConfigError naming the key, the value and the type."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and from_cli and isinstance(value, str) and value.lower() in _NONE):
        if optional:
            return None
        raise ConfigError(f"{key}: expected {a_type(tp)}, got none")
    bad = ConfigError(f"{key}: expected {a_type(tp)}, got {value!r}")
    origin = typing.get_origin(base)
    if origin is list:
        inner = typing.get_args(base)[0]
        if from_cli and isinstance(value, str):
            # comma-separated; a nested list (list of list) separates its groups with ';'
            sep = ";" if typing.get_origin(inner) is list else ","
            value = [] if value.strip() == "" else [v.strip() for v in value.split(sep)]
        if not isinstance(value, list):
            raise bad
        return [coerce(key, v, inner, from_cli=from_cli) for v in value]
    if base is bool:
        if isinstance(value, bool):
            return value
        if from_cli and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise bad
    if base is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if from_cli and isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    raise bad from None
                if f.is_integer():
                    return int(f)
        raise bad
    if base is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if from_cli and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. selective_ac_option = 2 written without quotes
        raise bad
    raise bad
