"""The deployed feature in one module: what ONNX, TorchScript, release files and FeatureExtractor compute.

Input: a batch of RGB images, float32 (float16 for a ``--half`` export), shape (N, 3, H, W) with
(H, W) = INPUT.SIZE_TEST, values in [0, 1]. The mean/std normalisation is inside the model, so callers
only decode, convert BGR to RGB if needed, resize and divide by 255.
Output: (N, D) features, the evaluator's feature: post-BNNeck (MODEL.NECK_FEAT), averaged with the
mirrored image when TEST.FLIP, L2-normalised when TEST.FEAT_NORM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from reid.modeling import ReIDModel, load_model
from reid.modeling.checkpoint import ConfigSource


class ExportableReID(nn.Module):
    """A :class:`ReIDModel` in eval mode plus the test-time steps the evaluator applies to its output."""

    def __init__(self, model: ReIDModel, feat_norm: bool = True, flip: bool = False) -> None:
        super().__init__()
        self.model = model.eval()  # eval: the regulariser (LFM) is the identity and leaves no trace in a trace
        self.feat_norm = feat_norm
        self.flip = flip

    @classmethod
    def from_config(cls, model: ReIDModel, cfg: CfgNode) -> ExportableReID:
        return cls(model, feat_norm=cfg.TEST.FEAT_NORM, flip=cfg.TEST.FLIP)

    @property
    def feat_dim(self) -> int:
        return self.model.feat_dim

    def train(self, mode: bool = True) -> ExportableReID:
        # A deployed model has no training mode: keep LFM, dropout and BatchNorm statistics out of it.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model(images)
        if self.flip:  # as the evaluator does with TEST.FLIP, before normalising
            features = (features + self.model(images.flip(3))) / 2
        if self.feat_norm:
            # In float32: a float16 sum of 2048 squares can overflow, and the norm's eps underflows.
            features = F.normalize(features.float(), dim=1).to(features.dtype)
        return features


def load_exportable(weights: str | Path, config: ConfigSource = None, opts: Sequence[str] = (),
                    device: str | torch.device = "cpu") -> tuple[ExportableReID, CfgNode]:
    """The deployed feature module of a training checkpoint or release file, and its config.

    ``config``: None (the config stored with the weights), a config file or name, or a CfgNode; ``opts``:
    ``KEY VALUE`` overrides of either. Raises a CheckpointError when the file is not a model checkpoint (of
    a format or release version this code reads) or does not match the config.
    """
    model, cfg = load_model(weights, config, opts, device)
    return ExportableReID.from_config(model, cfg), cfg
