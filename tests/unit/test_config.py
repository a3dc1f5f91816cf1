"""Configuration: defaults < profile < command line, and clear errors for wrong keys and types."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_finetune import profiles as profiles_module
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.profiles import coerce, load_config


@pytest.fixture
def profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "profiles"
    folder.mkdir()
    monkeypatch.setattr(profiles_module, "PROFILES_DIR", folder)
    return folder


@pytest.mark.parametrize("name", ["local", "smoke", "cuda", "mps"])
def test_every_contract_profile_exists_and_loads(name: str) -> None:
    cfg = load_config(name)
    assert cfg.device == {"local": "cpu", "smoke": "cpu", "cuda": "cuda", "mps": "mps"}[name]


def test_precedence_default_then_profile_then_command_line(profiles: Path) -> None:
    (profiles / "p.yaml").write_text("max_length: 40\nlearning_rate: 1.0e-4\n")
    cfg = load_config("p", {"learning_rate": "3e-5"})
    assert cfg.max_length == 40  # profile beats the default (128)
    assert cfg.learning_rate == pytest.approx(3e-5)  # command line beats the profile
    assert cfg.train_batch_size == Config().train_batch_size  # default where neither says


def test_empty_string_means_take_it_from_the_profile(profiles: Path) -> None:
    (profiles / "p.yaml").write_text("device: cpu\nmax_length: 40\n")
    cfg = load_config("p", {"device": "", "max_length": None})
    assert (cfg.device, cfg.max_length) == ("cpu", 40)


def test_unknown_key_in_profile_names_key_and_file(profiles: Path) -> None:
    (profiles / "p.yaml").write_text("max_lenght: 40\n")
    with pytest.raises(UserError, match=r"unknown setting 'max_lenght' in .*p\.yaml"):
        load_config("p")


def test_wrong_type_in_profile_names_key_and_file(profiles: Path) -> None:
    (profiles / "p.yaml").write_text("num_train_epochs: three\n")
    with pytest.raises(UserError, match=r"num_train_epochs in .*p\.yaml must be float"):
        load_config("p")


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"unknown profile 'nope': use one of .*local.*smoke"):
        load_config("nope")


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("max_steps", "4", 4),
        ("max_steps", "4.0", 4),  # `mlflow run` renders numbers as floats
        ("max_steps", 4.0, 4),
        ("learning_rate", "2e-5", 2e-5),
        ("group_by_length", "false", False),
        ("group_by_length", "True", True),
        ("base_model", "bert-base-uncased", "bert-base-uncased"),
    ],
)
def test_coerce_parses_command_line_strings(key: str, raw: object, expected: object) -> None:
    assert coerce(key, raw, "test") == expected


@pytest.mark.parametrize(
    ("key", "raw"),
    [("max_steps", "4.5"), ("max_steps", True), ("group_by_length", "maybe"), ("learning_rate", "fast")],
)
def test_coerce_rejects_wrong_types(key: str, raw: object) -> None:
    with pytest.raises(UserError, match=key):
        coerce(key, raw, "test")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"save_mode": "zip"}, "unknown save_mode 'zip'"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"test_fraction": "0.7"}, "test_fraction"),
        ({"max_length": "0"}, "max_length"),
        ({"learning_rate": "-1"}, "learning_rate"),
    ],
)
def test_invalid_values_are_user_errors(override: dict[str, str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config("smoke", override)


def test_data_columns_belong_to_the_file_they_were_given_with() -> None:
    assert load_config("local").data_columns == "label,text"  # the bundled UCI file
    mine = load_config("local", {"data": "mine.csv"})
    assert (mine.data, mine.data_columns) == ("mine.csv", "")  # read with its own header row
    both = load_config("local", {"data": "mine.tsv", "data_columns": "y,x"})
    assert both.data_columns == "y,x"
    same = load_config("local", {"data": load_config("local").data})
    assert same.data_columns == "label,text"
    assert load_config("smoke").data_columns == "label,text"  # the profile names both


def test_unknown_class_weight_is_an_error() -> None:
    with pytest.raises(UserError, match="unknown class_weight 'heavy': use one of none, balanced"):
        load_config("local", {"class_weight": "heavy"})
