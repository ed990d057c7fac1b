"""Train-only feature-map regularisers and how to insert one at a stage of any CNN.

Registered names (``build_regularizer(name, **kwargs)``):

- ``none``: ``nn.Identity``.
- ``lfm``: :class:`~reid.modeling.lfm.LocalFeatureMasking` (the paper's method).
- ``dropout``: ``nn.Dropout(p)``, element-wise.
- ``spatial_dropout``: ``nn.Dropout2d(p)``, whole channels.
- ``dropblock``: :class:`DropBlock2d` (Ghiasi et al., 2018).

All are the identity in eval mode, vectorised, and drawn from the global RNG of the input's device
(LFM optionally from its own generator). Input-level Random Erasing is a data transform, not a module.

:func:`attach_at_stage` runs a regulariser on the output of a named sub-module through a forward hook,
so the backbone's code and state-dict keys stay untouched (pretrained weights load as they are).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from reid.modeling.backbones import RESNET_STAGES
from reid.modeling.lfm import LocalFeatureMasking
from reid.utils.errors import ConfigError, ReIDError
from reid.utils.registry import Registry

REGULARIZER_REGISTRY = Registry("regularizer")

__all__ = ["RESNET_STAGES", "REGULARIZER_REGISTRY", "DropBlock2d", "attach_at_stage", "build_regularizer"]


@REGULARIZER_REGISTRY.register("none")
def _no_regularizer() -> nn.Module:
    return nn.Identity()


REGULARIZER_REGISTRY.register("lfm")(LocalFeatureMasking)
REGULARIZER_REGISTRY.register("dropout")(nn.Dropout)
REGULARIZER_REGISTRY.register("spatial_dropout")(nn.Dropout2d)


@REGULARIZER_REGISTRY.register("dropblock")
class DropBlock2d(nn.Module):
    """DropBlock (Ghiasi et al., "DropBlock: A regularization method for convolutional networks", 2018).

    Each channel of each sample gets its own mask (the paper's better variant). Block seeds are drawn
    only where a whole ``block_size`` x ``block_size`` block fits, with the paper's rate
    ``gamma = (1 - keep_prob) / block_size**2 * H * W / ((H - block_size + 1) * (W - block_size + 1))``;
    the kept activations are rescaled by ``mask.numel() / mask.sum()``. The block is clipped to the map
    when the map is smaller than ``block_size``. (timm's ``DropBlock2d`` differs: it draws seeds over the
    whole map, so border blocks are clipped, and shares one mask across channels by default.)
    """

    def __init__(self, block_size: int = 7, keep_prob: float = 0.9) -> None:
        super().__init__()
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ConfigError(f"DropBlock block_size must be an int >= 1, got {block_size!r}.")
        if not 0.0 < keep_prob <= 1.0:
            raise ConfigError(f"DropBlock keep_prob must be in (0, 1], got {keep_prob}.")
        self.block_size = block_size
        self.keep_prob = float(keep_prob)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.keep_prob == 1.0:
            return x
        if x.dim() != 4:
            raise ReIDError(f"DropBlock2d expects (N, C, H, W) feature maps but got shape {tuple(x.shape)}.")
        n, c, h, w = x.shape
        bh, bw = min(self.block_size, h), min(self.block_size, w)
        gamma = (1.0 - self.keep_prob) / (bh * bw) * (h * w) / ((h - bh + 1) * (w - bw + 1))
        with torch.no_grad():
            seeds = torch.rand(n, c, h - bh + 1, w - bw + 1, device=x.device) < gamma
            # A seed at (i, j) drops rows i..i+bh-1 and columns j..j+bw-1: a "full" max-pool over the
            # zero-padded seed map gives exactly the (H, W) map of dropped positions.
            padded = F.pad(seeds.to(x.dtype), (bw - 1, bw - 1, bh - 1, bh - 1))
            keep = 1 - F.max_pool2d(padded, (bh, bw), stride=1)
            scale = keep.numel() / keep.sum(dtype=torch.float32).clamp_(min=1)
        return x * keep * scale.to(x.dtype)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, keep_prob={self.keep_prob}"


def build_regularizer(name: str, **kwargs: object) -> nn.Module:
    """The regulariser registered as ``name``, built with ``kwargs`` (ConfigError on unknown ones)."""
    factory = REGULARIZER_REGISTRY.get(name)
    signature = inspect.signature(factory)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        accepted = ", ".join(signature.parameters) or "no arguments"
        raise ConfigError(f"Regularizer {name!r} does not accept {err}; it takes: {accepted}.") from None
    return factory(**kwargs)


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
