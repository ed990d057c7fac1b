"""Components that own their configuration (detectron2's ``@configurable``, fast-reid's registries).

A component (a regulariser, a loss, a backbone, an attack...) is registered in a
:class:`ComponentRegistry` together with the config node it reads (:class:`ConfigNode`: its keys, their
defaults and one-line meanings, and simple rules) and, optionally, a check of the whole config. The
registry then:

- adds the node to the defaults, so ``MODEL.DROPBLOCK.KEEP_PROB`` exists as soon as the component is
  imported, and a file or ``KEY VALUE`` override can set it;
- validates every config when it is loaded (:func:`reid.config.load_config` calls
  :func:`check_registered_components`): the selected name (``MODEL.REGULARIZER.NAME lfm``) must be
  registered, the node's values must follow its rules, and the component's own ``check`` runs;
- builds the selected component from the config (:meth:`ComponentRegistry.build`): the entry's
  ``from_config(cfg, **context)`` maps the config to keyword arguments (detectron2's convention), then
  the class or factory is called with them, so the component itself stays usable without a config.

So adding a regulariser or a loss is one file: the module, registered with its node. The registries
live with the components (``reid.modeling.regularizers.REGULARIZER_REGISTRY``...); this module only
knows them through registration, so the config layer never imports the layers above it. ``import reid``
imports the built-in components; a plugin is imported with ``--plugin`` (see :mod:`reid.utils.plugins`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from yacs.config import CfgNode as CN

from reid.config import checks
from reid.config.defaults import add_node
from reid.utils.errors import ConfigError
from reid.utils.registry import Registry

T = TypeVar("T")
ConfigCheck = Callable[[CN], None]


@dataclass(frozen=True)
class Option:
    """One config key of a component: its default, a one-line meaning, and optional rules checked on load.

    ``choices``: allowed values; ``range``: ``(low, high)`` bounds, inclusive (``None`` for no bound);
    ``ordered_pair``: the value is a ``(low, high)`` pair with ``low <= high`` inside ``range``.
    """

    default: Any
    help: str
    choices: Sequence[Any] | None = None
    range: tuple[float | None, float | None] | None = None
    ordered_pair: bool = False


@dataclass(frozen=True)
class ConfigNode:
    """The config node a component reads, e.g. ``ConfigNode("MODEL.DROPBLOCK", BLOCK_SIZE=Option(7, ...))``."""

    path: str
    options: Mapping[str, Option] = field(default_factory=dict)

    def __init__(self, path: str, **options: Option) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "options", dict(options))

    def defaults(self) -> dict[str, Any]:
        return {key: option.default for key, option in self.options.items()}

    def check(self, cfg: CN) -> None:
        """The rules of every option, with errors naming the full key."""
        for key, option in self.options.items():
            full = f"{self.path}.{key}"
            value = checks.get(cfg, full)
            if option.choices is not None:
                checks.require_choice(full, value, option.choices)
            if option.ordered_pair:
                checks.require_ordered_pair(full, value, *(option.range or (None, None)))
            elif option.range is not None:
                checks.require_range(full, value, *option.range)


_REGISTRIES: list[ComponentRegistry] = []


class ComponentRegistry(Registry):
    """A :class:`~reid.utils.registry.Registry` whose entries own config nodes and are checked on load.

    Args:
        kind: what the entries are ("regularizer"), for messages.
        selector: the config key naming the selected entry (``MODEL.REGULARIZER.NAME``) or entries (a list
            key such as ``MODEL.LOSSES``); ``None`` when names are not checked on load (datasets: a stored
            config may name data this machine does not have).
        empty_allowed: a selector value that means "none selected" (``""`` for ``TEST.ATTACK.NAME``).
        config: a node read by the registry as a whole (e.g. ``TEST.ATTACK``), and ``check`` its check.
    """

    def __init__(self, kind: str, selector: str | None = None, *, empty_allowed: Sequence[str] = (),
                 config: ConfigNode | None = None, check: ConfigCheck | None = None) -> None:
        super().__init__(kind)
        self.selector = selector
        self.empty_allowed = tuple(empty_allowed)
        self.config = config
        self.check = check
        self._nodes: dict[str, ConfigNode] = {}  # entry name -> its node
        self._checks: dict[str, ConfigCheck] = {}
        self._resolvers: list[ConfigCheck] = []
        self._from_config: dict[str, Callable[..., dict]] = {}
        if config is not None:
            add_node(config.path, config.defaults())
        _REGISTRIES.append(self)

    def register(self, name: str | None = None, *, family: bool = False, config: ConfigNode | None = None,
                 from_config: Callable[..., dict] | None = None, check: ConfigCheck | None = None,
                 resolve: ConfigCheck | None = None) -> Callable[[T], T]:
        """Register an entry with the node it reads (``config``), how the config becomes its keyword arguments
        (``from_config``; default: the entry's own ``from_config`` classmethod, or none), a check of the
        config when it is selected (``check``) and a ``resolve`` step run on every config before the
        selection is checked (for shorthands such as ``MODEL.LFM.ENABLED``; the config is still mutable)."""
        register = super().register(name, family=family)

        def deco(obj: T) -> T:
            key = (name or obj.__name__).lower()  # type: ignore[attr-defined]
            mapping = from_config or getattr(obj, "from_config", None)
            if mapping is not None:
                self._from_config[key] = mapping
            if config is not None:
                add_node(config.path, config.defaults())
                self._nodes[key] = config
            if check is not None:
                self._checks[key] = check
            if resolve is not None:
                self._resolvers.append(resolve)
            return register(obj)

        return deco

    def node_of(self, name: str) -> ConfigNode | None:
        """The config node the entry ``name`` reads (None when it reads only shared keys)."""
        return self._nodes.get(self.lookup(name).key)

    def selected(self, cfg: CN) -> list[str]:
        """The names the config selects (empty when the selector holds an ``empty_allowed`` value)."""
        if self.selector is None:
            return []
        value = checks.get(cfg, self.selector)
        names = [value] if isinstance(value, str) else list(value)
        return [n for n in names if n not in self.empty_allowed]

    def check_config(self, cfg: CN) -> None:
        """Resolve shorthands, then check the selected names, the nodes and the checks they come with."""
        for resolve in self._resolvers:
            resolve(cfg)
        # Every node's rules, selected or not: a bad value is refused wherever it is (a config stored with
        # a checkpoint is checked the same way, so an unselected node cannot hide a typo for later).
        for node in [self.config, *self._nodes.values()]:
            if node is not None:
                node.check(cfg)
        if self.check is not None:
            self.check(cfg)
        for name in self.selected(cfg):
            if name not in self:
                allowed = self.names() + [f"{f}:<...>" for f in self.families()] + list(self.empty_allowed)
                close = difflib.get_close_matches(name, self.names(), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"Config key {self.selector} holds {name!r}, which is not a registered {self.kind}; expected "
                    f"one of {', '.join(map(repr, allowed))}.{hint} (A {self.kind} of your own is registered "
                    "in its module, which --plugin imports.)")
            key = self.lookup(name).key
            if key in self._checks:
                self._checks[key](cfg)

    def build(self, cfg: CN, name: str | None = None, **context: Any) -> Any:
        """Build the entry ``name`` (default: the selected one): ``entry(**from_config(cfg, **context))``; a
        family member (``timm:resnet50``) gets its argument as the first positional argument."""
        if name is None:
            names = self.selected(cfg)
            if len(names) != 1:
                raise ConfigError(f"{self.selector} selects {len(names)} {self.kind}s; build them by name.")
            name = names[0]
        entry = self.lookup(name)
        mapping = self._from_config.get(entry.key)
        kwargs = mapping(cfg, **context) if mapping is not None else {}
        args = (entry.argument,) if entry.argument is not None else ()
        return entry.obj(*args, **kwargs)


def check_registered_components(cfg: CN) -> None:
    """Every component registry's check (called by :func:`reid.config.loader.finalize_config`)."""
    for registry in _REGISTRIES:
        registry.check_config(cfg)


def registered_nodes() -> dict[str, ConfigNode]:
    """Every component's config node by path (for documentation and error messages)."""
    nodes: dict[str, ConfigNode] = {}
    for registry in _REGISTRIES:
        if registry.config is not None:
            nodes[registry.config.path] = registry.config
        for node in registry._nodes.values():
            nodes[node.path] = node
    return nodes
