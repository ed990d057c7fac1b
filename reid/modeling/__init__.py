"""Models: backbones, train-only regularisers (LFM), the BNNeck head, losses, and loading trained weights."""

from reid.modeling.backbones import BACKBONE_REGISTRY, build_backbone
from reid.modeling.checkpoint import LoadedModel, load_model, read_stored_config, summarize_checkpoint
from reid.modeling.heads import BNNeckHead
from reid.modeling.losses import LOSS_REGISTRY, ReIDLoss
from reid.modeling.losses.center import CenterLoss
from reid.modeling.losses.triplet import TripletLoss
from reid.modeling.model import ReIDModel, build_model
from reid.modeling.regularizers import REGULARIZER_REGISTRY, attach_at_stage, build_regularizer
from reid.modeling.regularizers.lfm import LocalFeatureMasking

__all__ = ["BACKBONE_REGISTRY", "LOSS_REGISTRY", "REGULARIZER_REGISTRY", "BNNeckHead", "CenterLoss",
           "LoadedModel", "LocalFeatureMasking", "ReIDLoss", "ReIDModel", "TripletLoss", "attach_at_stage",
           "build_backbone", "build_model", "build_regularizer", "load_model", "read_stored_config",
           "summarize_checkpoint"]
