"""White-box L-inf attacks on ReID query images, in pixel space before the model's normalisation.

One loop runs every attack; they differ only in their settings (:func:`attack_settings`):

=========  =====  =====================  ========  ============  ==============================================
attack     steps  step size alpha        momentum  random start  reference
=========  =====  =====================  ========  ============  ==============================================
fgsm       1      eps                    -         no            Goodfellow et al., ICLR 2015
ifgsm      S      eps / S                -         no            Kurakin et al., 2017 (BIM)
mifgsm     S      eps / S                1.0       no            Dong et al., CVPR 2018 (their alpha)
pgd        S      2.5 * eps / S          -         uniform       Madry et al., ICLR 2018 (step: MadryLab lib.)
=========  =====  =====================  ========  ============  ==============================================

Each step moves the images by ``alpha * sign(direction)`` and projects them back into the eps ball
around the clean images and into the valid range [0, 1]. MI-FGSM's direction accumulates the
gradients, each divided by its per-image L1 norm. Gradients are taken w.r.t. the input only
(``torch.autograd.grad``): the model's parameters get no ``.grad`` and it runs in eval mode
(LFM off, BatchNorm statistics frozen). The forward passes run in float32 on every device
(:func:`embed`, ``amp=False``): under bf16 autocast the attack would follow rounding noise, and
features of the same image would differ between the clean and the attacked evaluation.

The iterates are real-valued; an image file stores 8 bits per channel. :func:`quantize_to_8bit` snaps an
adversarial batch onto the 1/255 grid inside the eps ball, so that what is evaluated is exactly what a
saved PNG holds (the attack entry point does this before embedding and saving).

What is maximised is an :class:`Objective`, a per-image loss of the adversarial features:

* :func:`feature_disruption` - distance to the image's own clean feature;
* :func:`metric_attack` - mean distance to the gallery features of its true matches (same identity,
  other camera, as the evaluation protocol counts them); queries without a true match fall back to
  feature disruption, so that every query image is attacked.

Feature disruption is at its minimum at the clean image, where its gradient is zero (sign(0) would
not move). Attacks without a random start therefore take their *first* gradient at a point drawn
uniformly in the eps ball around the clean image (from ``generator``) and apply the step to the clean
image itself: FGSM stays one full eps step from the clean image. PGD already starts at such a point.
``generator`` may be one generator per image (see :func:`image_generators`): each image's random draws
then depend only on its own generator, not on which other images share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms.v2.functional import to_dtype

from yacs.config import CfgNode

from reid.config import ComponentRegistry, ConfigNode, Option
from reid.utils.errors import ConfigError

ATTACKS = ("fgsm", "ifgsm", "mifgsm", "pgd")
OBJECTIVES = ("feature", "metric")
BOTH_OBJECTIVES = "both"  # a setting (TEST.ATTACK.OBJECTIVE, --objective) that means every objective
METRICS = ("cosine", "euclidean")
PGD_ALPHA_FACTOR = 2.5  # MadryLab robustness library default: alpha = 2.5 * eps / steps, iterates can cross the ball
MOMENTUM = 1.0  # Dong et al.'s decay factor mu
LEVELS = 255  # an 8-bit image channel holds the values k / 255, k = 0..255

# Where an attack draws its random numbers: one generator for the whole batch, or one per image.
Generators = torch.Generator | Sequence[torch.Generator] | None


def _check_attack_config(cfg: CfgNode) -> None:
    # Only the sign here: a config stored in an older checkpoint must still load; the budgets are checked to be
    # whole 1/255 levels (check_budgets) where attacks are planned.
    if any(eps < 0 for eps in cfg.TEST.ATTACK.EPS):
        raise ConfigError(
            f"Config key TEST.ATTACK.EPS must hold budgets >= 0 (in 1/255), got {tuple(cfg.TEST.ATTACK.EPS)}.")


#: Adversarial robustness of the query set (tools/attack.py and the study): TEST.ATTACK names the attack.
ATTACK_CONFIG = ConfigNode(
    "TEST.ATTACK",
    NAME=Option("", 'the attack: "", "fgsm", "ifgsm", "mifgsm" or "pgd"'),
    EPS=Option((2.0, 4.0, 8.0), "L-inf budgets, in 1/255 units of the [0, 1] image range"),
    STEPS=Option(10, "iterations of the iterative attacks", range=(1, None)),
    OBJECTIVE=Option("feature", '"feature" (away from its clean feature), "metric" (from true matches), "both"',
                     choices=(*OBJECTIVES, BOTH_OBJECTIVES)),
    SEED=Option(0, "seed of random starts, so the adversarial set is reproducible"),
)
ATTACK_REGISTRY = ComponentRegistry("attack", selector="TEST.ATTACK.NAME", empty_allowed=("",), config=ATTACK_CONFIG,
                                    check=_check_attack_config)


def objectives_of(setting: str) -> list[str]:
    """The objectives a setting names: one of :data:`OBJECTIVES`, or all of them for ``"both"``."""
    return list(OBJECTIVES) if setting == BOTH_OBJECTIVES else [setting]


def check_budgets(eps_list: Sequence[float], what: str = "Attack budgets") -> list[float]:
    """Budgets in 1/255 units as floats, each a whole number of 8-bit levels in [0, 255].

    Attacked images are rounded to 8 bits inside the eps ball: a budget of 0.5 would silently be no attack.
    """
    values = list(eps_list)
    bad = [e for e in values if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e <= 255
           or e != int(e)]
    if bad or not values:
        raise ConfigError(f"{what} must be given as whole numbers of 1/255 levels between 0 and 255; got {values}.")
    return [float(e) for e in values]


@dataclass(frozen=True, order=True)
class AttackRun:
    """One attacked version of the query set: attack name, objective and budget in 1/255 units."""

    attack: str
    objective: str
    eps: float

    @property
    def slug(self) -> str:
        """A file or folder name for this run (``fgsm_feature_eps8``)."""
        return f"{self.attack}_{self.objective}_eps{self.eps:g}"

    def label(self) -> str:
        """How tables show the run (``fgsm/feature/eps8``)."""
        return f"{self.attack}/{self.objective}/eps{self.eps:g}"


def plan_runs(attacks: Sequence[str], objectives: Sequence[str], eps_list: Sequence[float],
              steps: int | None = None) -> list[AttackRun]:
    """Every (attack, objective, eps) combination, validated (with ``steps`` when given)."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"Attack steps must be 1 or more, got {steps}.")
    for value, allowed, what in ((attacks, ATTACKS, "attack"), (objectives, OBJECTIVES, "objective")):
        unknown = [v for v in value if v not in allowed]
        if unknown or not value:
            raise ConfigError(f"Unknown or missing {what} {unknown or list(value)}; "
                              f"expected any of {', '.join(allowed)}.")
    eps_list = check_budgets(eps_list)
    return [AttackRun(a, o, e) for a in dict.fromkeys(attacks) for o in dict.fromkeys(objectives)
            for e in dict.fromkeys(eps_list)]


@dataclass(frozen=True)
class AttackSettings:
    """The parameters that turn the one attack loop into FGSM, I-FGSM, MI-FGSM or PGD."""

    steps: int
    alpha: float  # step size, in [0, 1] pixel units
    momentum: float  # 0 = plain sign of the gradient
    random_start: bool  # start from a uniform draw in the eps ball


def attack_settings(attack: str, eps: float, steps: int) -> AttackSettings:
    """Steps, step size, momentum and start of ``attack`` at budget ``eps`` (in [0, 1] units)."""
    if attack not in ATTACKS:
        raise ConfigError(f"Unknown attack {attack!r}; expected one of {', '.join(ATTACKS)}.")
    if eps < 0:
        raise ConfigError(f"The attack budget eps must be non-negative, got {eps}.")
    if attack == "fgsm":
        return AttackSettings(steps=1, alpha=eps, momentum=0.0, random_start=False)
    if steps < 1:
        raise ConfigError(f"{attack} needs at least one step (TEST.ATTACK.STEPS / --steps), got {steps}.")
    if attack == "pgd":
        return AttackSettings(steps, PGD_ALPHA_FACTOR * eps / steps, momentum=0.0, random_start=True)
    return AttackSettings(steps, eps / steps, MOMENTUM if attack == "mifgsm" else 0.0, random_start=False)


for _attack in ATTACKS:  # the settings above are the attacks' implementations; the registry validates names
    ATTACK_REGISTRY.register(_attack)(attack_settings)


@dataclass
class Objective:
    """What an attack maximises: ``loss(features)`` of shape (N,), one value per image.

    ``flat_at_clean`` (N,) marks the images whose loss has its minimum (a zero gradient) at the clean
    image; attacks without a random start take their first gradient at a random point for those.
    """

    loss: Callable[[torch.Tensor], torch.Tensor]
    flat_at_clean: torch.Tensor

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return self.loss(features)


def _prepare(features: torch.Tensor, metric: str, normalize: bool) -> torch.Tensor:
    if metric not in METRICS:
        raise ConfigError(f"Unknown metric {metric!r}; expected one of {', '.join(METRICS)}.")
    return F.normalize(features, dim=1) if normalize or metric == "cosine" else features


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, metric: str = "cosine", normalize: bool = True) -> torch.Tensor:
    """(N, M) distances as the attacks measure them: 1 - cosine, or the squared euclidean distance
    (smooth everywhere, unlike its square root), of L2-normalised features when ``normalize``."""
    a, b = _prepare(a, metric, normalize), _prepare(b, metric, normalize)
    if metric == "cosine":
        return 1 - a @ b.T
    # |a|^2 + |b|^2 - 2 a.b: no (N, M, D) difference tensor kept alive for the backward pass
    return ((a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.T).clamp(min=0)


def feature_disruption(clean_features: torch.Tensor, metric: str = "cosine", normalize: bool = True) -> Objective:
    """Distance of each adversarial feature to the clean feature of the same image (row by row)."""
    clean = _prepare(clean_features.detach().float(), metric, normalize)

    def loss(features: torch.Tensor) -> torch.Tensor:
        f = _prepare(features, metric, normalize)
        return 1 - (f * clean).sum(1) if metric == "cosine" else (f - clean).pow(2).sum(1)

    return Objective(loss, torch.ones(len(clean), dtype=torch.bool, device=clean.device))


def true_match_mask(q_pids: torch.Tensor, q_camids: torch.Tensor, g_pids: torch.Tensor,
                    g_camids: torch.Tensor) -> torch.Tensor:
    """(Nq, Ng) True where the gallery entry counts as a correct match: same identity, other camera."""
    same_pid = q_pids.view(-1, 1) == g_pids.view(1, -1)
    same_cam = q_camids.view(-1, 1) == g_camids.view(1, -1)
    return same_pid & ~same_cam


def metric_attack(gallery_features: torch.Tensor, match_mask: torch.Tensor, clean_features: torch.Tensor,
                  metric: str = "cosine", normalize: bool = True) -> Objective:
    """Mean distance of each adversarial feature to the gallery features of its true matches.

    ``match_mask`` (N, G) is :func:`true_match_mask` of the attacked queries; rows without any match
    use :func:`feature_disruption` against ``clean_features`` (N, D) instead.
    """
    match_mask = match_mask.to(gallery_features.device)
    has_match = match_mask.any(1)
    used = match_mask.any(0)  # only the gallery columns some query matches are needed
    gallery = gallery_features.detach().float()[used]
    weights = match_mask[:, used].float()
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1)
    fallback = feature_disruption(clean_features, metric, normalize)

    def loss(features: torch.Tensor) -> torch.Tensor:
        to_matches = (pairwise_distance(features, gallery, metric, normalize) * weights).sum(1)
        return torch.where(has_match, to_matches, fallback(features))

    return Objective(loss, ~has_match)


def embed(model: nn.Module, images: torch.Tensor, flip: bool = False, amp: bool = False) -> torch.Tensor:
    """Inference features as :func:`reid.evaluation.evaluator.extract_features` computes them (optional flip
    averaging), but differentiable w.r.t. ``images``; float32 features either way.

    ``amp`` runs the model under bf16 autocast on CUDA (ignored elsewhere). Attacks keep the default
    (False): clean features, adversarial features and the attack gradients are then all float32, so an
    attack with eps 0 reproduces the clean evaluation exactly and attacked numbers carry no bf16 noise.
    """
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and images.device.type == "cuda"):
        features = model(images).float()
        if flip:
            features = (features + model(images.flip(3)).float()) / 2
    return features


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # Attacks target the inference network; a model handed over in train mode gets its mode back.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def image_generators(seed: int, indices: Sequence[int] | torch.Tensor) -> list[torch.Generator]:
    """One CPU generator per image, seeded from ``(seed, index)``: an image's random draws then depend on
    the seed and its position in the dataset only, not on the batch size or on the other images."""
    # SeedSequence mixes the pair into well-separated streams ((0, 1) and (1, 0) do not collide);
    # the modulo lets a negative seed through, as torch.manual_seed would take it.
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([seed % 2**64, int(i)]).generate_state(
        1, np.uint64)[0])) for i in indices]


def _uniform_in_ball(like: torch.Tensor, eps: float, generator: Generators) -> torch.Tensor:
    # Drawn on the generator's device (CPU by default) so a seed gives the same start on any device.
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else like.device
        noise = torch.rand(like.shape, generator=generator, device=device, dtype=like.dtype)
    else:
        if len(generator) != len(like):
            raise ValueError(f"{len(generator)} generators for a batch of {len(like)} images; give one per image.")
        noise = torch.stack([torch.rand(like.shape[1:], generator=g, device=g.device, dtype=like.dtype)
                             for g in generator])
    return ((2 * noise - 1) * eps).to(like.device)


def _input_gradient(model: nn.Module, images: torch.Tensor, objective: Objective, flip: bool) -> torch.Tensor:
    images = images.detach().requires_grad_(True)
    loss = objective(embed(model, images, flip)).sum()  # images do not interact in eval mode
    return torch.autograd.grad(loss, images)[0]


def attack_images(model: nn.Module, images: torch.Tensor, attack: str, eps: float, steps: int,
                  objective: Objective, generator: Generators = None, flip: bool = False) -> torch.Tensor:
    """Adversarial versions of ``images`` (N, 3, H, W) in [0, 1]: ``|adv - images| <= eps`` everywhere.

    ``eps`` is in [0, 1] units (divide a budget in 1/255 units by 255); ``steps`` is ignored by FGSM.
    Random draws (PGD's start, the first gradient point of flat objectives) come from ``generator`` (one
    for the batch, or one per image), so seeded generators give the same adversarial images. The model
    runs in float32 (:func:`embed`). The result is real-valued: :func:`quantize_to_8bit` turns it into
    what an 8-bit image file can hold.
    """
    settings = attack_settings(attack, eps, steps)
    clean = images.detach()
    lower, upper = (clean - eps).clamp(0, 1), (clean + eps).clamp(0, 1)
    adv = clean.clone()
    if settings.random_start:
        adv = torch.max(torch.min(clean + _uniform_in_ball(clean, eps, generator), upper), lower)
    velocity = torch.zeros_like(clean)
    per_image = (slice(None),) + (None,) * (clean.dim() - 1)  # broadcasts an (N,) mask over pixels
    with _eval_mode(model), torch.enable_grad():
        for step in range(settings.steps):
            point = adv
            if step == 0 and not settings.random_start and bool(objective.flat_at_clean.any()):
                probe = _uniform_in_ball(clean, eps, generator) * objective.flat_at_clean.to(clean.device)[per_image]
                point = torch.max(torch.min(adv + probe, upper), lower)
            grad = _input_gradient(model, point, objective, flip)
            if settings.momentum:
                l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12)[per_image]
                velocity = settings.momentum * velocity + grad / l1
                grad = velocity
            adv = torch.max(torch.min(adv + settings.alpha * grad.sign(), upper), lower)
    return adv.detach()


def quantize_to_8bit(adversarial: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """``adversarial`` rounded to the 8-bit grid (k / 255), then clipped back into the eps ball around
    ``clean`` and into [0, 1]: exactly the values a PNG of it stores and reads back.

    ``clean`` must lie on the grid (images read from 8-bit files do). An 8-bit image moves by whole levels,
    so the ball holds ``floor(eps * 255)`` levels on each side: eps 8/255 allows 8 levels; a budget between
    levels is rounded down so that ``|result - clean| <= eps`` still holds (in whole levels: the float values
    k / 255 may differ by an ulp). Changed values are built as the test transform builds them from uint8
    (torchvision ``to_dtype``), so an image read back from the saved file is bit-identical to the returned
    one; unchanged values are ``clean``'s own (eps 0 returns ``clean``).
    """
    clean = clean.detach()
    clean_levels = (clean.float() * LEVELS).round()
    # 1e-3 of a level: float images made from uint8 by x / 255 or x * (1 / 255) differ by an ulp, not more
    if (clean.float() * LEVELS - clean_levels).abs().max() > 1e-3:
        raise ValueError("quantize_to_8bit needs clean images on the 8-bit grid (uint8 values / 255), as images "
                         "read from files are.")
    budget = math.floor(eps * LEVELS + 1e-6)  # eps = k / 255 computed in float lands a hair below k
    levels = (adversarial.detach().float() * LEVELS).round()
    levels = torch.min(torch.max(levels, clean_levels - budget), clean_levels + budget).clamp(0, LEVELS)
    return torch.where(levels == clean_levels, clean, _from_levels(levels).to(clean.dtype))


def _from_levels(levels: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] from integer levels 0..255, computed as the test transform does from uint8."""
    return to_dtype(levels.to(torch.uint8), torch.float32, scale=True)
