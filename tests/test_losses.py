"""Loss correctness on hand-made batches."""

import pytest
import torch
import torch.nn.functional as F

from reid.config import load_config
from reid.modeling.losses import LOSS_REGISTRY, ReIDLoss
from reid.modeling.losses.center import CenterLoss
from reid.modeling.losses.triplet import TripletLoss, hard_example_mining, pairwise_euclidean


def test_pairwise_euclidean_matches_cdist():
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(pairwise_euclidean(x), torch.cdist(x, x), atol=1e-4)


def test_pairwise_euclidean_self_distance_is_exactly_zero_for_large_features():
    # 2048-d features of norm ~200: the expanded form's diagonal residue used to reach 0.1-0.2.
    x = 4.5 * torch.randn(16, 2048, generator=torch.Generator().manual_seed(1))
    dist = pairwise_euclidean(x)
    assert torch.equal(dist.diagonal(), torch.zeros(16))
    off_diagonal = ~torch.eye(16, dtype=torch.bool)
    exact = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    assert torch.allclose(dist[off_diagonal], exact[off_diagonal], rtol=1e-4)


def test_batch_hard_picks_hardest_positive_and_negative():
    # 1-D features make the distances obvious: |a - b|.
    feats = torch.tensor([[0.0], [1.0], [5.0], [2.0], [2.5], [10.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    d_ap, d_an = hard_example_mining(pairwise_euclidean(feats), labels)
    # anchor 0: positives at 1 and 5 -> hardest 5; negatives 2, 2.5, 10 -> closest 2
    assert torch.allclose(d_ap, torch.tensor([5.0, 4.0, 5.0, 8.0, 7.5, 8.0]), atol=1e-4)
    assert torch.allclose(d_an, torch.tensor([2.0, 1.0, 2.5, 1.0, 1.5, 5.0]), atol=1e-4)
    loss = TripletLoss(margin=0.3)(feats, labels)
    hardest_pos = torch.tensor([5.0, 4.0, 5.0, 8.0, 7.5, 8.0])
    hardest_neg = torch.tensor([2.0, 1.0, 2.5, 1.0, 1.5, 5.0])
    expected = F.relu(hardest_pos - hardest_neg + 0.3).mean()
    assert torch.allclose(loss, expected, atol=1e-4)


def test_triplet_zero_when_well_separated_and_soft_margin_positive():
    feats = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
    labels = torch.tensor([0, 0, 1, 1])
    assert TripletLoss(0.3)(feats, labels).item() == 0.0
    soft = TripletLoss(soft_margin=True)(feats, labels)
    assert 0 < soft.item() < 1e-3  # softplus(0.1 - 9.9)


def test_triplet_gradient_pulls_positive_and_pushes_negative():
    feats = torch.tensor([[0.0], [1.0], [1.5], [3.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    TripletLoss(0.3)(feats, labels).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_triplet_single_identity_batch_is_zero_not_nan():
    feats = torch.randn(4, 8, requires_grad=True)
    loss = TripletLoss(0.3)(feats, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0


def test_center_loss_value():
    center = CenterLoss(2, 3)
    with torch.no_grad():
        center.centers.copy_(torch.tensor([[0.0, 0, 0], [1.0, 1, 1]]))
    feats = torch.tensor([[1.0, 0, 0], [1.0, 1, 3]])
    assert torch.allclose(center(feats, torch.tensor([0, 1])), torch.tensor((1.0 + 4.0) / 2))


def test_reid_loss_terms_are_weighted_and_separate():
    cfg = load_config(None, ["MODEL.LOSSES", "('ce', 'triplet', 'center')", "MODEL.TRIPLET.WEIGHT", "2.0"])
    loss = ReIDLoss(cfg, num_classes=3, feat_dim=4)
    logits = torch.randn(6, 3)
    feats = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    out = loss({"logits": logits, "feat": feats}, labels)
    assert set(out) == {"loss_ce", "loss_triplet", "loss_center"}
    smooth = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert torch.allclose(out["loss_ce"], smooth)
    assert torch.allclose(out["loss_triplet"], 2.0 * TripletLoss(0.3)(feats, labels))
    assert torch.allclose(out["loss_center"], 5e-4 * loss.center(feats, labels))


def test_label_smoothing_matches_bot_formula():
    logits, labels, eps = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0]), 0.1
    targets = (1 - eps) * F.one_hot(labels, 4) + eps / 4  # BoT's CrossEntropyLabelSmooth
    bot = (-targets * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(F.cross_entropy(logits, labels, label_smoothing=eps), bot, atol=1e-6)


@pytest.mark.parametrize("name", LOSS_REGISTRY.names())
def test_every_registered_loss_builds_from_its_config_and_gives_a_gradient(name):
    """Over the registry: a loss added in its own file is checked here without editing this test."""
    cfg = load_config(None, ["MODEL.LOSSES", f"('{name}',)"])
    criterion = ReIDLoss(cfg, num_classes=3, feat_dim=4)
    feats = torch.randn(6, 4, requires_grad=True)
    logits = torch.randn(6, 3, requires_grad=True)
    losses = criterion({"logits": logits, "feat": feats, "bn_feat": feats}, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert list(losses) == [f"loss_{name}"]
    loss = losses[f"loss_{name}"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in (feats, logits))
    assert LOSS_REGISTRY.node_of(name) is not None  # its options live with it


def test_center_loss_owns_its_optimizer_step():
    cfg = load_config(None, ["MODEL.LOSSES", "('center',)", "MODEL.CENTER.LR", "0.5", "MODEL.CENTER.WEIGHT", "0.01"])
    criterion = ReIDLoss(cfg, num_classes=2, feat_dim=3)
    before = criterion.center.centers.detach().clone()
    feats, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    sum(criterion({"feat": feats}, labels).values()).backward()
    grad = criterion.center.centers.grad.clone() / 0.01  # BoT: the weight is divided out of the centers' gradient
    criterion.step(grad_scale=None)
    assert torch.allclose(criterion.center.centers.detach(), before - 0.5 * grad)
    state = criterion.optimizer_state_dict()
    assert state is not None and "param_groups" in state  # checkpoints keep it as center_optimizer
