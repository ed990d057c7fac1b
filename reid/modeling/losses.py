"""BoT losses: label-smoothed ID loss, batch-hard triplet loss, center loss, and their weighted sum."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from reid.utils import comm


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


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al., 2017) with a hard margin or the soft-margin variant."""

    def __init__(self, margin: float = 0.3, soft_margin: bool = False) -> None:
        super().__init__()
        self.margin = margin
        self.soft_margin = soft_margin

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        d_ap, d_an = hard_example_mining(pairwise_euclidean(features.float()), labels)
        valid = torch.isfinite(d_an)  # a batch made of a single identity has no negative
        d_ap, d_an = d_ap[valid], d_an[valid]
        if d_ap.numel() == 0:
            return features.sum() * 0.0
        if self.soft_margin:
            return F.softplus(d_ap - d_an).mean()
        return F.relu(d_ap - d_an + self.margin).mean()


class CenterLoss(nn.Module):
    """Center loss (Wen et al., 2016): mean squared distance of each feature to its class center."""

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.centers[labels]).pow(2).sum(1).clamp(1e-12, 1e12).mean()


def gather_for_mining(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Under DDP, mine triplets over the global batch as a single process would.

    The autograd-aware all_gather sends each rank's gradient back to the rank that owns the feature;
    after DDP averages parameter gradients this equals the single-process gradient exactly.
    """
    if comm.get_world_size() == 1:
        return features, labels
    all_labels = [torch.empty_like(labels) for _ in range(comm.get_world_size())]
    torch.distributed.all_gather(all_labels, labels)
    return comm.all_gather_with_grad(features), torch.cat(all_labels)


class ReIDLoss(nn.Module):
    """The configured loss terms (``MODEL.LOSSES``), each weighted and reported separately."""

    def __init__(self, cfg: CfgNode, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.terms = tuple(cfg.MODEL.LOSSES)
        self.ce_epsilon = cfg.MODEL.CE.EPSILON
        self.ce_weight = cfg.MODEL.CE.WEIGHT
        self.triplet = TripletLoss(cfg.MODEL.TRIPLET.MARGIN, cfg.MODEL.TRIPLET.SOFT_MARGIN)
        self.triplet_weight = cfg.MODEL.TRIPLET.WEIGHT
        self.center = CenterLoss(num_classes, feat_dim) if "center" in self.terms else None
        self.center_weight = cfg.MODEL.CENTER.WEIGHT

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted terms keyed ``loss_ce``/``loss_triplet``/``loss_center``; their sum is the objective."""
        losses: dict[str, torch.Tensor] = {}
        if "ce" in self.terms:
            logits = outputs["logits"].float()
            losses["loss_ce"] = self.ce_weight * F.cross_entropy(logits, labels, label_smoothing=self.ce_epsilon)
        if "triplet" in self.terms:
            feat, triplet_labels = gather_for_mining(outputs["feat"], labels)
            losses["loss_triplet"] = self.triplet_weight * self.triplet(feat, triplet_labels)
        if self.center is not None:
            losses["loss_center"] = self.center_weight * self.center(outputs["feat"], labels)
        return losses
