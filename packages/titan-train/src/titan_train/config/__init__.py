"""Titan's job config: dataclass sections, TOML + CLI parsing, --help and --print-config."""

from titan_train.config.check import check_config, uses_float8
from titan_train.config.job_config import JobConfig
from titan_train.config.parse import build_config, resolve_config_path, shipped_configs
from titan_train.config.render import help_text, to_toml

__all__ = ["JobConfig", "build_config", "check_config", "help_text", "resolve_config_path",
           "shipped_configs", "to_toml", "uses_float8"]
