"""Train-only regularisers, registered by name, and how to insert one at a stage of any CNN.

Each regulariser is one module of this package, registered in :data:`REGULARIZER_REGISTRY` with the config
node it reads; every module here is imported below, so adding one is one file (see ``dropblock.py``):

- ``none``: ``nn.Identity``.
- ``lfm``: :class:`~reid.modeling.regularizers.lfm.LocalFeatureMasking` (the paper's method), ``MODEL.LFM``.
- ``dropout`` / ``spatial_dropout``: ``nn.Dropout(p)`` (elements) / ``nn.Dropout2d(p)`` (channels),
  ``MODEL.DROPOUT``.
- ``dropblock``: :class:`~reid.modeling.regularizers.dropblock.DropBlock2d` (Ghiasi et al.), ``MODEL.DROPBLOCK``.
- ``random_erasing``: input-level (the data transforms erase with INPUT.RE_PROB); no module in the network.

All are the identity in eval mode, vectorised, and drawn from the global RNG of the input's device (LFM
optionally from its own generator). :func:`attach_at_stage` runs a regulariser on the output of a named
sub-module through a forward hook, so the backbone's code and state-dict keys stay untouched (pretrained
weights load as they are).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from yacs.config import CfgNode

from reid.config import ComponentRegistry
from reid.modeling.backbones import RESNET_STAGES
from reid.utils.errors import ConfigError, ReIDError

#: Regularisers by name; the selected one is ``MODEL.REGULARIZER.NAME``. An entry's factory returns the
#: module to insert, or None for an input-level regulariser that lives in the data transforms.
REGULARIZER_REGISTRY = ComponentRegistry("regularizer", selector="MODEL.REGULARIZER.NAME")

__all__ = ["RESNET_STAGES", "REGULARIZER_REGISTRY", "attach_at_stage", "build_regularizer",
           "build_regularizer_from_config"]


def build_regularizer(name: str, **kwargs: object) -> nn.Module | None:
    """The regulariser registered as ``name``, built with ``kwargs`` (ConfigError on unknown ones)."""
    factory = REGULARIZER_REGISTRY.get(name)
    signature = inspect.signature(factory)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        accepted = ", ".join(signature.parameters) or "no arguments"
        raise ConfigError(f"Regularizer {name!r} does not accept {err}; it takes: {accepted}.") from None
    return factory(**kwargs)


def build_regularizer_from_config(cfg: CfgNode) -> nn.Module | None:
    """The module of MODEL.REGULARIZER.NAME built from its node; None when nothing goes into the network."""
    module = REGULARIZER_REGISTRY.build(cfg)
    return None if module is None or isinstance(module, nn.Identity) else module


class _ApplyToOutput:
    """Forward hook replacing a stage's output with ``module(output)``.

    An object rather than a closure so that ``copy.deepcopy``/pickling the model rebinds the hook to
    the copied regulariser (a closure would keep calling the original one).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, stage: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        return self.module(output)


def attach_at_stage(
    model: nn.Module, stage: str, module: nn.Module, name: str = "regularizer"
) -> RemovableHandle:
    """Run ``module`` on the output of ``model``'s sub-module ``stage`` (in train and eval mode alike).

    ``stage`` is a key of :data:`RESNET_STAGES` or a dotted module path (e.g. ``"conv_stem"``,
    ``"layer1.0"``). ``module`` becomes the submodule ``name`` of ``model`` so ``.to()``, ``.train()``
    and ``.eval()`` reach it; it must hold no parameters or buffers, which keeps ``model``'s state-dict
    keys unchanged. Removing the returned handle detaches the hook (the idle submodule stays).
    """
    if isinstance(model, nn.Sequential):
        raise ReIDError(
            "attach_at_stage cannot register a regularizer on an nn.Sequential: it would also run as an "
            "extra last layer. Attach it to a module that owns the Sequential instead."
        )
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        raise ReIDError(
            f"attach_at_stage expects a stateless regularizer, but {type(module).__name__} has parameters "
            "or buffers, which would change the model's state-dict keys."
        )
    # A module path of this model wins over the ResNet placement name of the same spelling.
    path = stage if stage in dict(model.named_modules()) else RESNET_STAGES.get(stage, stage)
    try:
        target = model.get_submodule(path)
    except AttributeError:
        children = ", ".join(child for child, _ in model.named_children()) or "none"
        raise ReIDError(
            f"Cannot place the regularizer at stage {stage!r}: {type(model).__name__} has no sub-module "
            f"{path!r}. Use one of {', '.join(RESNET_STAGES)} (ResNets) or a dotted module path; its "
            f"top-level children are: {children}."
        ) from None
    if hasattr(model, name):
        raise ReIDError(f"{type(model).__name__} already has an attribute {name!r}; choose another name.")
    model.add_module(name, module)
    return target.register_forward_hook(_ApplyToOutput(module))


# Registration happens at import: every module of this package is one regulariser.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module
