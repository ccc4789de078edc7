"""Build a JobConfig from defaults < TOML file < command-line overrides, with errors that name keys."""

from __future__ import annotations

import difflib
import sys
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from titan_train.config.coerce import a_type, coerce
from titan_train.config.compat import translate, translate_key
from titan_train.config.job_config import JobConfig
from titan_train.errors import ConfigError

if sys.version_info >= (3, 11):  # noqa: UP036 - the package supports 3.10 (tomli)
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SHIPPED = Path(__file__).resolve().parent.parent / "configs"


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def _closest(name: str, known: list[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def resolve_config_path(name: str) -> Path:
    """A file path, else a config shipped with titan-train (`llama3_8b` or `llama3_8b.toml`)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ConfigError(f"--config {name}: is a folder, expected a TOML file")
    stem = name[:-5] if name.endswith(".toml") else name
    if "/" not in name and (SHIPPED / f"{stem}.toml").is_file():
        return SHIPPED / f"{stem}.toml"
    known = shipped_configs()
    raise ConfigError(f"--config {name}: no such file, and no shipped config of that name "
                      f"(shipped: {', '.join(known)}).{_closest(stem, known)}")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def _hints(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _apply_dict(obj: Any, data: dict[str, Any], prefix: str, source: str) -> None:
    names = [f.name for f in fields(obj)]
    hints = _hints(obj)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            where = f"section [{prefix[:-1]}]" if prefix else "the config"
            raise ConfigError(f"{source}: unknown key '{full}' in {where}.{_closest(key, names)} "
                              f"Known: {', '.join(names)}")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{full}' is a section; write [{full}] with keys under it")
            _apply_dict(current, value, f"{full}.", source)
        else:
            setattr(obj, key, coerce(full, value, hints[key], from_cli=False))


def _lookup(config: JobConfig, dotted: str) -> tuple[Any, str, Any]:
    """(owner object, field name, field type) for `section.key` (any depth)."""
    parts = dotted.split(".")
    obj: Any = config
    for i, part in enumerate(parts):
        names = [f.name for f in fields(obj)]
        if part not in names:
            prefix = ".".join(parts[:i])
            candidates = [f"{prefix}.{n}" if prefix else n for n in names]
            all_keys = all_option_keys(config)
            hint = _closest(dotted, all_keys) or _closest(".".join(parts[: i + 1]), candidates)
            raise ConfigError(f"unknown option --{dotted}.{hint} (see titan-train --help)")
        if i == len(parts) - 1:
            return obj, part, _hints(obj)[part]
        obj = getattr(obj, part)
        if not is_dataclass(obj):
            raise ConfigError(f"unknown option --{dotted}: '{'.'.join(parts[:i + 1])}' is not a section")
    raise ConfigError(f"--{dotted}: name a key inside the section, e.g. --{dotted}.<key>")


def all_option_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            keys += all_option_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _is_bool(tp: Any) -> bool:
    return tp is bool or (typing.get_origin(tp) is not None and bool in typing.get_args(tp)
                          and len([a for a in typing.get_args(tp) if a is not type(None)]) == 1)


def split_args(argv: list[str]) -> tuple[str | None, list[tuple[str, str | None]]]:
    """(config name, [(dotted key, raw value or None for a bare flag)]) from argv."""
    config_name = None
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: options look like --section.key value "
                              "(see titan-train --help)")
        key, eq, value = arg[2:].partition("=")
        has_value = bool(eq)
        if not has_value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, has_value = argv[i + 1], True
            i += 1
        if key in ("config", "job.config_file"):
            if not has_value:
                raise ConfigError(f"--{key} needs a file or a shipped config name")
            config_name = value
        else:
            pairs.append((key, value if has_value else None))
        i += 1
    return config_name, pairs


def build_config(argv: list[str], notes: list[str] | None = None) -> JobConfig:
    """defaults < TOML (--config) < overrides; ConfigError on any bad file, key or value.

    torchtitan's spellings are translated (config.compat); `notes` receives one line per key
    translated or ignored, for the caller to print."""
    notes = [] if notes is None else notes
    config_name, pairs = split_args(argv)
    config = JobConfig()
    if config_name is not None:
        path = resolve_config_path(config_name)
        _apply_dict(config, translate(read_toml(path), notes, str(path)), "", str(path))
        config.job.config_file = str(path)
    for key, raw in pairs:
        key = translate_key(key, raw, notes, "command line")
        if key is None:
            continue
        owner, name, tp = _lookup(config, key)
        if raw is None:
            if not _is_bool(tp):
                raise ConfigError(f"--{key} needs a value ({a_type(tp)})")
            value: Any = True
        else:
            value = coerce(key, raw, tp, from_cli=True)
        setattr(owner, name, value)
    return config
