"""The attack runner (``tools/attack.py``): attack the queries of every DATASETS.TEST entry with a trained
model, log a table, write ``OUTPUT_DIR/results.json``, clean/adversarial/difference triptychs and, on
request, each adversarial query set as a dataset tree that every tool can evaluate.

The attacks, their evaluation and the triptych drawing are the library's (:mod:`reid.evaluation.attacks`,
:func:`reid.evaluation.robustness.evaluate_attacks`); this module decides what is drawn and saved.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from yacs.config import CfgNode

from reid.data import check_datasets
from reid.data.query_sets import can_replace_queries, mirror_with_empty_queries, write_image
from reid.engine.run import RESULTS_UNITS, lock_output, setup_run, write_results
from reid.evaluation.attacks import PGD_ALPHA_FACTOR, AttackRun, plan_runs
from reid.evaluation.rank import RankResult
from reid.evaluation.robustness import ATTACK_PROTOCOL, AttackedBatch, evaluate_attacks, format_attack_table
from reid.evaluation.triptych import ap_of, draw_attack_triptych
from reid.modeling import load_model
from reid.utils.errors import ConfigError, ReIDError

logger = logging.getLogger("reid.experiments")

DEFAULT_TRIPTYCHS = 4  # queries per attack setting drawn as clean/adversarial/difference triptychs


class AttackOutputs:
    """What the runner keeps of each attacked batch: labelled triptychs (clean | adversarial | difference,
    with the query's AP before and after) of the first ``vis`` queries under ``vis_dir/<dataset>/``, and, with
    ``save_adv``, every adversarial query under ``save_adv/<run>/<dataset folder>/query/`` (lossless PNGs at
    INPUT.SIZE_TEST with the original stems)."""

    def __init__(self, root: str | Path, vis: int, vis_dir: Path, save_adv: str | Path | None) -> None:
        self.root, self.vis, self.vis_dir = root, vis, vis_dir
        self.save_adv = Path(save_adv) if save_adv is not None else None
        self._query_dirs: dict[tuple[str, AttackRun], Path] = {}
        # (dataset, run) -> [(query index, file stem, clean, adversarial)]: drawn once the APs are known
        self._pending: dict[tuple[str, AttackRun], list[tuple[int, str, torch.Tensor, torch.Tensor]]] = {}

    def on_batch(self, batch: AttackedBatch) -> None:
        for i, path in enumerate(batch.paths):
            stem, index = Path(path).stem, int(batch.index[i])
            if index < self.vis:
                self._pending.setdefault((batch.dataset.name, batch.run), []).append(
                    (index, stem, batch.clean[i].cpu(), batch.adversarial[i].cpu()))
            if self.save_adv is not None:
                write_image(batch.adversarial[i], self._query_dir(batch) / f"{stem}.png")

    def on_result(self, dataset: str, run: AttackRun, clean: RankResult, attacked: RankResult) -> None:
        for index, stem, clean_image, adversarial in self._pending.pop((dataset, run), []):
            path = self.vis_dir / dataset / f"{run.slug}_{stem}.png"
            draw_attack_triptych(clean_image, adversarial, run.eps / 255, path, attack=run.attack,
                                 objective=run.objective, ap_before=ap_of(clean, index),
                                 ap_after=ap_of(attacked, index))

    def _query_dir(self, batch: AttackedBatch) -> Path:
        key = (batch.dataset.name, batch.run)
        if key not in self._query_dirs:
            self._query_dirs[key] = mirror_with_empty_queries(batch.dataset, self.root,
                                                              self.save_adv / batch.run.slug)
        return self._query_dirs[key]


def run_attacks(cfg: CfgNode, model: torch.nn.Module, datasets: Sequence[str], attacks: Sequence[str],
                eps_list: Sequence[float], objectives: Sequence[str], steps: int, out_dir: str | Path,
                device: torch.device | str | None = None, seed: int | None = None, vis: int = 0,
                save_adv: str | Path | None = None) -> dict[str, dict]:
    """Every (attack, objective, eps) on the queries of each dataset, with triptychs of the first ``vis``
    queries under ``out_dir/attacks/<dataset>/`` and the adversarial sets under ``save_adv``."""
    runs = plan_runs(attacks, objectives, eps_list, steps)
    if save_adv is not None:
        unsupported = [name for name in datasets if not can_replace_queries(name)]
        if unsupported:
            raise ReIDError(
                f"--save-adv writes a query/ folder next to the gallery folder, which the layout of "
                f"{', '.join(unsupported)} does not have (its queries are listed in files). Leave those datasets "
                "out of DATASETS.TEST or drop --save-adv.")
    outputs = AttackOutputs(cfg.DATASETS.ROOT, vis, Path(out_dir) / "attacks", save_adv)
    return evaluate_attacks(cfg, model, datasets, runs, steps, device, seed, on_batch=outputs.on_batch,
                            on_result=outputs.on_result)


def results_document(table: dict[str, dict]) -> dict:
    """The table as JSON: each dataset's clean row, and its attacks as a list of structured records."""
    return {name: {**{k: v for k, v in entry.items() if k != "attacks"},
                   "attacks": [{"attack": run.attack, "objective": run.objective, "eps": run.eps, **row}
                               for run, row in entry["attacks"].items()]}
            for name, entry in table.items()}


def attack(cfg: CfgNode, weights: str | Path, attacks: Sequence[str], eps_list: Sequence[float],
           objectives: Sequence[str], steps: int, vis: int = DEFAULT_TRIPTYCHS,
           save_adv: str | Path | None = None) -> dict:
    """What ``tools/attack.py`` does: attack the queries of every DATASETS.TEST entry with ``weights``, log a
    table and write ``OUTPUT_DIR/results.json`` (with the settings under ``"attack"``)."""
    plan_runs(attacks, objectives, eps_list, steps)  # fail on bad settings before loading anything
    if vis < 0:
        raise ConfigError(f"--vis takes a number of queries (0 or more), got {vis}.")
    if save_adv is not None:
        Path(save_adv).mkdir(parents=True, exist_ok=True)  # an unwritable folder fails now, not after the attack
    with lock_output(cfg.OUTPUT_DIR):
        device = setup_run(cfg, config_name="attack_config.yaml")
        check_datasets(cfg.DATASETS.TEST, cfg.DATASETS.ROOT)
        model, cfg = load_model(weights, cfg, device=device)
        out = Path(cfg.OUTPUT_DIR)
        table = run_attacks(cfg, model, cfg.DATASETS.TEST, attacks, eps_list, objectives, steps, out, device,
                            vis=vis, save_adv=save_adv)
        write_attack_results(cfg, out, weights, steps, table)
    return table


def write_attack_results(cfg: CfgNode, out: Path, weights: str | Path, steps: int, table: dict[str, dict]) -> None:
    """Log the table and write ``results.json`` with the settings the numbers were computed with."""
    logger.info(f"White-box attacks on the queries of {weights} (eps in 1/255 units):\n" + format_attack_table(table))
    settings = {"protocol": ATTACK_PROTOCOL, "steps": steps, "seed": cfg.TEST.ATTACK.SEED, "metric": cfg.TEST.METRIC,
                "feat_norm": cfg.TEST.FEAT_NORM, "flip": cfg.TEST.FLIP, "eps_unit": "1/255",
                "precision": "float32", "images": "8-bit (quantised to the 1/255 grid inside the eps ball)",
                "step_size": f"fgsm: eps; ifgsm, mifgsm: eps/steps; pgd: {PGD_ALPHA_FACTOR}*eps/steps"}
    document = {"results": results_document(table), "weights": str(weights), "attack": settings,
                "units": f"{RESULTS_UNITS}; eps in 1/255"}
    logger.info(f"Wrote {write_results(out, document)}")
