"""A tiny name -> object registry, so a dataset, backbone, regulariser or loss is added in one file.

Names are case-insensitive. A *family* entry (``register("timm", family=True)``) answers every name of the
form ``timm:<argument>``; :meth:`Registry.lookup` returns the object with the argument, e.g. the timm
model name or the path of a CSV dataset list.
"""

from __future__ import annotations

import difflib
from typing import Callable, Dict, Iterator, NamedTuple, TypeVar

from reid.utils.errors import ReIDError

T = TypeVar("T")
FAMILY_SEPARATOR = ":"


class Entry(NamedTuple):
    """What :meth:`Registry.lookup` finds: the registered object, its key, and the argument after ``family:``."""

    obj: object
    key: str
    argument: str | None


class Registry:
    """Maps names to classes or factories; ``@REGISTRY.register()`` adds the decorated object."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, object] = {}
        self._families: Dict[str, object] = {}

    def register(self, name: str | None = None, *, family: bool = False) -> Callable[[T], T]:
        """Register under ``name`` (default: the object's ``__name__``); ``family`` answers ``name:<argument>``."""
        def deco(obj: T) -> T:
            key = (name or obj.__name__).lower()  # type: ignore[attr-defined]
            if key in self._items or key in self._families:
                raise KeyError(f"{self.kind} {key!r} is already registered")
            (self._families if family else self._items)[key] = obj
            self._on_register(key, obj)
            return obj

        return deco

    def _on_register(self, name: str, obj: object) -> None:
        """Called once per registration (subclasses record what the object brings along)."""

    def lookup(self, name: str) -> Entry:
        """The object registered as ``name`` (and the argument of a ``family:argument`` name)."""
        key = name.lower()
        if key in self._items:
            return Entry(self._items[key], key, None)
        family, separator, argument = name.partition(FAMILY_SEPARATOR)
        if separator and family.lower() in self._families:
            if not argument:
                raise ReIDError(f"The {self.kind} name {name!r} needs something after '{family}:' "
                                f"(e.g. {family}:<name>).")
            return Entry(self._families[family.lower()], family.lower(), argument)
        close = difflib.get_close_matches(key, list(self._items), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ReIDError(f"Unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: {self.describe()}.")

    def get(self, name: str) -> object:
        """The object registered as ``name`` (a family member's object too; use :meth:`lookup` for its argument)."""
        return self.lookup(name).obj

    def describe(self) -> str:
        """The registered names, families as ``family:<...>``."""
        return ", ".join(sorted(self._items) + [f"{f}:<...>" for f in sorted(self._families)])

    def __contains__(self, name: str) -> bool:
        family, separator, argument = name.partition(FAMILY_SEPARATOR)
        return name.lower() in self._items or bool(separator and argument and family.lower() in self._families)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        """Plain names (families not included), sorted."""
        return sorted(self._items)

    def families(self) -> list[str]:
        return sorted(self._families)
