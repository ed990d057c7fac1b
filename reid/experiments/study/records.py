"""A cell's record (``study_record.json``): its numbers and what produced them, as structured fields.

```json
{"arm": "lfm", "seed": 0, "source": "synthetic_market", "config": {...the cell's final config...},
 "clean": {"synthetic_market": {"R1": 0.9, "mAP": 0.8, "mINP": 0.5}, "synthetic_duke": {...}},
 "attacks": [{"attack": "fgsm", "objective": "feature", "eps": 8.0, "steps": 1, "protocol": 2,
              "R1": 0.7, "mAP": 0.6, "mINP": 0.3}, ...]}
```

Each attack entry stores the step count and the attack protocol
(:data:`reid.evaluation.robustness.ATTACK_PROTOCOL`) it was computed with, so entries of another step
count or an earlier version of the attack code are recomputed, never mixed in. Records written by earlier
versions of the study keyed attack entries by strings such as ``"fgsm/feature/eps8"``; they are read once
(:func:`_legacy_run`) and written back in this format when the record is next updated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reid.evaluation.attacks import AttackRun
from reid.evaluation.robustness import ATTACK_PROTOCOL
from reid.utils.errors import ReIDError
from reid.utils.fsio import atomic_write_text

RECORD_NAME = "study_record.json"
METRICS = ("R1", "mAP", "mINP")


@dataclass
class AttackEntry:
    """The metrics of one attacked query set and how they were computed."""

    run: AttackRun
    metrics: dict[str, float]
    steps: int | None  # None: not recorded (an early record), so never current
    protocol: int | None

    def is_current(self, steps: int) -> bool:
        """Whether this is what the study now computes: same step count, same attack code."""
        return self.steps == steps and self.protocol == ATTACK_PROTOCOL

    def to_json(self) -> dict[str, Any]:
        return {"attack": self.run.attack, "objective": self.run.objective, "eps": self.run.eps,
                "steps": self.steps, "protocol": self.protocol, **self.metrics}


@dataclass
class CellRecord:
    """What one finished (arm, seed) cell measured."""

    arm: str
    seed: int
    source: str  # the trained-on domain, whose queries are attacked
    config: dict | None  # the cell's final config; None in records written before configs were stored
    clean: dict[str, dict[str, float]]  # dataset -> metrics
    attacks: dict[AttackRun, AttackEntry] = field(default_factory=dict)

    def missing(self, requested: dict[AttackRun, int]) -> list[AttackRun]:
        """The requested runs this record lacks, or holds from another step count or attack protocol."""
        return [run for run, steps in requested.items()
                if run not in self.attacks or not self.attacks[run].is_current(steps)]

    def add(self, run: AttackRun, row: dict[str, float], steps: int) -> None:
        self.attacks[run] = AttackEntry(run, {m: row[m] for m in METRICS}, steps, ATTACK_PROTOCOL)

    def to_json(self) -> dict[str, Any]:
        return {"arm": self.arm, "seed": self.seed, "source": self.source, "config": self.config,
                "clean": self.clean, "attacks": [entry.to_json() for entry in self.attacks.values()]}


def missing_runs(record: CellRecord | None, requested: dict[AttackRun, int]) -> list[AttackRun]:
    """The requested runs a record (or no record yet) lacks."""
    return list(requested) if record is None else record.missing(requested)


def read_record(path: Path) -> CellRecord:
    """The record at ``path``; a ReIDError saying how to rebuild it when it cannot be read."""
    rebuild = "delete it, and the next run rebuilds it from the cell's last.pth."
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReIDError(f"Cannot read the study record {path} ({exc}); {rebuild}") from exc
    if not isinstance(data, dict) or not {"clean", "attacks", "source"} <= set(data):
        raise ReIDError(f"{path} is not a study record; {rebuild}")
    try:
        entries = data["attacks"]
        if isinstance(entries, dict):  # an earlier version's record: entries keyed by strings
            entries = [{**row, **_legacy_run(key)} for key, row in entries.items()]
        attacks = {}
        for row in entries:
            run = AttackRun(str(row["attack"]), str(row["objective"]), float(row["eps"]))
            attacks[run] = AttackEntry(run, {m: row[m] for m in METRICS if m in row}, row.get("steps"),
                                       row.get("protocol"))
        return CellRecord(data.get("arm", ""), int(data.get("seed", -1)), data["source"], data.get("config"),
                          data["clean"], attacks)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReIDError(f"{path} is not a study record this version reads ({exc!r}); {rebuild}") from exc


def _legacy_run(key: str) -> dict[str, Any]:
    """The fields of an earlier version's entry key ``attack/objective/eps<E>``."""
    attack, objective, eps = key.split("/")
    return {"attack": attack, "objective": objective, "eps": float(eps.removeprefix("eps"))}


def write_record(path: Path, record: CellRecord) -> None:
    """Write atomically (temporary file + rename): a kill never leaves half a record."""
    atomic_write_text(path, json.dumps(record.to_json(), indent=2))
