"""Configuration: one source of defaults, YAML files with ``_BASE_`` inheritance, CLI overrides."""

from .config import CfgNode, ConfigError, get_cfg, load_config

__all__ = ["CfgNode", "ConfigError", "get_cfg", "load_config"]
