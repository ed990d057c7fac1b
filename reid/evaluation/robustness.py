"""Adversarial robustness of a model: attack the query set of each test dataset and evaluate it.

:func:`evaluate_attacks` returns ``{dataset: {**clean_row, "attacks": {run: row}}}`` where each row is what
:func:`reid.evaluation.evaluator.result_row` returns (R1/R5/R10/mAP/mINP/cmc) and an attack row also holds
``linf_255``, the largest pixel change measured, in 1/255 units. The gallery is never attacked.

Clean and adversarial query features come from the same computation: the same query batches through
:func:`~reid.evaluation.attacks.embed` in float32 on every device, with TEST.FLIP averaging, and the same
evaluation call; the attack differentiates through that computation too. TEST.AMP is ignored here, as
bf16 noise would otherwise separate clean from attacked numbers (on CUDA, convolutions may use TF32 where
PyTorch's settings allow it, for both alike). So an eps-0 attack reproduces the clean row exactly. (The
clean row can differ slightly from ``tools/test.py``'s, which uses bf16 on CUDA.)

Adversarial images are snapped to the 8-bit grid (:func:`reid.evaluation.attacks.quantize_to_8bit`)
before they are embedded and handed to ``on_batch`` (which draws or saves them), so the reported numbers
are those of images that exist as 8-bit files. Random draws come from one generator per query image,
seeded from (seed, its index in the query list), so the adversarial set does not depend on the batch size.
Distances follow TEST.METRIC and TEST.FEAT_NORM; re-ranking (TEST.RERANK) is not evaluated here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from yacs.config import CfgNode

from reid.data import build_dataset, build_image_loader
from reid.data.datasets import ReIDDataset
from reid.evaluation.attacks import (
    AttackRun,
    attack_images,
    embed,
    feature_disruption,
    image_generators,
    metric_attack,
    quantize_to_8bit,
    true_match_mask,
)
from reid.evaluation.evaluator import extract_features, result_row
from reid.evaluation.rank import RankResult, evaluate_features
from reid.utils.progress import Progress

logger = logging.getLogger("reid.evaluation")

# Version of how an attacked number is computed, stored with the study's results so that numbers of
# different versions are never mixed in one table. 1: before versions were stored (bf16 features on CUDA,
# real-valued adversarial images, one random stream per batch); 2: float32 features, 8-bit adversarial
# images, random draws per image. Raise it whenever a change to the attacks changes their numbers.
ATTACK_PROTOCOL = 2


@dataclass
class AttackedBatch:
    """One batch of queries under one attack run, as ``on_batch`` sees it (images in [0, 1], on the device)."""

    dataset: ReIDDataset
    run: AttackRun
    clean: torch.Tensor  # (B, 3, H, W)
    adversarial: torch.Tensor  # (B, 3, H, W), on the 8-bit grid
    index: torch.Tensor  # (B,) positions in the query list
    paths: list[str]
    clean_features: torch.Tensor  # (B, D) float32
    adversarial_features: torch.Tensor  # (B, D) float32


#: Called for every attacked batch, e.g. to draw triptychs or save the adversarial images.
BatchCallback = Callable[[AttackedBatch], None]
#: Called once per dataset and run after evaluation: (dataset name, run, clean result, attacked result).
ResultCallback = Callable[[str, AttackRun, RankResult, RankResult], None]


@dataclass
class _AttackedQueries:
    """The query set of one dataset, clean and under each attack run."""

    clean: torch.Tensor  # (Nq, D) features of the clean queries
    pids: torch.Tensor
    camids: torch.Tensor
    adversarial: dict[AttackRun, torch.Tensor]  # (Nq, D) features per run
    linf: dict[AttackRun, float]  # largest pixel change per run, in [0, 1] units


def evaluate_attacks(cfg: CfgNode, model: nn.Module, datasets: Sequence[str], runs: Sequence[AttackRun], steps: int,
                     device: torch.device | str | None = None, seed: int | None = None,
                     on_batch: BatchCallback | None = None, on_result: ResultCallback | None = None
                     ) -> dict[str, dict]:
    """Attack the queries of each dataset with every run (see :func:`reid.evaluation.attacks.plan_runs`) and
    evaluate them against the clean gallery.

    ``seed`` (default TEST.ATTACK.SEED) seeds one generator per query image (with its index), so a set depends
    neither on which other runs the call computes nor on the batch size.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    seed = cfg.TEST.ATTACK.SEED if seed is None else seed
    table: dict[str, dict] = {}
    for name in datasets:
        dataset = build_dataset(name, cfg.DATASETS.ROOT)
        # float32 like the query features below (the gallery is shared by the clean and attacked rows)
        gf, g_pids, g_camids, _ = extract_features(model, build_image_loader(cfg, dataset.gallery), device,
                                                   cfg.TEST.FLIP, desc=f"{name} gallery", amp=False)
        queries = _attack_queries(cfg, model, dataset, gf, g_pids, g_camids, list(runs), steps, device, seed,
                                  on_batch)

        def evaluate(query_features: torch.Tensor) -> RankResult:
            return evaluate_features(query_features, gf, queries.pids, g_pids, queries.camids, g_camids,
                                     metric=cfg.TEST.METRIC, normalize=cfg.TEST.FEAT_NORM, max_rank=cfg.TEST.MAX_RANK)

        clean = evaluate(queries.clean)
        table[name] = {**result_row(clean), "attacks": {}}
        for run in runs:
            attacked = evaluate(queries.adversarial[run])
            table[name]["attacks"][run] = {**result_row(attacked), "linf_255": round(queries.linf[run] * 255, 4)}
            if on_result is not None:
                on_result(name, run, clean, attacked)
    return table


def _attack_queries(cfg: CfgNode, model: nn.Module, dataset: ReIDDataset, gf: torch.Tensor, g_pids: torch.Tensor,
                    g_camids: torch.Tensor, runs: list[AttackRun], steps: int, device: torch.device, seed: int,
                    on_batch: BatchCallback | None) -> _AttackedQueries:
    """Clean and adversarial query features of every run (and the largest perturbation measured), batch by
    batch, so that each query image is read once for all runs."""
    metric, normalize, flip = cfg.TEST.METRIC, cfg.TEST.FEAT_NORM, cfg.TEST.FLIP
    num_query = len(dataset.query)
    clean = torch.empty(num_query, gf.shape[1], device=gf.device)
    pids = torch.empty(num_query, dtype=torch.long)
    camids = torch.empty(num_query, dtype=torch.long)
    adv_features = {run: torch.empty_like(clean) for run in runs}
    linf = {run: 0.0 for run in runs}
    progress = Progress(f"attack {dataset.name}", num_query, unit="queries", logger=logger)
    for batch in build_image_loader(cfg, dataset.query):
        images = batch["images"].to(device, non_blocking=True)
        index = batch["index"]  # positions in the query list
        rows = index.to(clean.device)
        pids[index], camids[index] = batch["pids"], batch["camids"]
        with torch.no_grad():  # the same call as for the adversarial images below: eps 0 gives these exactly
            clean[rows] = embed(model, images, flip)
        for run in runs:
            if run.objective == "feature":
                objective = feature_disruption(clean[rows], metric, normalize)
            else:
                mask = true_match_mask(batch["pids"], batch["camids"], g_pids, g_camids)
                objective = metric_attack(gf, mask, clean[rows], metric, normalize)
            eps = run.eps / 255
            adv = attack_images(model, images, run.attack, eps, steps, objective,
                                generator=image_generators(seed, index.tolist()), flip=flip)
            # What is evaluated is what an 8-bit file holds, not a float image no file can store.
            adv = quantize_to_8bit(adv, images, eps)
            with torch.no_grad():
                adv_features[run][rows] = embed(model, adv, flip)
            linf[run] = max(linf[run], float((adv - images).abs().max()))
            if on_batch is not None:
                on_batch(AttackedBatch(dataset, run, images, adv, index, list(batch["paths"]), clean[rows],
                                       adv_features[run][rows]))
        progress.update(len(images))
    progress.close()
    return _AttackedQueries(clean, pids, camids, adv_features, linf)


def format_attack_table(table: dict[str, dict]) -> str:
    """A Markdown table: per dataset the clean row, then each attack with its mAP drop, metrics in percent."""
    lines = ["| dataset | attack | R1 | mAP | mINP | mAP drop |", "|---|---|---|---|---|---|"]
    for name, entry in table.items():
        lines.append(f"| {name} | clean | {100 * entry['R1']:.1f} | {100 * entry['mAP']:.1f} | "
                     f"{100 * entry['mINP']:.1f} | |")
        for run, row in entry["attacks"].items():
            lines.append(f"| {name} | {run.label()} | {100 * row['R1']:.1f} | {100 * row['mAP']:.1f} | "
                         f"{100 * row['mINP']:.1f} | {100 * (entry['mAP'] - row['mAP']):.1f} |")
    return "\n".join(lines)
