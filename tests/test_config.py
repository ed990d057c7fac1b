"""Config loading: _BASE_ inheritance, name lookup, overrides and their error messages."""

import subprocess
import sys

import pytest

from reid.config import (config_from_dict, config_to_dict, get_cfg_defaults, load_config, resolve_config_path,
                         save_config)
from reid.config.loader import flatten_config
from reid.utils.errors import ConfigError


def test_every_default_has_a_comment():
    """defaults.py is the documentation: each assignment line carries a one-line comment."""
    from pathlib import Path

    import reid.config.defaults as d

    lines = [ln for ln in Path(d.__file__).read_text().splitlines() if ln.startswith("_C.") and " = " in ln]
    undocumented = [ln for ln in lines if "CN()" not in ln and "#" not in ln]
    assert lines and not undocumented, undocumented


def test_shipped_configs_load():
    for name in ("bot_market.yml", "lfm_market.yml", "bot_duke.yml", "lfm_duke.yml", "lfm_synthetic.yml",
                 "bot_synthetic.yml"):
        cfg = load_config(name)
        assert cfg.OUTPUT_DIR
    lfm = load_config("lfm_market")  # bare name without .yml
    assert lfm.MODEL.REGULARIZER.NAME == "lfm"
    assert tuple(lfm.DATASETS.TEST) == ("market1501", "dukemtmc")  # inherited from bot_market.yml
    assert load_config("bot_market.yml").MODEL.REGULARIZER.NAME == "none"


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "parent.yml").write_text("SOLVER:\n  MAX_EPOCHS: 7\n  BASE_LR: 0.1\n")
    (tmp_path / "child.yml").write_text("_BASE_: parent.yml\nSOLVER:\n  BASE_LR: 0.2\n")
    cfg = load_config(tmp_path / "child.yml", ["SOLVER.MAX_EPOCHS", "2", "DATASETS.ROOT", "/data",
                                               "DATASETS.TEST", "('market1501', 'dukemtmc')"])
    assert cfg.SOLVER.MAX_EPOCHS == 2 and cfg.SOLVER.BASE_LR == 0.2
    assert cfg.DATASETS.ROOT == "/data" and cfg.DATASETS.TEST == ("market1501", "dukemtmc")


def test_int_for_float_and_single_name_for_list():
    cfg = load_config(None, ["SOLVER.BASE_LR", "1", "DATASETS.TEST", "dukemtmc"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.DATASETS.TEST == ("dukemtmc",)


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"SOLVER\.BASE_RL.*closest valid key is SOLVER\.BASE_LR"):
        load_config(None, ["SOLVER.BASE_RL", "0.1"])


def test_unknown_key_in_file_names_file(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("MODEL:\n  LFM:\n    PROBB: 0.5\n")
    with pytest.raises(ConfigError, match=r"MODEL\.LFM\.PROBB.*bad\.yml.*MODEL\.LFM\.PROB"):
        load_config(bad)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"SOLVER\.MAX_EPOCHS.*expects an int"):
        load_config(None, ["SOLVER.MAX_EPOCHS", "many"])
    with pytest.raises(ConfigError, match="MODEL.PRETRAINED"):
        load_config(None, ["MODEL.PRETRAINED", "yes"])  # no 'yes'/'no' strings: booleans are booleans


def test_bad_choice_and_odd_overrides():
    with pytest.raises(ConfigError, match="Did you mean 'lfm'"):
        load_config(None, ["MODEL.REGULARIZER.NAME", "lfn"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["SOLVER.MAX_EPOCHS"])


def test_missing_config_file_lists_available():
    with pytest.raises(ConfigError, match="lfm_market.yml"):
        resolve_config_path("lfm_markt.yml")


def test_lfm_enabled_shorthand_and_conflict():
    assert load_config(None, ["MODEL.LFM.ENABLED", "True"]).MODEL.REGULARIZER.NAME == "lfm"
    with pytest.raises(ConfigError, match="one stage holds one"):
        load_config(None, ["MODEL.LFM.ENABLED", "True", "MODEL.REGULARIZER.NAME", "dropout"])


def test_batch_must_be_multiple_of_instances():
    with pytest.raises(ConfigError, match="IMS_PER_BATCH"):
        load_config(None, ["SOLVER.IMS_PER_BATCH", "30", "DATALOADER.NUM_INSTANCE", "4"])


def test_round_trip_through_saved_file_and_dict(tmp_path):
    cfg = load_config("lfm_market.yml", ["SOLVER.MAX_EPOCHS", "3"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert get_cfg_defaults().SOLVER.MAX_EPOCHS == 120  # defaults are never mutated


@pytest.mark.parametrize("key, value, message", [
    ("INPUT.SIZE_TRAIN", "('a', 'b')", r"INPUT\.SIZE_TRAIN.*list of int"),
    ("SOLVER.STEPS", "('a',)", r"SOLVER\.STEPS.*list of int"),
    ("MODEL.LFM.AREA", "[0.02, 'x']", r"MODEL\.LFM\.AREA.*list of float"),
    ("INPUT.FLIP_PROB", "2", r"INPUT\.FLIP_PROB must be in \[0, 1\]"),
    ("INPUT.RE_PROB", "1.5", r"INPUT\.RE_PROB must be in \[0, 1\]"),
    ("INPUT.RE_AREA", "(0.4, 0.02)", r"INPUT\.RE_AREA must be \(low, high\)"),
    ("MODEL.LFM.PROB", "2.0", r"MODEL\.LFM\.PROB must be in \[0, 1\]"),
    ("MODEL.LFM.ASPECT", "(3.0, 0.3)", r"MODEL\.LFM\.ASPECT"),
    ("MODEL.LFM.CHANNELS", "0", r"MODEL\.LFM\.CHANNELS must be 1 or more"),
    ("MODEL.DROPOUT.P", "1.5", r"MODEL\.DROPOUT\.P must be in \[0, 1\]"),
    ("MODEL.PIXEL_MEAN", "(0.5, 0.5)", r"MODEL\.PIXEL_MEAN needs one value per RGB channel"),
    ("DATASETS.TEST", "()", r"DATASETS\.TEST is empty"),
    ("TEST.RERANK_K1", "0", r"TEST\.RERANK_K1 must be 1 or more"),
    ("TEST.RERANK_LAMBDA", "-3", r"TEST\.RERANK_LAMBDA must be in \[0, 1\]"),
    ("SOLVER.STEPS", "(70, 40)", r"SOLVER\.STEPS must be in increasing order"),
])
def test_bad_values_are_refused_at_load_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [key, value])


def test_study_file_is_not_a_run_config():
    with pytest.raises(ConfigError, match=r"study grid.*tools/study\.py --preset market"):
        load_config("study/market.yml")


def test_every_key_is_listed_with_its_meaning_by_python_m_reid_config():
    # A key without a comment in defaults.py (or an Option without help) would be listed with an empty meaning.
    result = subprocess.run([sys.executable, "-m", "reid.config"], capture_output=True, text=True, check=True)
    listed = dict(line.split(" = ", 1) for line in result.stdout.splitlines())
    assert set(listed) == set(flatten_config(config_to_dict(get_cfg_defaults())))
    assert "MODEL.LFM.PROB" in listed and "SOLVER.BASE_LR" in listed
    empty = [key for key, rest in listed.items() if rest.rstrip().endswith("#")]
    assert not empty, f"keys without a meaning: {empty}"
    only_lfm = subprocess.run([sys.executable, "-m", "reid.config", "model.lfm"], capture_output=True, text=True,
                              check=True).stdout.splitlines()
    assert only_lfm and all(line.startswith("MODEL.LFM.") for line in only_lfm)


def test_saved_config_has_no_yaml_anchors(tmp_path):
    # One object reached twice (SIZE_TEST set from SIZE_TRAIN) is what PyYAML writes as &id001 / *id001.
    import yaml

    from reid.config.loader import _PlainDumper

    shared = [256, 128]
    assert "&id" in yaml.safe_dump({"a": shared, "b": shared})  # what the plain dumper prevents
    assert "&id" not in yaml.dump({"a": shared, "b": shared}, Dumper=_PlainDumper)
    cfg = get_cfg_defaults()
    cfg.INPUT.SIZE_TEST = cfg.INPUT.SIZE_TRAIN
    text = save_config(cfg, tmp_path / "config.yaml").read_text()
    assert "&id" not in text and "*id" not in text
    assert load_config(str(tmp_path / "config.yaml")).INPUT.SIZE_TEST == cfg.INPUT.SIZE_TRAIN


def test_changes_since_stored_names_keys_whose_default_changed_the_recipe():
    from reid.config import changes_since_stored

    current = config_to_dict(get_cfg_defaults())
    older = config_to_dict(get_cfg_defaults())
    del older["INPUT"]["RE_STYLE"]  # written before the key existed: it used torchvision's erasing
    assert changes_since_stored(older, current) == [("INPUT.RE_STYLE", "torchvision", "bot")]
    current["INPUT"]["RE_PROB"] = 0.0
    assert changes_since_stored(older, current) == []  # erasing off: its style changes nothing
    current["INPUT"]["RE_PROB"], current["INPUT"]["RE_STYLE"] = 0.5, "torchvision"
    assert changes_since_stored(older, current) == []  # the old recipe kept
    assert changes_since_stored(config_to_dict(get_cfg_defaults()), config_to_dict(get_cfg_defaults())) == []
    assert changes_since_stored({}, current) == []  # no stored config at all says nothing about its version
