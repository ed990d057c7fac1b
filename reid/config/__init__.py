"""Configuration: core defaults, components' own nodes, and loading with ``_BASE_`` and overrides."""

from reid.config.configurable import ComponentRegistry, ConfigNode, Option
from reid.config.defaults import get_cfg_defaults
from reid.config.loader import (
    changes_since_stored,
    config_dir,
    config_from_dict,
    config_to_dict,
    flatten_config,
    load_config,
    resolve_config_path,
    save_config,
)

__all__ = ["ComponentRegistry", "ConfigNode", "Option", "changes_since_stored", "config_dir", "config_from_dict",
           "config_to_dict", "flatten_config", "get_cfg_defaults", "load_config", "resolve_config_path", "save_config"]
