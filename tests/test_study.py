"""The study grid: a tiny study end to end, resume without recomputation, and the aggregation maths."""

from __future__ import annotations

import json

import pytest
import yaml

from reid.engine.study import aggregate, load_study, run_study
from reid.utils.errors import ConfigError
from tests.conftest import tiny_train_opts


def write_study(tmp_path, root, **changes):
    study = {
        "name": "tiny", "base_config": "bot_synthetic.yml", "output_dir": str(tmp_path / "study"),
        "seeds": [0, 1], "baseline": "none",
        "overrides": tiny_train_opts(root, tmp_path / "unused", "SOLVER.MAX_EPOCHS", "1",
                                     "INPUT.RE_PROB", "0.0"),
        "arms": {"none": [], "lfm": ["MODEL.REGULARIZER.NAME", "lfm"]},
        "attacks": ["fgsm"], "objectives": ["feature"], "eps": [8], "steps": 1,
    }
    study.update(changes)
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.slow
def test_tiny_study_runs_and_resumes(synthetic_root, tmp_path):
    spec = load_study(str(write_study(tmp_path, synthetic_root)))
    out = run_study(spec)
    for name in ("study.md", "study_long.csv", "study_summary.csv", "study_attacks.png", "study_domains.png"):
        assert (out / name).is_file(), name
    table = (out / "study.md").read_text()
    assert "| lfm |" in table and "fgsm/feature/eps8" in table and "cross synthetic_duke" in table
    record = json.loads((out / "lfm" / "seed1" / "study_record.json").read_text())
    assert set(record["clean"]) == {"synthetic_market", "synthetic_duke"}
    assert "fgsm/feature/eps8" in record["attacks"]

    # Resume: completed cells are not recomputed; a removed record is rebuilt from the trained weights.
    done = out / "none" / "seed0" / "study_record.json"
    stamp = done.stat().st_mtime_ns
    redo = out / "lfm" / "seed0" / "study_record.json"
    redo.unlink()
    run_study(spec)
    assert done.stat().st_mtime_ns == stamp
    assert redo.is_file()


def test_bad_study_files(tmp_path, synthetic_root):
    with pytest.raises(ConfigError, match="unknown keys"):
        load_study(str(write_study(tmp_path, synthetic_root, epochs=3)))
    with pytest.raises(ConfigError, match="MODEL.REGULARIZER.NAME"):
        load_study(str(write_study(tmp_path, synthetic_root, arms={"none": [], "x": ["MODEL.REGULARIZER.NAME", "lf"]})))
    with pytest.raises(ConfigError, match="presets: market, synthetic"):
        load_study("nonexistent")


def test_shipped_presets_load():
    assert load_study("synthetic").seeds == [0, 1, 2]
    assert "lfm" in load_study("market").arms


def test_aggregate_mean_std_and_paired_delta():
    rows = [{"arm": arm, "seed": seed, "condition": "same-domain", "metric": "mAP", "value": value}
            for arm, seed, value in [("none", 0, 0.5), ("none", 1, 0.7), ("lfm", 0, 0.6), ("lfm", 1, 0.9)]]
    by_arm = {s["arm"]: s for s in aggregate(rows, "none")}
    assert by_arm["lfm"]["mean"] == pytest.approx(0.75)
    assert by_arm["lfm"]["std"] == pytest.approx(0.212132, abs=1e-6)  # sample std of 0.6, 0.9
    assert by_arm["lfm"]["delta_vs_baseline"] == pytest.approx(0.15)  # (0.1 + 0.2) / 2, paired by seed
    assert by_arm["lfm"]["delta_std"] == pytest.approx(0.070711, abs=1e-6)
    assert by_arm["none"]["delta_vs_baseline"] == 0.0
