"""DropBlock (Ghiasi et al., "DropBlock: A regularization method for convolutional networks", NeurIPS 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode

from reid.config import ConfigNode, Option
from reid.modeling.regularizers import REGULARIZER_REGISTRY
from reid.utils.errors import ConfigError, ReIDError

DROPBLOCK_CONFIG = ConfigNode(
    "MODEL.DROPBLOCK",
    BLOCK_SIZE=Option(7, "side of a dropped square block, in feature-map cells", range=(1, None)),
    KEEP_PROB=Option(0.9, "expected fraction of activations kept, in (0, 1]"),
)


def _check(cfg: CfgNode) -> None:
    if not 0.0 < cfg.MODEL.DROPBLOCK.KEEP_PROB <= 1.0:
        raise ConfigError(
            f"Config key MODEL.DROPBLOCK.KEEP_PROB must be in (0, 1], got {cfg.MODEL.DROPBLOCK.KEEP_PROB}.")


@REGULARIZER_REGISTRY.register("dropblock", config=DROPBLOCK_CONFIG, check=_check)
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

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {"block_size": cfg.MODEL.DROPBLOCK.BLOCK_SIZE, "keep_prob": cfg.MODEL.DROPBLOCK.KEEP_PROB}

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
