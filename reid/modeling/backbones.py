"""CNN backbones that return a feature map, found by name through a registry.

ResNets come from torchvision (``resnet50``) or timm (``timm:resnet50``); any other timm CNN works as
``timm:<name>``. The network is kept whole under ``self.body`` so standard ImageNet state dicts load
with a prefix added, and the config's stage names (``conv1``, ``stem``, ...) address its modules.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from yacs.config import CfgNode

from reid.config import ComponentRegistry
from reid.utils.errors import ConfigError, ReIDError

logger = logging.getLogger("reid.modeling")

#: Backbones by name (``MODEL.BACKBONE``): torchvision ResNets, and every timm CNN as ``timm:<name>``.
#: An entry is a factory ``(last_stride=...) -> Backbone`` (a family member gets its name first).
BACKBONE_REGISTRY = ComponentRegistry("backbone", selector="MODEL.BACKBONE")

# Placement names of MODEL.REGULARIZER.STAGE -> module paths inside a torchvision or timm ResNet:
# "conv1" is the paper's place (the first convolution's output, before bn1), "stem" the max-pool's
# output, "layerN" the output of stage N.
RESNET_STAGES = {"conv1": "conv1", "stem": "maxpool", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3"}


class Backbone(nn.Module):
    """A feature extractor: ``forward(x) -> (N, out_channels, h, w)``; ``body`` is the wrapped network."""

    def __init__(self, body: nn.Module, out_channels: int, arch: str, stages: dict[str, str] | None = None) -> None:
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.arch = arch
        self.stages = stages or {}

    def stage_path(self, stage: str) -> str:
        """The module path inside ``body`` for a config placement name or an explicit module path."""
        if stage in self.stages:
            return self.stages[stage]
        if stage in RESNET_STAGES and stage not in dict(self.body.named_modules()):
            known = ", ".join(f"{name} ({path})" for name, path in self.stages.items()) or "none"
            raise ConfigError(
                f"MODEL.REGULARIZER.STAGE {stage!r} has no counterpart in backbone {self.arch}. Its placement "
                f"names are: {known}; any dotted module path of the network works too."
            )
        return stage


class TorchvisionResNet(Backbone):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))


class TimmBackbone(Backbone):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(x)


def set_last_stride(resnet: nn.Module, stride: int) -> None:
    """Change the stride of a ResNet's last stage (BoT: 1) without dilation, for torchvision and timm."""
    block = resnet.layer4[0]
    conv = block.conv2 if hasattr(block, "conv3") else block.conv1  # bottleneck vs basic block
    conv.stride = (stride, stride)
    if block.downsample is not None:
        for module in block.downsample.modules():
            if isinstance(module, nn.Conv2d):
                module.stride = (stride, stride)
            elif isinstance(module, nn.AvgPool2d):  # timm "d" variants downsample with a pool
                module.stride = stride
                module.kernel_size = stride if stride > 1 else 1


def _torchvision_resnet(arch: str) -> Callable[..., Backbone]:
    def build(last_stride: int = 1) -> Backbone:
        import torchvision

        body = getattr(torchvision.models, arch)(weights=None)
        out_channels = body.fc.in_features
        del body.fc, body.avgpool  # the head pools and classifies; keeping them would waste parameters
        set_last_stride(body, last_stride)
        return TorchvisionResNet(body, out_channels, arch, RESNET_STAGES)

    return build


def _last_stride(cfg: CfgNode) -> dict:
    return {"last_stride": cfg.MODEL.LAST_STRIDE}


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
    BACKBONE_REGISTRY.register(_arch, from_config=_last_stride)(_torchvision_resnet(_arch))


@BACKBONE_REGISTRY.register("timm", family=True, from_config=_last_stride)
def build_timm_backbone(name: str, last_stride: int = 1) -> Backbone:
    """Any timm CNN without classifier or pooling; ResNet-like ones get BoT's last stride."""
    import timm

    try:
        body = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    except RuntimeError as exc:  # timm raises RuntimeError for unknown model names
        raise ReIDError(f"timm has no model {name!r} (MODEL.BACKBONE 'timm:{name}'): {exc}") from exc
    is_resnet = hasattr(body, "layer4") and hasattr(body, "conv1")
    if is_resnet:
        set_last_stride(body, last_stride)
        return TimmBackbone(body, body.num_features, name, RESNET_STAGES)
    if last_stride != 2:
        logger.warning(f"MODEL.LAST_STRIDE {last_stride} applies to ResNets only; timm:{name} keeps its own strides.")
    return TimmBackbone(body, body.num_features, name, timm_stages(body))


def timm_stages(body: nn.Module) -> dict[str, str]:
    """Placement names for any timm CNN, from its ``feature_info``: ``conv1`` is the first convolution,
    ``stem`` the last module at stride 2, ``layerN`` the last module at stride ``2 ** (N + 1)`` (as in a
    ResNet: layer1 at stride 4 ... layer4 at stride 32)."""
    stages = {}
    first_conv = next((path for path, module in body.named_modules() if isinstance(module, nn.Conv2d)), None)
    if first_conv is not None:
        stages["conv1"] = first_conv
    for info in getattr(body, "feature_info", None) or []:
        reduction, path = info["reduction"], info["module"]
        if reduction == 2:
            stages["stem"] = path
        elif reduction in (4, 8, 16, 32):
            stages[f"layer{reduction.bit_length() - 2}"] = path
    return stages


def build_backbone(name: str, last_stride: int = 1) -> Backbone:
    """``resnet50`` (torchvision) or ``timm:<model>``."""
    entry = BACKBONE_REGISTRY.lookup(name)
    args = (entry.argument,) if entry.argument is not None else ()
    return entry.obj(*args, last_stride=last_stride)
