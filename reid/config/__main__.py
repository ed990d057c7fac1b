"""``python -m reid.config [PREFIX]``: every config key with its default and meaning.

Run as a module, so the package (and with it every built-in component) is imported first. Core keys
come from reid/config/defaults.py (the comment on each line); a component's keys from the node it
registered (``Option.help``), so the listing is complete for whatever components are imported.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from reid.config import defaults
from reid.config.configurable import registered_nodes
from reid.config.loader import flatten_config, config_to_dict

_LINE = re.compile(r"^_C\.([A-Z0-9_.]+) = (?!CN\(\)).*?#\s*(.*)$")


def describe_keys() -> dict[str, tuple[object, str]]:
    """``{key: (default, meaning)}`` for every key of the current defaults."""
    meanings = {m[1]: m[2] for m in map(_LINE.match, Path(defaults.__file__).read_text().splitlines()) if m}
    for node in registered_nodes().values():
        meanings.update({f"{node.path}.{key}": option.help for key, option in node.options.items()})
    flat = flatten_config(config_to_dict(defaults.get_cfg_defaults()))
    return {key: (value, meanings.get(key, "")) for key, value in flat.items()}


def main(argv: list[str]) -> None:
    prefix = argv[0].upper() if argv else ""
    for key, (value, meaning) in describe_keys().items():
        if key.startswith(prefix):
            print(f"{key} = {value!r}  # {meaning}")


if __name__ == "__main__":
    main(sys.argv[1:])
