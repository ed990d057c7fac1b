"""A tiny name -> object registry, so a dataset, backbone or regularizer is added in one file."""

from __future__ import annotations

import difflib
from typing import Callable, Dict, Iterator, TypeVar

from reid.utils.errors import ReIDError

T = TypeVar("T")


class Registry:
    """Maps names to classes or factories; ``@REGISTRY.register()`` adds the decorated object."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, object] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = (name or obj.__name__).lower()  # type: ignore[attr-defined]
            if key in self._items:
                raise KeyError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> object:
        key = name.lower()
        if key not in self._items:
            close = difflib.get_close_matches(key, list(self._items), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ReIDError(
                f"Unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: "
                f"{', '.join(sorted(self._items))}."
            )
        return self._items[key]

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
