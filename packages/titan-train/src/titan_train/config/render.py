"""--help text and --print-config TOML, both generated from the dataclasses' field docs."""

from __future__ import annotations

import json
import typing
from dataclasses import fields, is_dataclass
from typing import Any

from titan_train.config.coerce import type_name
from titan_train.config.fields import choices_of, doc_of
from titan_train.config.job_config import JobConfig

USAGE = """usage: titan-train [--config FILE_OR_NAME] [--print-config] [--help] [--section.key VALUE ...]

Train a language model. With no arguments: the debug Llama on the bundled corpus (GPU if present).
Precedence: defaults < TOML file (--config) < command-line options.
Options: --section.key VALUE or --section.key=VALUE; a bare --section.flag means true;
lists are comma-separated (--model.converters quantize.linear.float8).
--config also accepts a shipped config name: {shipped}.
Launch on N GPUs: torchrun --nproc_per_node=N -m titan_train --config FILE
"""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def model_table() -> str:
    """Each registered family with its flavors (what --model.name / --model.flavor accept)."""
    import titan_models

    rows = [f"  {name}: {', '.join(spec.flavors)}" + (f"\n      {spec.description}" if spec.description else "")
            for name, spec in titan_models.MODEL_SPECS.items()]
    return "Models (--model.name: --model.flavor values):\n" + "\n".join(rows) + "\n"


def help_text(shipped: list[str]) -> str:
    lines = [USAGE.format(shipped=", ".join(shipped)), model_table()]

    def walk(obj: Any, prefix: str, title_doc: str) -> None:
        hints = typing.get_type_hints(type(obj))
        plain = [f for f in fields(obj) if not is_dataclass(getattr(obj, f.name))]
        if plain:
            lines.append(f"[{prefix[:-1]}]  {title_doc}")
        for f in plain:
            value = getattr(obj, f.name)
            default = "unset" if value is None else _toml_value(value)
            choices = choices_of(f)
            extra = f" {{{', '.join(choices)}}}" if choices else ""
            lines.append(f"  --{prefix}{f.name} ({type_name(hints[f.name])}, default {default}){extra}")
            lines.append(f"      {doc_of(f)}")
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                if plain:
                    lines.append("")
                walk(value, f"{prefix}{f.name}.", doc_of(f))

    for f in fields(JobConfig):
        walk(getattr(JobConfig(), f.name), f"{f.name}.", doc_of(f))
        lines.append("")
    return "\n".join(lines)


def to_toml(config: JobConfig) -> str:
    """The resolved config as TOML that --config reads back to the same values (unset keys omitted)."""
    out: list[str] = []

    def walk(obj: Any, prefix: str) -> None:
        plain = [(f.name, getattr(obj, f.name)) for f in fields(obj)
                 if not is_dataclass(getattr(obj, f.name))]
        if plain:
            out.append(f"[{prefix}]")
            for name, value in plain:
                if value is None:
                    out.append(f"# {name} = (unset)")
                else:
                    out.append(f"{name} = {_toml_value(value)}")
            out.append("")
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                walk(value, f"{prefix}.{f.name}" if prefix else f.name)

    walk(config, "")
    return "\n".join(out)
