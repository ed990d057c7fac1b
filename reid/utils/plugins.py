"""Importing user code that registers components (``--plugin my_regularizer.py``), before configs are read.

A plugin is a Python file or an importable module name. Importing it runs its registrations
(``@REGULARIZER_REGISTRY.register(...)``, ``@LOSS_REGISTRY.register(...)``...), which add its config node,
so its keys and names are valid from then on. Plugins are only ever named on the command line or imported
by the user's own code, never taken from a config file or checkpoint: loading a file must not run code.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from reid.utils.errors import ReIDError, summarize_exception


def load_plugin(spec: str) -> ModuleType:
    """Import ``spec``: a ``.py`` file (by path) or a module name on the Python path."""
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise ReIDError(f"Plugin file {spec} does not exist (--plugin takes a .py file or a module name).")
        name = f"reid_plugin_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ReIDError(f"Plugin {spec} failed while it was imported: {summarize_exception(exc)}") from exc
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as exc:
        raise ReIDError(f"Plugin module {spec!r} cannot be imported ({summarize_exception(exc)}); give a .py file "
                        "or a module name on the Python path.") from exc


def load_plugins(specs: Iterable[str]) -> list[ModuleType]:
    return [load_plugin(spec) for spec in specs]
