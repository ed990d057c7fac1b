"""Adversarial robustness of a model: attack the query set of each test dataset, evaluate, report.

``run_attacks`` (for programmatic use, e.g. the study) takes a loaded model and returns
``{dataset: {**clean_row, "attacks": {"<attack>/<objective>/eps<E>": row}}}`` where each row is what
:func:`reid.evaluation.evaluator.result_row` returns (R1/R5/R10/mAP/mINP/cmc) and an attack row also
holds ``linf_255``, the largest pixel change measured, in 1/255 units. The clean metrics sit at the top of
the dataset entry, as in ``tools/test.py``'s results.json, and the attacks are nested like its
``rerank`` entry. ``attack`` is what ``tools/attack.py`` runs: load, ``run_attacks``, table, results.json.

The gallery is never attacked. Clean and adversarial query features come from the same computation: the
same query batches through :func:`~reid.evaluation.attacks.embed` in float32 on every device, with TEST.FLIP
averaging, and the same evaluation call; the attack differentiates through that computation too. TEST.AMP
is ignored here, as bf16 noise would otherwise separate clean from attacked numbers (on CUDA, convolutions
may use TF32 where PyTorch's settings allow it, for both alike). So an eps-0 attack reproduces the clean
row exactly. (The clean row can differ slightly from ``tools/test.py``'s, which uses bf16 on CUDA.)

Adversarial images are snapped to the 8-bit grid (:func:`reid.evaluation.attacks.quantize_to_8bit`)
before they are embedded, drawn or saved: the reported numbers are those of images that exist as 8-bit
files, and the set written with ``save_adv`` gives exactly these numbers when read back. Random draws
come from one generator per query image, seeded from (TEST.ATTACK.SEED, its index in the query list), so
the adversarial set does not depend on TEST.IMS_PER_BATCH. Distances follow TEST.METRIC and TEST.FEAT_NORM;
re-ranking (TEST.RERANK) is not evaluated here.
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
    image_generators,
    metric_attack,
    quantize_to_8bit,
    true_match_mask,
)
from reid.evaluation.evaluator import extract_features, result_row
from reid.evaluation.rank import RankResult, evaluate_features
from reid.utils.errors import ConfigError, ReIDError

logger = logging.getLogger("reid.engine")

# Version of how an attacked number is computed, stored with the study's results so that numbers of
# different versions are never mixed in one table. 1: before versions were stored (bf16 features on CUDA,
# real-valued adversarial images, one random stream per batch); 2: float32 features, 8-bit adversarial
# images, random draws per image. Raise it whenever a change to the attacks changes their numbers.
ATTACK_PROTOCOL = 2
TRIPTYCH_GAP = 4  # white pixels between the clean, adversarial and difference panels
DEFAULT_TRIPTYCHS = 4  # queries per attack setting drawn as clean/adversarial/difference triptychs


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
    bad_eps = [e for e in eps_list if not 0 <= e <= 255 or e != int(e)]
    if bad_eps or not eps_list:
        # Attacked images are rounded to 8 bits inside the eps ball: eps 0.5 would silently be no attack.
        raise ConfigError(f"Attack budgets must be given as whole numbers of 1/255 levels between 0 and 255; "
                          f"got {list(eps_list)}.")
    return [AttackRun(a, o, float(e)) for a in dict.fromkeys(attacks) for o in dict.fromkeys(objectives)
            for e in dict.fromkeys(eps_list)]


def run_attacks(cfg: CfgNode, model: nn.Module, datasets: Sequence[str], attacks: Sequence[str],
                eps_list: Sequence[float], objectives: Sequence[str], steps: int, out_dir: str | Path,
                device: torch.device | str | None = None, seed: int | None = None, vis: int = 0,
                save_adv: str | Path | None = None) -> dict[str, dict]:
    """Attack the queries of each dataset with every (attack, objective, eps) and evaluate them.

    ``eps_list`` is in 1/255 units. ``seed`` (default TEST.ATTACK.SEED) seeds one generator per query image
    (with its index), so a set depends neither on which other sets the call computes nor on the batch
    size. ``vis`` saves the first ``vis`` queries of each set as clean/adversarial/difference triptychs
    under ``out_dir/attacks/<dataset>/``; ``save_adv`` writes each attacked query set as a dataset tree
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
        gallery = Subset(data.loader.dataset, range(data.num_query, len(data.loader.dataset)))
        # float32 like the query features below (the gallery is shared by the clean and attacked rows)
        gf, g_pids, g_camids, _ = extract_features(model, _loader(cfg, gallery), device, cfg.TEST.FLIP,
                                                   desc=f"{name} gallery", amp=False)
        queries = _attack_queries(cfg, model, data, gf, g_pids, g_camids, runs, steps, device, seed, vis,
                                  Path(out_dir) / "attacks" / name, save_adv)

        def evaluate(query_features: torch.Tensor) -> RankResult:
            return evaluate_features(query_features, gf, queries.pids, g_pids, queries.camids, g_camids,
                                     metric=cfg.TEST.METRIC, normalize=cfg.TEST.FEAT_NORM, max_rank=cfg.TEST.MAX_RANK)

        table[name] = {**result_row(evaluate(queries.clean)), "attacks": {}}
        for run in runs:
            table[name]["attacks"][run.key] = {**result_row(evaluate(queries.adversarial[run])),
                                               "linf_255": round(queries.linf[run] * 255, 4)}
    return table


@dataclass
class _AttackedQueries:
    """The query set of one dataset, clean and under each attack run."""

    clean: torch.Tensor  # (Nq, D) features of the clean queries
    pids: torch.Tensor
    camids: torch.Tensor
    adversarial: dict[AttackRun, torch.Tensor]  # (Nq, D) features per run
    linf: dict[AttackRun, float]  # largest pixel change per run, in [0, 1] units


def _loader(cfg: CfgNode, subset: Subset) -> DataLoader:
    return DataLoader(subset, batch_size=cfg.TEST.IMS_PER_BATCH, num_workers=cfg.DATALOADER.NUM_WORKERS)


def _attack_queries(cfg: CfgNode, model: nn.Module, data: TestData, gf: torch.Tensor, g_pids: torch.Tensor,
                    g_camids: torch.Tensor, runs: list[AttackRun], steps: int, device: torch.device, seed: int,
                    vis: int, vis_dir: Path, save_adv: str | Path | None) -> _AttackedQueries:
    """Clean and adversarial query features of every run (and the largest perturbation measured), batch by
    batch, so that each query image is read once for all runs."""
    metric, normalize, flip = cfg.TEST.METRIC, cfg.TEST.FEAT_NORM, cfg.TEST.FLIP
    num_query = data.num_query
    clean = torch.empty(num_query, gf.shape[1], device=gf.device)
    pids = torch.empty(num_query, dtype=torch.long)
    camids = torch.empty(num_query, dtype=torch.long)
    adv_features = {run: torch.empty_like(clean) for run in runs}
    linf = {run: 0.0 for run in runs}
    query_dirs = {run: prepare_adversarial_tree(data.dataset, cfg.DATASETS.ROOT, Path(save_adv) / run.slug)
                  for run in runs} if save_adv is not None else {}
    loader = _loader(cfg, Subset(data.loader.dataset, range(num_query)))
    start, done = time.perf_counter(), 0
    for batch in loader:
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
            # What is evaluated is what an 8-bit file (--save-adv) holds, not a float image no file can store.
            adv = quantize_to_8bit(adv, images, eps)
            with torch.no_grad():
                adv_features[run][rows] = embed(model, adv, flip)
            linf[run] = max(linf[run], float((adv - images).abs().max()))
            for i in range(len(images)):
                if int(index[i]) < vis:
                    save_triptych(images[i], adv[i], eps, vis_dir / f"{run.slug}_{Path(batch['paths'][i]).stem}.png")
                if run in query_dirs:
                    write_image(adv[i], query_dirs[run] / f"{Path(batch['paths'][i]).stem}.png")
        done += len(images)
        logger.info(f"attacked {done}/{num_query} queries x {len(runs)} settings "
                    f"({done * len(runs) / max(time.perf_counter() - start, 1e-9):.1f} attacked images/s)")
    return _AttackedQueries(clean, pids, camids, adv_features, linf)


def prepare_adversarial_tree(dataset: ReIDDataset, root: str | Path, out_root: Path) -> Path:
    """Mirror a Market-style dataset under ``out_root`` with an empty ``query/`` folder to fill, and return it.

    The other subset folders are symbolic links to the originals (copies where links are not allowed),
    so ``DATASETS.ROOT out_root`` evaluates the attacked queries against the clean gallery with any tool.
    Adversarial queries are lossless PNGs at INPUT.SIZE_TEST with the original file stems (a JPEG would
    partly undo the perturbation); they hold exactly the 8-bit images that were evaluated.
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
           objectives: Sequence[str], steps: int, vis: int = DEFAULT_TRIPTYCHS,
           save_adv: str | Path | None = None) -> dict:
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
    settings = {"protocol": ATTACK_PROTOCOL, "steps": steps, "seed": cfg.TEST.ATTACK.SEED, "metric": cfg.TEST.METRIC,
                "feat_norm": cfg.TEST.FEAT_NORM, "flip": cfg.TEST.FLIP, "eps_unit": "1/255",
                "precision": "float32", "images": "8-bit (quantised to the 1/255 grid inside the eps ball)",
                "step_size": f"fgsm: eps; ifgsm, mifgsm: eps/steps; pgd: {PGD_ALPHA_FACTOR}*eps/steps"}
    logger.info(f"Wrote {write_results(out, {'results': table, 'weights': str(weights), 'attack': settings})}")
    return table
