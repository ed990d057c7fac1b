"""The study grid: a tiny study end to end, resume without recomputation (finished and half-trained cells),
refusal of cells made with other settings, attack entries added to finished cells, study-file validation
(configs, source domain, models), and the aggregation maths."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

import reid.experiments.study.runner as study_runner
from reid.config import load_config
from reid.engine.hooks import Checkpointer
from reid.evaluation.attacks import AttackRun
from reid.evaluation.robustness import ATTACK_PROTOCOL
from reid.experiments.study import (
    RECORD_NAME,
    STUDY_TRIPTYCHS,
    CellRecord,
    aggregate,
    load_study,
    missing_runs,
    read_record,
    requested_runs,
    run_study,
    source_domain,
    summarize_study,
)
from reid.utils.checkpoint import load_checkpoint
from reid.utils.errors import ConfigError
from tests.conftest import tiny_train_opts

# The source domain is listed second: the study must find it in DATASETS.TRAIN, not take the first entry.
TEST_SETS = ("DATASETS.TEST", "('synthetic_duke', 'synthetic_market')")


def study_overrides(root, tmp_path, *extra):
    """The tiny training of tests.conftest at 32x16 (the study's logic does not depend on the image size)."""
    return tiny_train_opts(root, tmp_path / "unused", "SOLVER.MAX_EPOCHS", "1", "INPUT.RE_PROB", "0.0", *TEST_SETS,
                           "INPUT.SIZE_TRAIN", "(32, 16)", "INPUT.SIZE_TEST", "(32, 16)", *extra)


def write_study(tmp_path, root, **changes):
    study = {
        "name": "tiny", "base_config": "bot_synthetic.yml", "output_dir": str(tmp_path / "study"),
        "seeds": [0, 1], "baseline": "none",
        "overrides": study_overrides(root, tmp_path),
        "arms": {"none": [], "lfm": ["MODEL.REGULARIZER.NAME", "lfm"]},
        "attacks": ["fgsm"], "objectives": ["feature"], "eps": [8], "steps": 1,
    }
    study.update(changes)
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(study))
    return path


def one_cell_study(tmp_path, root, **changes):
    """The study of ``finished_cell``, optionally changed."""
    return load_study(str(write_study(tmp_path, root, **{"seeds": [0], "arms": {"none": []}, **changes})))


def attack_keys(record: dict) -> set[tuple[str, str, float]]:
    """The (attack, objective, eps) of a record's structured attack entries."""
    return {(row["attack"], row["objective"], row["eps"]) for row in record["attacks"]}


def attack_entry(record: dict, attack: str, objective: str, eps: float) -> dict:
    return next(row for row in record["attacks"] if (row["attack"], row["objective"], row["eps"]) == (
        attack, objective, eps))


@pytest.fixture(scope="module")
def finished_cell(synthetic_root, tmp_path_factory):
    """A one-cell study (arm none, seed 0) trained and attacked once; tests work on copies of it."""
    folder = tmp_path_factory.mktemp("finished")
    return run_study(one_cell_study(folder, synthetic_root))


@pytest.fixture
def study_copy(finished_cell, tmp_path, monkeypatch):
    """A copy of the finished study in tmp_path/study, where any training fails the test."""
    def no_training(*args, **kwargs):
        raise AssertionError("the study retrained a cell")

    monkeypatch.setattr(study_runner, "train", no_training)
    return shutil.copytree(finished_cell, tmp_path / "study")


def test_finished_cell_record_source_and_triptychs(finished_cell):
    cell = finished_cell / "none" / "seed0"
    record = json.loads((cell / RECORD_NAME).read_text())
    assert record["source"] == "synthetic_market"  # the trained-on domain, though listed second in DATASETS.TEST
    assert set(record["clean"]) == {"synthetic_market", "synthetic_duke"}
    triptychs = list((cell / "attacks" / "synthetic_market").glob("fgsm_feature_eps8_*.png"))
    assert len(triptychs) == STUDY_TRIPTYCHS


@pytest.mark.slow
def test_tiny_study_runs_and_resumes(synthetic_root, tmp_path, finished_cell):
    spec = load_study(str(write_study(tmp_path, synthetic_root)))
    # The one-cell study's cell is this study's (none, seed 0), made with the same settings: it is reused as it
    # is (three cells train here, not four).
    shutil.copytree(finished_cell / "none", tmp_path / "study" / "none")
    out = run_study(spec)
    for name in ("study.md", "study_long.csv", "study_summary.csv", "study_attacks.png", "study_domains.png"):
        assert (out / name).is_file(), name
    table = (out / "study.md").read_text()
    assert "| lfm |" in table and "fgsm/feature/eps8" in table and "cross synthetic_duke" in table
    record = json.loads((out / "lfm" / "seed1" / "study_record.json").read_text())
    assert set(record["clean"]) == {"synthetic_market", "synthetic_duke"}
    assert attack_keys(record) == {("fgsm", "feature", 8.0)}
    assert record["config"]["MODEL"]["REGULARIZER"]["NAME"] == "lfm" and record["config"]["SEED"] == 1
    # The CSV files hold the attack as fields, not as a string to parse back.
    long_csv = (out / "study_long.csv").read_text().splitlines()
    assert long_csv[0] == "arm,seed,dataset,domain,attack,objective,eps,metric,value"
    assert any(line.startswith("lfm,1,synthetic_market,same,fgsm,feature,8.0,mAP,") for line in long_csv)

    # Resume: completed cells are not recomputed; a removed record is rebuilt from the trained weights.
    done = out / "none" / "seed0" / "study_record.json"
    stamp = done.stat().st_mtime_ns
    redo = out / "lfm" / "seed0" / "study_record.json"
    redo.unlink()
    run_study(spec)
    assert done.stat().st_mtime_ns == stamp
    assert redo.is_file()


def test_changed_training_setting_is_refused(study_copy, synthetic_root, tmp_path):
    cell = study_copy / "none" / "seed0"
    stamps = {name: (cell / name).stat().st_mtime_ns for name in ("last.pth", "study_record.json")}
    spec = one_cell_study(tmp_path, synthetic_root)
    with pytest.raises(ConfigError, match=r"SOLVER\.MAX_EPOCHS: 1 -> 2") as info:
        run_study(spec, ["SOLVER.MAX_EPOCHS", "2"])
    assert "finished cell" in str(info.value) and str(cell) in str(info.value) and "--output-dir" in str(info.value)

    changed = one_cell_study(tmp_path, synthetic_root,
                             overrides=study_overrides(synthetic_root, tmp_path, "SOLVER.BASE_LR", "0.01"))
    with pytest.raises(ConfigError, match=r"SOLVER\.BASE_LR: 0\.001 -> 0\.01"):
        run_study(changed)
    with pytest.raises(ConfigError, match=r"SOLVER\.BASE_LR"):  # the tables would show the old numbers
        summarize_study(changed)

    # A cell whose record is gone resumes from last.pth only with the settings that trained it.
    (cell / "study_record.json").rename(tmp_path / "record.json")
    with pytest.raises(ConfigError, match=r"unfinished cell .*SOLVER\.MAX_EPOCHS: 1 -> 2"):
        run_study(spec, ["SOLVER.MAX_EPOCHS", "2"])
    (tmp_path / "record.json").rename(cell / "study_record.json")
    assert {name: (cell / name).stat().st_mtime_ns for name in stamps} == stamps


def test_new_attack_settings_reuse_the_trained_cell(study_copy, synthetic_root, tmp_path):
    cell = study_copy / "none" / "seed0"
    before = json.loads((cell / "study_record.json").read_text())
    weights_stamp = (cell / "last.pth").stat().st_mtime_ns

    run_study(one_cell_study(tmp_path, synthetic_root, eps=[4, 8]))  # training would fail the test
    after = json.loads((cell / "study_record.json").read_text())
    assert attack_keys(after) == {("fgsm", "feature", 4.0), ("fgsm", "feature", 8.0)}
    assert attack_entry(after, "fgsm", "feature", 8.0) == attack_entry(before, "fgsm", "feature", 8.0)
    assert after["clean"] == before["clean"]
    assert (cell / "last.pth").stat().st_mtime_ns == weights_stamp
    table = (study_copy / "study.md").read_text()
    assert "fgsm/feature/eps4" in table and "fgsm/feature/eps8" in table

    # Asking for less drops the column from the tables, not the result from the record.
    record_stamp = (cell / "study_record.json").stat().st_mtime_ns
    run_study(one_cell_study(tmp_path, synthetic_root, eps=[4]))
    assert (cell / "study_record.json").stat().st_mtime_ns == record_stamp
    assert "eps8" not in (study_copy / "study.md").read_text()
    assert ("fgsm", "feature", 8.0) in attack_keys(json.loads((cell / "study_record.json").read_text()))


def test_old_records_are_checked_against_their_checkpoint(study_copy, synthetic_root, tmp_path):
    path = study_copy / "none" / "seed0" / "study_record.json"
    old = json.loads(path.read_text())
    config = old.pop("config")
    # An earlier version's record: no config, no step counts, entries keyed by "attack/objective/eps<E>".
    old["attacks"] = {f"{row['attack']}/{row['objective']}/eps{row['eps']:g}": {
        k: v for k, v in row.items() if k not in ("attack", "objective", "eps", "steps")} for row in old["attacks"]}
    assert set(old["attacks"]) == {"fgsm/feature/eps8"}
    path.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"SOLVER\.MAX_EPOCHS: 1 -> 2"):
        run_study(one_cell_study(tmp_path, synthetic_root), ["SOLVER.MAX_EPOCHS", "2"])

    run_study(one_cell_study(tmp_path, synthetic_root))  # matches last.pth: upgraded in place, not retrained
    upgraded = json.loads(path.read_text())
    assert upgraded["config"]["SOLVER"] == config["SOLVER"]
    # Entries of an earlier attack version are recomputed from last.pth (not taken as today's numbers), and the
    # record is written back in today's structured format.
    assert attack_entry(upgraded, "fgsm", "feature", 8.0)["steps"] == 1
    assert attack_entry(upgraded, "fgsm", "feature", 8.0)["protocol"] == ATTACK_PROTOCOL


def test_half_trained_cell_resumes_from_its_last_checkpoint(synthetic_root, tmp_path, monkeypatch):
    spec = one_cell_study(tmp_path, synthetic_root, overrides=study_overrides(
        synthetic_root, tmp_path, "SOLVER.MAX_EPOCHS", "2", "DATASETS.TEST", "('synthetic_market',)"))
    cell = tmp_path / "study" / "none" / "seed0"
    save_checkpoint = Checkpointer.after_epoch

    def killed_after_the_first_epoch(self):
        save_checkpoint(self)
        if self.trainer.epoch == 0:
            raise KeyboardInterrupt  # the study is stopped once last.pth holds epoch 1 of 2

    with monkeypatch.context() as patch:
        patch.setattr(Checkpointer, "after_epoch", killed_after_the_first_epoch)
        with pytest.raises(KeyboardInterrupt):
            run_study(spec)
    assert load_checkpoint(cell / "last.pth")["epoch"] == 1 and not (cell / RECORD_NAME).exists()

    train, resumed = study_runner.train, []

    def spy(cfg, resume=False, **kwargs):
        resumed.append(resume)
        return train(cfg, resume=resume, **kwargs)

    monkeypatch.setattr(study_runner, "train", spy)
    run_study(spec)
    assert resumed == [True]  # continued from last.pth, not restarted
    assert load_checkpoint(cell / "last.pth")["epoch"] == 2
    record = json.loads((cell / RECORD_NAME).read_text())
    assert record["config"]["SOLVER"]["MAX_EPOCHS"] == 2 and attack_keys(record) == {("fgsm", "feature", 8.0)}


def test_bad_regularizer_settings_fail_before_anything_trains(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setattr(study_runner, "train", lambda *a, **k: pytest.fail("the study trained a cell"))
    bad_stage = ["MODEL.REGULARIZER.NAME", "lfm", "MODEL.REGULARIZER.STAGE", "nosuchlayer"]
    with pytest.raises(ConfigError, match=r"tiny\.yml, field 'arms', arm 'lfm': .*stage 'nosuchlayer'"):
        load_study(str(write_study(tmp_path, synthetic_root, arms={"none": [], "lfm": bad_stage})))
    # Set for every arm, the stage only matters to the arms that place a regulariser: those are named.
    with pytest.raises(ConfigError, match=r"arm 'dropblock': .*'nosuchlayer'"):
        load_study(str(write_study(
            tmp_path, synthetic_root, overrides=study_overrides(synthetic_root, tmp_path, *bad_stage[2:]),
            arms={"none": [], "dropblock": ["MODEL.REGULARIZER.NAME", "dropblock"]})))
    # Command-line overrides reach every cell as well: checked before the first cell trains.
    spec = load_study(str(write_study(tmp_path, synthetic_root, arms={"none": [], "lfm": bad_stage[:2]})))
    with pytest.raises(ConfigError, match=r"command-line overrides MODEL\.REGULARIZER\.STAGE nosuchlayer: .*stage"):
        run_study(spec, bad_stage[2:])
    assert not (tmp_path / "study").exists()


def test_source_domain_is_the_test_set_the_cells_train_on(synthetic_root, tmp_path):
    def cfg(*opts):
        return load_config("bot_synthetic.yml", list(opts))

    assert source_domain(cfg(*TEST_SETS)) == "synthetic_market"
    with pytest.raises(ConfigError, match=r"none of them is in DATASETS\.TRAIN \['synthetic_market'\]"):
        source_domain(cfg("DATASETS.TEST", "('synthetic_duke',)"))
    with pytest.raises(ConfigError, match=r"2 of them \(synthetic_market, synthetic_duke\)"):
        source_domain(cfg("DATASETS.TRAIN", "('synthetic_market', 'synthetic_duke')"))
    # Checked when the study file is loaded, before anything runs.
    with pytest.raises(ConfigError, match=r"tiny\.yml, field 'overrides': .*none of them"):
        load_study(str(write_study(tmp_path, synthetic_root, overrides=study_overrides(
            synthetic_root, tmp_path, "DATASETS.TEST", "('synthetic_duke',)"))))


def test_requested_and_missing_attack_entries():
    spec = load_study("synthetic")
    spec.attacks, spec.objectives, spec.eps, spec.steps = ["fgsm", "ifgsm"], ["feature"], [8.0], 3
    requested = requested_runs(spec)
    fgsm, ifgsm = AttackRun("fgsm", "feature", 8.0), AttackRun("ifgsm", "feature", 8.0)
    assert requested == {fgsm: 1, ifgsm: 3}  # FGSM is one step whatever the study's steps
    record = CellRecord("none", 0, "synthetic_market", None, {})
    record.add(fgsm, {"R1": 0.6, "mAP": 0.5, "mINP": 0.2}, steps=1)
    record.add(ifgsm, {"R1": 0.5, "mAP": 0.4, "mINP": 0.1}, steps=2)
    assert missing_runs(record, requested) == [ifgsm]  # computed with another step count
    assert missing_runs(None, requested) == [fgsm, ifgsm]
    record.attacks[fgsm].protocol = ATTACK_PROTOCOL - 1
    assert missing_runs(record, requested) == [fgsm, ifgsm]  # computed by an earlier version of the attacks


@pytest.mark.parametrize("changes, message", [
    ({"epochs": 3}, "unknown keys"),
    ({"seeds": []}, "field 'seeds': expected a non-empty list"),
    ({"seeds": 0}, "field 'seeds'"),
    ({"seeds": [0, "1"]}, "field 'seeds'"),
    ({"seeds": [0, 0]}, "lists a seed twice"),
    ({"seeds": [-1]}, "field 'seeds'"),
    ({"attacks": ["cw"]}, "field 'attacks'.*fgsm, ifgsm, mifgsm, pgd"),
    ({"objectives": "feature"}, "field 'objectives'"),
    ({"eps": [0, 8]}, "field 'eps'"),
    ({"eps": ["8"]}, "field 'eps'"),
    ({"steps": 0}, "field 'steps'"),
    ({"steps": 2.5}, "field 'steps'"),
    ({"name": None}, "field 'name'"),
    ({"baseline": "nothing"}, "field 'baseline'.*'nothing'"),
    ({"arms": []}, "field 'arms'"),
    ({"arms": {"none": [], False: []}}, "arm name False"),
    ({"arms": {"none": [], "x": ["MODEL.REGULARIZER.NAME"]}}, "field 'arms', arm 'x'.*KEY VALUE pairs"),
    ({"overrides": {"SOLVER.MAX_EPOCHS": 1}}, "field 'overrides'"),
    ({"base_config": "nonexistent.yml"}, "field 'base_config'.*not found"),
])
def test_bad_study_files(tmp_path, synthetic_root, changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_study(str(write_study(tmp_path, synthetic_root, **changes)))
    assert "tiny.yml" in str(info.value) or "unknown keys" in message


def test_bad_study_file_contents(tmp_path, synthetic_root):
    with pytest.raises(ConfigError, match="arm 'x'.*MODEL.REGULARIZER.NAME") as info:
        load_study(str(write_study(tmp_path, synthetic_root, arms={"none": [], "x": ["MODEL.REGULARIZER.NAME", "lf"]})))
    with pytest.raises(ConfigError, match=r"field 'arms', arm 'x': Unknown config key MODEL\.NOPE") as info:
        load_study(str(write_study(tmp_path, synthetic_root, arms={"none": [], "x": ["MODEL.NOPE", 1]})))
    assert "command line" not in str(info.value)
    with pytest.raises(ConfigError, match=r"field 'overrides'.*SOLVER\.MAX_EPOCHS"):
        load_study(str(write_study(tmp_path, synthetic_root, overrides=["SOLVER.MAX_EPOCHS", "ten"])))
    bad_yaml = tmp_path / "bad.yml"
    bad_yaml.write_text("name: tiny\nseeds: [0, 1\narms: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yml is not valid YAML.*line"):
        load_study(str(bad_yaml))
    bad_yaml.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_study(str(bad_yaml))
    with pytest.raises(ConfigError, match="presets: market, synthetic"):
        load_study("nonexistent")


def test_shipped_presets_load():
    assert load_study("synthetic").seeds == [0, 1, 2]
    assert "lfm" in load_study("market").arms


def test_aggregate_mean_std_and_paired_delta():
    rows = [{"arm": arm, "seed": seed, "dataset": "market", "domain": "same", "attack": "", "objective": "", "eps": "",
             "metric": "mAP", "value": value}
            for arm, seed, value in [("none", 0, 0.5), ("none", 1, 0.7), ("lfm", 0, 0.6), ("lfm", 1, 0.9)]]
    by_arm = {s["arm"]: s for s in aggregate(rows, "none")}
    assert by_arm["lfm"]["mean"] == pytest.approx(0.75)
    assert by_arm["lfm"]["std"] == pytest.approx(0.212132, abs=1e-6)  # sample std of 0.6, 0.9
    assert by_arm["lfm"]["delta_vs_baseline"] == pytest.approx(0.15)  # (0.1 + 0.2) / 2, paired by seed
    assert by_arm["lfm"]["delta_std"] == pytest.approx(0.070711, abs=1e-6)
    assert by_arm["none"]["delta_vs_baseline"] == 0.0


def test_records_round_trip_and_read_the_earlier_format(tmp_path):
    from reid.experiments.study.records import write_record

    path = tmp_path / RECORD_NAME
    record = CellRecord("lfm", 1, "market1501", {"SEED": 1}, {"market1501": {"R1": 0.9, "mAP": 0.8, "mINP": 0.4}})
    record.add(AttackRun("pgd", "metric", 4.0), {"R1": 0.5, "mAP": 0.4, "mINP": 0.1, "R5": 0.7}, steps=10)
    write_record(path, record)
    assert read_record(path) == record
    expected = {"attack": "pgd", "objective": "metric", "eps": 4.0, "steps": 10, "protocol": ATTACK_PROTOCOL,
                "R1": 0.5, "mAP": 0.4, "mINP": 0.1}
    assert json.loads(path.read_text())["attacks"] == [expected]
    legacy_entry = {"R1": 0.5, "mAP": 0.4, "mINP": 0.1, "steps": 10, "protocol": ATTACK_PROTOCOL}
    legacy = {**record.to_json(), "attacks": {"pgd/metric/eps4": legacy_entry}}
    path.write_text(json.dumps(legacy))  # keyed by strings, as records of earlier versions are
    assert read_record(path).attacks == record.attacks


def test_config_differences_count_a_new_key_only_when_its_default_changed_the_recipe():
    from reid.config import config_to_dict, get_cfg_defaults
    from reid.experiments.study.cells import config_differences

    current = config_to_dict(get_cfg_defaults())
    older = config_to_dict(get_cfg_defaults())
    del older["INPUT"]["RE_STYLE"], older["INPUT"]["MAX_IMAGE_PIXELS"]  # two keys an older version lacked
    # MAX_IMAGE_PIXELS changes no result; RE_STYLE's default did change the erasing a cell was trained with.
    assert config_differences(older, current) == ["INPUT.RE_STYLE: 'torchvision' (before INPUT.RE_STYLE existed) "
                                                  "-> 'bot'"]
    older["SOLVER"]["BASE_LR"] = 0.1
    assert config_differences(older, current)[0] == f"SOLVER.BASE_LR: 0.1 -> {current['SOLVER']['BASE_LR']!r}"
