"""The ReID model: pixel normalisation, backbone (with its train-only regulariser) and BNNeck head.

Normalisation lives inside the model (as in fast-reid) so an exported model takes raw RGB pixels in
[0, 1] and deployment code only resizes. The regulariser (LFM by default in the lfm configs) is a
submodule hooked after one backbone stage; it is the identity in eval mode, so inference, export
and attacks see the plain network.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn
from yacs.config import CfgNode

from reid.modeling.backbones import BACKBONE_REGISTRY, Backbone
from reid.modeling.heads import BNNeckHead
from reid.modeling.pretrained import load_pretrained
from reid.modeling.regularizers import attach_at_stage, build_regularizer_from_config

logger = logging.getLogger("reid.modeling")


class ReIDModel(nn.Module):
    """``forward(images)``: images are float RGB in [0, 1], shape (N, 3, H, W).

    Training mode returns the head's dict (``logits``, ``feat``, ``bn_feat``); eval mode returns the
    inference feature (N, D).
    """

    def __init__(self, backbone: Backbone, head: BNNeckHead, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, -1, 1, 1), persistent=False)

    @property
    def feat_dim(self) -> int:
        return self.backbone.out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor | None]:
        if not self.training and not self._input_range_checked:
            self._check_input_range(images)
        x = (images - self.pixel_mean) / self.pixel_std
        return self.head(self.backbone(x))

    _input_range_checked = False

    def _check_input_range(self, images: torch.Tensor) -> None:
        """Warn once when inference images are not in [0, 1]: most likely they were mean/std-normalised already
        (as torchreid's and fast-reid's loaders do), and this model would normalise them a second time."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return  # an export or a compiled graph: no data-dependent Python check may enter it
        self._input_range_checked = True
        low, high = (float(v) for v in torch.aminmax(images.detach().float()))
        if low < -0.01 or high > 1.01:
            logger.warning(
                f"{type(self).__name__} got images with values from {low:.3g} to {high:.3g}; it expects RGB in [0, 1] "
                "and normalises them itself with MODEL.PIXEL_MEAN/PIXEL_STD. Images already normalised (or in "
                "0-255) are normalised a second time and give wrong features: pass them unnormalised, divided by "
                "255. (Checked on the first batch in eval mode only.)")


def build_model(cfg: CfgNode, num_classes: int, load_imagenet: bool | None = None) -> ReIDModel:
    """Build the configured model; ``num_classes=0`` builds it without classifier (feature extraction).

    ImageNet weights are loaded when ``MODEL.PRETRAINED`` (override with ``load_imagenet``), e.g. not
    when a trained checkpoint is about to be loaded anyway.
    """
    backbone: Backbone = BACKBONE_REGISTRY.build(cfg)
    if cfg.MODEL.PRETRAINED if load_imagenet is None else load_imagenet:
        load_pretrained(backbone, cfg.MODEL.PRETRAINED_PATH)
    regularizer = build_regularizer_from_config(cfg)
    if regularizer is not None:
        attach_at_stage(backbone.body, backbone.stage_path(cfg.MODEL.REGULARIZER.STAGE), regularizer)
    head = BNNeckHead(backbone.out_channels, num_classes, cfg.MODEL.POOLING, cfg.MODEL.NECK, cfg.MODEL.NECK_FEAT)
    return ReIDModel(backbone, head, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
