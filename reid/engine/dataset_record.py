"""What a run read: a fingerprint of every subset, recorded when it starts and checked whenever it reads again.

The record (image, identity and camera counts and hashes of the listing: relative paths with labels, sizes,
modification times; :func:`reid.data.datasets.fingerprint_dataset`) is written to ``OUTPUT_DIR/datasets.json``
and into every checkpoint (this hook's state), so a resumed run, each evaluation and ``tools/test.py`` of the
checkpoint compare the data they read with the data the run started on, and stop naming what changed
(``DATASETS.ALLOW_CHANGES True`` makes it a warning).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from yacs.config import CfgNode

from reid.data.datasets import ReIDDataset, build_dataset, check_fingerprints, dataset_key, fingerprint_dataset
from reid.engine.trainer import HookBase
from reid.utils import comm
from reid.utils.fsio import atomic_write_text

RECORD_NAME = "datasets.json"
TEST_SUBSETS = ("query", "gallery")


class DatasetRecord(HookBase):
    """Fingerprints of the training subsets of DATASETS.TRAIN and the query/gallery of DATASETS.TEST."""

    def __init__(self, cfg: CfgNode, parsed: Mapping[str, ReIDDataset]) -> None:
        self.allow_changes = cfg.DATASETS.ALLOW_CHANGES
        self.datasets: dict[str, ReIDDataset] = {}
        self.record: dict[str, dict] = {}
        for name in dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]):
            subsets = (["train"] if name in cfg.DATASETS.TRAIN else []) + (
                list(TEST_SUBSETS) if name in cfg.DATASETS.TEST else [])
            dataset = parsed.get(dataset_key(name))
            if dataset is None:
                dataset = build_dataset(name, cfg.DATASETS.ROOT, verbose=False, needed=subsets)
            self.datasets[name] = dataset
            self.record[name] = fingerprint_dataset(dataset, subsets)

    def write(self, output_dir: str | Path) -> None:
        if comm.is_main_process():
            atomic_write_text(Path(output_dir) / RECORD_NAME, json.dumps(self.record, indent=2))

    def test_sets(self) -> dict[str, dict]:
        """The query/gallery fingerprints of each test dataset, for the evaluations to check against."""
        return {name: {subset: fp for subset, fp in subsets.items() if subset in TEST_SUBSETS}
                for name, subsets in self.record.items()}

    def state_dict(self) -> dict:
        return {"datasets": self.record}

    def load_state_dict(self, state: Mapping) -> None:
        """On --resume: the data must be what the run started on; the original record is kept."""
        recorded = state.get("datasets")
        if not isinstance(recorded, dict):  # a checkpoint of an earlier version: nothing to compare with
            return
        for name, subsets in recorded.items():
            if name in self.datasets:
                check_fingerprints(self.datasets[name], subsets, allow_changes=self.allow_changes,
                                   recorded_in="the run started (recorded in its checkpoint)")
        self.record.update(recorded)
