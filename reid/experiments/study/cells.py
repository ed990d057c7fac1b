"""The grid's cells and what their folders already hold, checked against the current settings.

Resuming checks every existing cell against the current study file and command line before anything
trains. A cell trained with other settings is refused with a ConfigError (finished work is never
overwritten, nor silently reused); a half-trained cell resumes from its ``last.pth``; a finished cell keeps
its record. Records written before the config was stored are checked against the config inside their
``last.pth`` and upgraded; without a ``last.pth`` they are kept with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from yacs.config import CfgNode

from reid.config import changes_since_stored, config_to_dict, flatten_config
from reid.experiments.study.records import RECORD_NAME, CellRecord, read_record
from reid.experiments.study.spec import StudySpec, cell_config
from reid.modeling import summarize_checkpoint
from reid.utils.errors import ConfigError

logger = logging.getLogger("reid.study")

# Config keys that cannot change a cell's numbers: where the cell and its data live (a study folder or
# the datasets may be moved) and how often it logs.
RESULT_NEUTRAL_KEYS = frozenset({"OUTPUT_DIR", "DATASETS.ROOT", "SOLVER.LOG_PERIOD"})


@dataclass
class Cell:
    """One (arm, seed) of the grid, with what its folder already holds (checked against ``cfg``)."""

    arm: str
    seed: int
    cfg: CfgNode
    record: CellRecord | None = None  # the finished cell's record
    upgraded: bool = False  # an old record that gained its config (from last.pth), to be written back
    epochs_done: int = 0  # completed epochs in last.pth

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.OUTPUT_DIR)

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pth"


def config_differences(stored: dict, current: dict) -> list[str]:
    """``KEY: stored -> current`` for each result-affecting key the two configs both hold but disagree on.

    Keys only one side holds come from another version of the code (a new option), not from the user's
    settings, so they are not counted, unless the new option's default changed what the code did before it
    existed (:func:`reid.config.changes_since_stored`).
    """
    old, new = flatten_config(stored), flatten_config(current)
    changed = [f"{key}: {old[key]!r} -> {new[key]!r}" for key in new
               if key in old and key not in RESULT_NEUTRAL_KEYS and old[key] != new[key]]
    return changed + [f"{key}: {before!r} (before {key} existed) -> {now!r}"
                      for key, before, now in changes_since_stored(stored, current)]


def inspect_cell(cell: Cell) -> list[str]:
    """Load what the cell's folder holds into ``cell``; the config differences that forbid reusing it."""
    record_path = cell.run_dir / RECORD_NAME
    current = config_to_dict(cell.cfg)
    if record_path.is_file():
        cell.record = read_record(record_path)
        stored = cell.record.config
        if stored is None:  # written before records stored their config: the checkpoint still has it
            stored = summarize_checkpoint(cell.last).config if cell.last.is_file() else None
            if stored is None:
                logger.warning(f"  {record_path} does not say which settings produced it, and no last.pth with "
                               "them is left; it is assumed to match this study. Delete the cell folder to "
                               "retrain it.")
                return []
            if not config_differences(stored, current):
                cell.record.config, cell.upgraded = stored, True
        return config_differences(stored, current)
    if cell.last.is_file():  # half-trained, or trained but stopped before its record was written
        summary = summarize_checkpoint(cell.last)
        cell.epochs_done = summary.epoch
        return config_differences(summary.config or {}, current)
    return []


def plan_cells(spec: StudySpec, extra_opts: Sequence[str], only_finished: bool = False) -> list[Cell]:
    """Every cell's config and folder state; refuses, before anything runs, cells made with other settings."""
    out = Path(spec.output_dir)
    cells, refused = [], []
    for seed in spec.seeds:
        for arm in spec.arms:
            cell = Cell(arm, seed, cell_config(spec, arm, seed, out, extra_opts))
            if only_finished and not (cell.run_dir / RECORD_NAME).is_file():
                continue
            differences = inspect_cell(cell)
            if differences:
                refused.append((cell, differences))
            cells.append(cell)
    if refused:
        cell, differences = refused[0]
        state = "finished cell" if cell.record else "unfinished cell (no record yet; last.pth at epoch " \
            f"{cell.epochs_done})"
        others = f" {len(refused) - 1} other cell(s) differ as well." if len(refused) > 1 else ""
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise ConfigError(
            f"The {state} {cell.run_dir} was made with other settings than the study file and command line "
            f"now give ({shown}; stored -> now).{others} Its results cannot be reused for the new settings, and "
            "finished work is never overwritten: run the new settings in another folder (--output-dir, or "
            f"output_dir in the study file), or delete {cell.run_dir} to redo this cell."
        )
    return cells
