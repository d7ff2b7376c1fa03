"""The config as a user meets it: the default, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bin_daemon import cli
from bin_daemon.config import DEFAULT_CONFIG_PATH, Config, load_config, parse_config
from bin_daemon.errors import ConfigError

GOOD = """\
sensor:
  type: ir
  gpio: 17
bins:
  recycling:
    labels: [cardboard, paper, metal, plastic]
    servo_gpio: 12
  landfill:
    labels: [trash]
    servo_gpio: 18
fallback_bin: landfill
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value).replace(str(path), "CONFIG")


def test_bundled_default_is_valid_and_documents_the_default_bins():
    config = load_config(None)
    assert config.source == str(DEFAULT_CONFIG_PATH)
    assert config.fallback_bin == "landfill"
    assert config.bin_for_label() == {
        "cardboard": "recycling",
        "paper": "recycling",
        "metal": "recycling",
        "plastic": "recycling",
        "glass": "glass",
        "trash": "landfill",
    }
    assert config.model.unsure_threshold is None  # taken from the model card


def test_defaults_of_the_bundled_file_match_the_schema_defaults():
    config = load_config(None)
    assert config.timing == Config.model_fields["timing"].default_factory()
    assert config.camera == Config.model_fields["camera"].default_factory()


def test_minimal_config_fills_in_defaults(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.timing.hold_open_s == 3.0
    assert config.spool.save == "unsure"


def test_unknown_key_names_file_line_and_key(tmp_path):
    text = GOOD.replace("    servo_gpio: 12", "    servo_gpoi: 12")
    assert error_of(tmp_path, text) == (
        "CONFIG:5: bins.recycling.servo_gpio: required key is missing\n"
        "CONFIG:7: bins.recycling.servo_gpoi: unknown key"
    )


def test_wrong_value_names_the_line_and_the_value(tmp_path):
    text = GOOD + "timing:\n  hold_open_s: -1\n"
    assert error_of(tmp_path, text) == (
        "CONFIG:13: timing.hold_open_s: Input should be greater than or equal to 0 (got -1)"
    )


def test_yaml_syntax_error_gives_file_and_line(tmp_path):
    text = GOOD + "timing:\n  hold_open_s: [3\n"
    message = error_of(tmp_path, text)
    assert message.startswith("CONFIG:14: YAML syntax error:"), message


def test_duplicate_key_is_an_error(tmp_path):
    message = error_of(tmp_path, GOOD + "fallback_bin: recycling\n")
    assert message.startswith("CONFIG:") and "fallback_bin" in message


def test_bad_sensor_type_points_at_the_type_key(tmp_path):
    text = GOOD.replace("type: ir", "type: laser")
    assert error_of(tmp_path, text) == (
        "CONFIG:2: sensor.type: unknown type 'laser' (expected one of 'ir', 'hcsr04')"
    )


def test_cross_checks_fallback_labels_and_pins(tmp_path):
    text = (
        GOOD.replace("fallback_bin: landfill", "fallback_bin: compost")
        .replace("servo_gpio: 18", "servo_gpio: 17")
        .replace("labels: [trash]", "labels: [trash, paper]")
    )
    assert error_of(tmp_path, text).splitlines() == [
        "CONFIG:11: fallback_bin: 'compost' is not one of the bins (recycling, landfill)",
        "CONFIG:9: bins.landfill.labels[1]: label 'paper' is already in bin 'recycling'",
        "CONFIG:10: bins.landfill.servo_gpio: GPIO 17 is already used by sensor.gpio",
    ]


def test_servo_angles_must_lie_in_the_servo_range(tmp_path):
    text = GOOD.replace("servo_gpio: 12", "servo_gpio: 12\n    open_angle_deg: 200")
    assert error_of(tmp_path, text) == (
        "CONFIG:5: bins.recycling: open_angle_deg must be between 0 and 180 degrees"
    )


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    assert error_of(tmp_path, "- a\n- b\n") == (
        "CONFIG:1: the config must be a mapping of keys, not a list"
    )


def test_labels_checked_against_the_model():
    config = parse_config(GOOD.replace("[trash]", "[trsh]"), source="c.yaml")
    labels = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
    with pytest.raises(ConfigError, match=r"c.yaml: bins.landfill.labels: 'trsh' not among"):
        config.check_labels(labels)
    notes = parse_config(GOOD, source="c.yaml").check_labels(labels)
    assert notes == ["label 'glass' is in no bin: it goes to the fallback bin 'landfill'"]


def test_relative_model_dir_is_relative_to_the_config_file(tmp_path):
    path = write(tmp_path, GOOD + "model:\n  dir: my-model\n")
    assert load_config(path).model_dir() == tmp_path / "my-model"


def test_cli_check_config_error_is_one_line_per_problem_and_exit_2(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("gpio: 17", "gpio: 17\n  colour: red"))
    assert cli.main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"bin-daemon: error: {path}:4: sensor.colour: unknown key\n"


def test_cli_check_config_ok_and_print_default(tmp_path, capsys):
    assert cli.main(["check-config", "--config", str(write(tmp_path, GOOD))]) == 0
    assert ": OK: sensor IR on GPIO17" in capsys.readouterr().out
    assert cli.main(["check-config", "--print-default"]) == 0
    out = capsys.readouterr().out
    assert out == DEFAULT_CONFIG_PATH.read_text()
    assert parse_config(out).fallback_bin == "landfill"


def test_model_tta_is_none_or_flip(tmp_path):
    assert load_config(None).model.tta == "none"
    assert load_config(write(tmp_path, GOOD + "model:\n  tta: flip\n")).model.tta == "flip"
    message = error_of(tmp_path, GOOD + "model:\n  tta: rotate\n")
    assert message == "CONFIG:13: model.tta: Input should be 'none' or 'flip' (got 'rotate')"


def test_a_class_bias_names_its_line_for_a_label_in_no_bin_or_a_value_out_of_range(tmp_path):
    text = GOOD + "model:\n  class_bias:\n    trash: 1.0\n    trahs: 1.0\n"
    assert error_of(tmp_path, text) == (
        "CONFIG:15: model.class_bias.trahs: 'trahs' is in no bin's labels "
        "(cardboard, paper, metal, plastic, trash)"
    )
    assert error_of(tmp_path, text.replace("trahs: 1.0", "paper: 5")) == (
        "CONFIG:15: model.class_bias.paper: Input should be less than or equal to 4 (got 5)"
    )
    assert load_config(write(tmp_path, text.replace("trahs", "paper"))).model.class_bias == {
        "trash": 1.0,
        "paper": 1.0,
    }
