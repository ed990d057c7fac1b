"""Adversarial robustness of a model: attack the query set of each test dataset, evaluate, report.

``run_attacks`` (for programmatic use, e.g. the study) takes a loaded model and returns
``{dataset: {**clean_row, "attacks": {"<attack>/<objective>/eps<E>": row}}}`` where each row is what
:func:`reid.evaluation.evaluator.result_row` returns (R1/R5/R10/mAP/mINP/cmc) and an attack row also
holds ``linf_255``, the largest pixel change measured, in 1/255 units. The clean metrics sit at the top of
the dataset entry, as in ``tools/test.py``'s results.json, and the attacks are nested like its
``rerank`` entry. ``attack`` is what ``tools/attack.py`` runs: load, ``run_attacks``, table, results.json.

The gallery is never attacked. Clean and adversarial features are computed the same way (bf16 autocast
on CUDA, TEST.FLIP averaging), and the attack differentiates through that same computation. Distances
follow TEST.METRIC and TEST.FEAT_NORM; re-ranking (TEST.RERANK) is not evaluated here.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from yacs.config import CfgNode

from reid.data import DATASET_REGISTRY, TestData, build_test_loader, check_datasets
from reid.data.datasets import MarketStyleSource, ReIDDataset
from reid.engine.hooks import write_results
from reid.engine.inference import load_model_for_inference
from reid.engine.training import setup_run
from reid.evaluation.attacks import (
    ATTACKS,
    OBJECTIVES,
    PGD_ALPHA_FACTOR,
    attack_images,
    embed,
    feature_disruption,
    metric_attack,
    true_match_mask,
)
from reid.evaluation.evaluator import (
    ExtractedFeatures,
    evaluate_extracted,
    extract_features,
    result_row,
)
from reid.evaluation.rank import evaluate_features
from reid.utils.errors import ConfigError, ReIDError

logger = logging.getLogger("reid.engine")

TRIPTYCH_GAP = 4  # white pixels between the clean, adversarial and difference panels


@dataclass(frozen=True)
class AttackRun:
    """One attacked version of the query set: attack name, objective and budget in 1/255 units."""

    attack: str
    objective: str
    eps: float

    @property
    def key(self) -> str:
        return f"{self.attack}/{self.objective}/eps{self.eps:g}"

    @property
    def slug(self) -> str:
        """The key as a file or folder name."""
        return self.key.replace("/", "_")


def plan_runs(attacks: Sequence[str], objectives: Sequence[str], eps_list: Sequence[float],
              steps: int | None = None) -> list[AttackRun]:
    """Every (attack, objective, eps) combination, validated (with ``steps`` when given)."""
    if steps is not None and steps < 1:
        raise ConfigError(f"Attack steps must be 1 or more, got {steps}.")
    for value, allowed, what in ((attacks, ATTACKS, "attack"), (objectives, OBJECTIVES, "objective")):
        unknown = [v for v in value if v not in allowed]
        if unknown or not value:
            raise ConfigError(f"Unknown or missing {what} {unknown or list(value)}; "
                              f"expected any of {', '.join(allowed)}.")
    bad_eps = [e for e in eps_list if not 0 <= e <= 255]
    if bad_eps or not eps_list:
        raise ConfigError(f"Attack budgets must be given, in 1/255 units between 0 and 255; got {list(eps_list)}.")
    return [AttackRun(a, o, float(e)) for a in dict.fromkeys(attacks) for o in dict.fromkeys(objectives)
            for e in dict.fromkeys(eps_list)]


def run_attacks(cfg: CfgNode, model: nn.Module, datasets: Sequence[str], attacks: Sequence[str],
                eps_list: Sequence[float], objectives: Sequence[str], steps: int, out_dir: str | Path,
                device: torch.device | str | None = None, seed: int | None = None, vis: int = 0,
                save_adv: str | Path | None = None) -> dict[str, dict]:
    """Attack the queries of each dataset with every (attack, objective, eps) and evaluate them.

    ``eps_list`` is in 1/255 units. ``seed`` (default TEST.ATTACK.SEED) seeds one generator per dataset
    and attacked set, so a set does not depend on which other sets the call computes. ``vis`` saves the
    first ``vis`` queries of each set as clean/adversarial/difference triptychs under
    ``out_dir/attacks/<dataset>/``; ``save_adv`` writes each attacked query set as a dataset tree
    (see :func:`prepare_adversarial_tree`). Returns the nested results; writes no results.json.
    """
    runs = plan_runs(attacks, objectives, eps_list)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    seed = cfg.TEST.ATTACK.SEED if seed is None else seed
    if save_adv is not None:
        unsupported = [name for name in datasets if not issubclass(DATASET_REGISTRY.get(name), MarketStyleSource)]
        if unsupported:
            raise ReIDError(
                f"--save-adv writes a query/ folder next to the gallery folder, which the layout of "
                f"{', '.join(unsupported)} does not have (its queries are listed in files). Leave those datasets "
                "out of DATASETS.TEST or drop --save-adv."
            )
    table: dict[str, dict] = {}
    for name in datasets:
        data = build_test_loader(cfg, name)
        # fp32 like the adversarial features below, so that only the perturbation separates the two
        clean = ExtractedFeatures(*extract_features(model, data.loader, device, cfg.TEST.FLIP, desc=name, amp=False),
                                  data.num_query)
        table[name] = result_row(evaluate_extracted(cfg, clean, rerank=False)["plain"])
        adv_features, linf = _attack_queries(cfg, model, data, clean, runs, steps, device, seed, vis,
                                             Path(out_dir) / "attacks" / name, save_adv)
        _, gf, q_pids, g_pids, q_camids, g_camids = clean.split()
        table[name]["attacks"] = {}
        for run in runs:
            result = evaluate_features(adv_features[run], gf, q_pids, g_pids, q_camids, g_camids,
                                       metric=cfg.TEST.METRIC, normalize=cfg.TEST.FEAT_NORM, max_rank=cfg.TEST.MAX_RANK)
            table[name]["attacks"][run.key] = {**result_row(result), "linf_255": round(linf[run] * 255, 4)}
    return table


def _attack_queries(cfg: CfgNode, model: nn.Module, data: TestData, clean: ExtractedFeatures, runs: list[AttackRun],
                    steps: int, device: torch.device, seed: int, vis: int, vis_dir: Path,
                    save_adv: str | Path | None) -> tuple[dict[AttackRun, torch.Tensor], dict[AttackRun, float]]:
    """Adversarial query features of every run (and the largest perturbation measured), batch by batch,
    so that each query image is read once for all runs."""
    qf, gf, q_pids, g_pids, q_camids, g_camids = clean.split()
    metric, normalize = cfg.TEST.METRIC, cfg.TEST.FEAT_NORM
    generators = {run: torch.Generator().manual_seed(seed) for run in runs}
    adv_features = {run: torch.empty_like(qf) for run in runs}
    linf = {run: 0.0 for run in runs}
    query_dirs = {run: prepare_adversarial_tree(data.dataset, cfg.DATASETS.ROOT, Path(save_adv) / run.slug)
                  for run in runs} if save_adv is not None else {}
    loader = DataLoader(Subset(data.loader.dataset, range(data.num_query)), batch_size=cfg.TEST.IMS_PER_BATCH,
                        num_workers=cfg.DATALOADER.NUM_WORKERS)
    start, done = time.perf_counter(), 0
    for batch in loader:
        images = batch["images"].to(device, non_blocking=True)
        index = batch["index"]  # positions in the query list
        rows = index.to(qf.device)
        for run in runs:
            if run.objective == "feature":
                objective = feature_disruption(qf[rows], metric, normalize)
            else:
                mask = true_match_mask(q_pids[index], q_camids[index], g_pids, g_camids)
                objective = metric_attack(gf, mask, qf[rows], metric, normalize)
            adv = attack_images(model, images, run.attack, run.eps / 255, steps, objective,
                                generator=generators[run], flip=cfg.TEST.FLIP)
            with torch.no_grad():
                adv_features[run][rows] = embed(model, adv, cfg.TEST.FLIP).to(qf.dtype)
            linf[run] = max(linf[run], float((adv - images).abs().max()))
            for i in range(len(images)):
                if int(index[i]) < vis:
                    save_triptych(images[i], adv[i], run.eps / 255,
                                  vis_dir / f"{run.slug}_{Path(batch['paths'][i]).stem}.png")
                if run in query_dirs:
                    write_image(adv[i], query_dirs[run] / f"{Path(batch['paths'][i]).stem}.png")
        done += len(images)
        logger.info(f"attacked {done}/{data.num_query} queries x {len(runs)} settings "
                    f"({done * len(runs) / max(time.perf_counter() - start, 1e-9):.1f} attacked images/s)")
    return adv_features, linf


def prepare_adversarial_tree(dataset: ReIDDataset, root: str | Path, out_root: Path) -> Path:
    """Mirror a Market-style dataset under ``out_root`` with an empty ``query/`` folder to fill, and return it.

    The other subset folders are symbolic links to the originals (copies where links are not allowed),
    so ``DATASETS.ROOT out_root`` evaluates the attacked queries against the clean gallery with any tool.
    Adversarial queries are lossless PNGs at INPUT.SIZE_TEST with the original file stems (a JPEG would
    partly undo the perturbation); their values are rounded to the 8-bit grid.
    """
    source = Path(dataset.root)  # built as DATASETS.ROOT / one of the source's candidate folders
    try:
        relative = source.relative_to(root)
    except ValueError:
        relative = Path(source.name)
    target = out_root / relative
    query_name = DATASET_REGISTRY.get(dataset.name).subsets["query"]
    if target.exists():
        shutil.rmtree(target)  # a set from an earlier run would mix with this one
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name == query_name or entry.name.startswith("."):
            continue
        try:
            os.symlink(entry.resolve(), target / entry.name, target_is_directory=entry.is_dir())
        except OSError:
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target / entry.name)
    (target / query_name).mkdir()
    return target / query_name


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) RGB float image in [0, 1] as an (H, W, 3) BGR uint8 array for OpenCV."""
    rgb = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(rgb[:, :, ::-1])


def write_image(image: torch.Tensor, path: Path) -> Path:
    """Write a (3, H, W) float RGB image in [0, 1] losslessly (the suffix picks the format; use .png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), _to_uint8(image)):
        raise ReIDError(f"Cannot write image {path}; check that the folder is writable.")
    return path


def save_triptych(clean: torch.Tensor, adversarial: torch.Tensor, eps: float, path: Path) -> Path:
    """Clean | adversarial | |difference| side by side; the difference is scaled so that eps is white."""
    difference = (adversarial - clean).abs() / eps if eps > 0 else torch.zeros_like(clean)
    gap = torch.ones(3, clean.shape[1], TRIPTYCH_GAP, device=clean.device)
    return write_image(torch.cat([clean, gap, adversarial, gap, difference.clamp(0, 1)], dim=2), path)


def format_attack_table(table: dict[str, dict]) -> str:
    """A Markdown table: per dataset the clean row, then each attack with its mAP drop, metrics in percent."""
    lines = ["| dataset | attack | R1 | mAP | mINP | mAP drop |", "|---|---|---|---|---|---|"]
    for name, entry in table.items():
        lines.append(f"| {name} | clean | {100 * entry['R1']:.1f} | {100 * entry['mAP']:.1f} | "
                     f"{100 * entry['mINP']:.1f} | |")
        for key, row in entry["attacks"].items():
            lines.append(f"| {name} | {key} | {100 * row['R1']:.1f} | {100 * row['mAP']:.1f} | "
                         f"{100 * row['mINP']:.1f} | {100 * (entry['mAP'] - row['mAP']):.1f} |")
    return "\n".join(lines)


def attack(cfg: CfgNode, weights: str | Path, attacks: Sequence[str], eps_list: Sequence[float],
           objectives: Sequence[str], steps: int, vis: int = 0, save_adv: str | Path | None = None) -> dict:
    """What ``tools/attack.py`` does: attack the queries of every DATASETS.TEST entry with ``weights``,
    log a table and write ``OUTPUT_DIR/results.json`` (with the settings under ``"attack"``)."""
    plan_runs(attacks, objectives, eps_list, steps)  # fail on bad settings before loading anything
    if vis < 0:
        raise ConfigError(f"--vis takes a number of queries (0 or more), got {vis}.")
    if save_adv is not None:
        Path(save_adv).mkdir(parents=True, exist_ok=True)  # an unwritable folder fails now, not after the attack
    device = setup_run(cfg, config_name="attack_config.yaml")
    check_datasets(cfg.DATASETS.TEST, cfg.DATASETS.ROOT)
    model, cfg = load_model_for_inference(weights, cfg, device)
    out = Path(cfg.OUTPUT_DIR)
    table = run_attacks(cfg, model, cfg.DATASETS.TEST, attacks, eps_list, objectives, steps, out, device,
                        vis=vis, save_adv=save_adv)
    logger.info(f"White-box attacks on the queries of {weights} (eps in 1/255 units):\n" + format_attack_table(table))
    settings = {"steps": steps, "seed": cfg.TEST.ATTACK.SEED, "metric": cfg.TEST.METRIC,
                "feat_norm": cfg.TEST.FEAT_NORM, "flip": cfg.TEST.FLIP, "eps_unit": "1/255",
                "step_size": f"fgsm: eps; ifgsm, mifgsm: eps/steps; pgd: {PGD_ALPHA_FACTOR}*eps/steps"}
    logger.info(f"Wrote {write_results(out, {'results': table, 'weights': str(weights), 'attack': settings})}")
    return table
