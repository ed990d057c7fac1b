"""Batch-hard triplet loss (Hermans et al., 2017), mined over the global batch under DDP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from reid.config import ConfigNode, Option
from reid.modeling.losses import LOSS_REGISTRY
from reid.utils import comm
from reid.utils.errors import ConfigError

TRIPLET_CONFIG = ConfigNode(
    "MODEL.TRIPLET",
    MARGIN=Option(0.3, "margin of the batch-hard triplet loss", range=(0.0, None)),
    SOFT_MARGIN=Option(False, "use log(1 + exp(d_ap - d_an)) instead of a hard margin"),
    WEIGHT=Option(1.0, "weight of the triplet loss in the total", range=(0.0, None)),
)


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``x``, with a gradient-safe square root.

    The expansion ``|a|^2 + |b|^2 - 2 a.b`` leaves a rounding residue on the diagonal (up to about
    0.2 for 2048-d features of norm 200 in float32), so the self-distances are set to exactly 0.
    """
    sq = x.pow(2).sum(1, keepdim=True)
    dist = (sq + sq.t() - 2.0 * x @ x.t()).clamp(min=1e-12).sqrt()
    self_pairs = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return dist.masked_fill(self_pairs, 0.0)


def hard_example_mining(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each anchor, the distance to its farthest positive and its closest negative."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    # Masking with +-inf instead of reshaping keeps this valid for any number of images per identity.
    d_ap = dist.masked_fill(~same, float("-inf")).amax(1)
    d_an = dist.masked_fill(same, float("inf")).amin(1)
    return d_ap, d_an


def gather_for_mining(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Under DDP, the global batch's features and labels, so triplets are mined as one process would.

    The autograd-aware all_gather sends each rank's gradient back to the rank that owns the feature;
    after DDP averages parameter gradients this equals the single-process gradient exactly.
    """
    if comm.get_world_size() == 1:
        return features, labels
    all_labels = [torch.empty_like(labels) for _ in range(comm.get_world_size())]
    torch.distributed.all_gather(all_labels, labels)
    return comm.all_gather_with_grad(features), torch.cat(all_labels)


def _check_identities_per_batch(cfg: CfgNode) -> None:
    """A batch of one identity has no negative: the loss would be 0 for the whole run."""
    if cfg.DATALOADER.SAMPLER == "pk" and cfg.SOLVER.IMS_PER_BATCH // cfg.DATALOADER.NUM_INSTANCE < 2:
        raise ConfigError(
            f"The triplet loss needs at least 2 identities per batch, but SOLVER.IMS_PER_BATCH "
            f"({cfg.SOLVER.IMS_PER_BATCH}) / DATALOADER.NUM_INSTANCE ({cfg.DATALOADER.NUM_INSTANCE}) gives "
            f"{cfg.SOLVER.IMS_PER_BATCH // cfg.DATALOADER.NUM_INSTANCE}: every batch would be one person, with no "
            "negative to mine, and the loss 0 for the whole run. Raise SOLVER.IMS_PER_BATCH or lower "
            "DATALOADER.NUM_INSTANCE (BoT: 64 and 4, i.e. 16 identities).")


@LOSS_REGISTRY.register("triplet", config=TRIPLET_CONFIG, check=_check_identities_per_batch)
class TripletLoss(nn.Module):
    """Batch-hard triplet loss on the pre-BNNeck features, with a hard margin or the soft-margin variant.

    Under DDP the features of every rank are gathered first (:func:`gather_for_mining`).
    """

    input_key = "feat"

    def __init__(self, margin: float = 0.3, soft_margin: bool = False, weight: float = 1.0) -> None:
        super().__init__()
        self.margin = margin
        self.soft_margin = soft_margin
        self.weight = weight

    @classmethod
    def from_config(cls, cfg: CfgNode, num_classes: int = 0, feat_dim: int = 0) -> dict:
        t = cfg.MODEL.TRIPLET
        return {"margin": t.MARGIN, "soft_margin": t.SOFT_MARGIN, "weight": t.WEIGHT}

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features, labels = gather_for_mining(features, labels)
        d_ap, d_an = hard_example_mining(pairwise_euclidean(features.float()), labels)
        valid = torch.isfinite(d_an)  # a batch made of a single identity has no negative
        d_ap, d_an = d_ap[valid], d_an[valid]
        if d_ap.numel() == 0:
            return features.sum() * 0.0
        if self.soft_margin:
            return F.softplus(d_ap - d_an).mean()
        return F.relu(d_ap - d_an + self.margin).mean()
