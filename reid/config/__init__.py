"""Configuration: defaults (the single source of truth) and loading with ``_BASE_`` and overrides."""

from reid.config.defaults import get_cfg_defaults
from reid.config.loader import (
    config_from_dict,
    config_to_dict,
    flatten_config,
    load_config,
    resolve_config_path,
    save_config,
)

__all__ = ["get_cfg_defaults", "load_config", "resolve_config_path", "save_config", "config_from_dict",
           "config_to_dict", "flatten_config"]
