"""Models: backbones, the LFM regulariser, the BNNeck head, losses."""

from reid.modeling.backbones import BACKBONE_REGISTRY, build_backbone
from reid.modeling.heads import BNNeckHead
from reid.modeling.losses import CenterLoss, ReIDLoss, TripletLoss
from reid.modeling.model import ReIDModel, build_model

__all__ = ["BACKBONE_REGISTRY", "build_backbone", "BNNeckHead", "ReIDLoss", "TripletLoss", "CenterLoss",
           "ReIDModel", "build_model"]
