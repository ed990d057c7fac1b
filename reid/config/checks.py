"""Rules a config value must follow, each raising a ConfigError that names the key.

Used by the core rules of :mod:`reid.config.defaults` and by components' own checks, so that every
message about a bad value reads the same.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from yacs.config import CfgNode as CN

from reid.utils.errors import ConfigError


def get(cfg: CN, key: str) -> Any:
    """``cfg`` at the dotted ``key`` (``MODEL.LFM.PROB``)."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def require_choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Config key {key} is {value!r}; expected one of {', '.join(map(repr, allowed))}.{hint}")


def _bounds_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"in [{low:g}, {high:g}]"
    if low is not None:
        return "1 or more" if low == 1 else ("0 or more" if low == 0 else f"at least {low:g}")
    return f"at most {high:g}"


def require_range(key: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """``low <= value <= high`` (either bound may be None)."""
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"Config key {key} must be {_bounds_text(low, high)}, got {value}.")


def require_positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"Config key {key} must be positive, got {value}.")


def require_ordered_pair(key: str, value: Sequence[float], low: float | None = None,
                         high: float | None = None) -> None:
    """``(a, b)`` with ``a <= b``, ``a > low`` (exclusive: ranges of areas and ratios never start at 0) and
    ``b <= high``."""
    pair = tuple(value)
    ok = len(pair) == 2 and pair[0] <= pair[1]
    ok = ok and (low is None or pair[0] > low) and (high is None or pair[1] <= high)
    if not ok:
        low_text = f"{low:g} < " if low is not None else ""
        high_text = f" <= {high:g}" if high is not None else ""
        raise ConfigError(f"Config key {key} must be (low, high) with {low_text}low <= high{high_text}, got {pair}.")


def require_length(key: str, value: Sequence[Any], length: int, what: str) -> None:
    if len(value) != length:
        raise ConfigError(f"Config key {key} needs {what} ({length}), got {tuple(value)}.")
