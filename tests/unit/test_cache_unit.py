"""The step cache's pure parts: what a key covers, and how a miss is explained."""

from __future__ import annotations

import pytest

from hf_finetune import cache, driver
from hf_finetune.errors import UserError
from hf_finetune.profiles import load_config
from steps import main


def inputs(**changes):
    base = {
        "step": "tokenize",
        "cfg": load_config("smoke"),
        "fields": {"base_model", "max_length"},
        "code": "c1",
        "upstream_run_id": "r1",
        "data_digest": None,
    }
    base |= changes
    return cache.key_inputs(
        base["step"], base["cfg"], base["fields"], base["code"], base["upstream_run_id"], base["data_digest"]
    )


def test_key_is_stable_and_covers_only_the_fields_the_step_reads() -> None:
    assert cache.cache_key(inputs()) == cache.cache_key(inputs())
    unrelated = load_config("smoke", {"learning_rate": "0.1"})  # tokenize does not read it
    assert cache.cache_key(inputs(cfg=unrelated)) == cache.cache_key(inputs())


@pytest.mark.parametrize(
    "change",
    [
        {"cfg": load_config("smoke", {"max_length": "20"})},
        {"code": "c2"},
        {"upstream_run_id": "r2"},
        {"step": "finetune"},
        {"data_digest": "d"},
    ],
)
def test_key_changes_with_each_thing_it_covers(change) -> None:
    assert cache.cache_key(inputs(**change)) != cache.cache_key(inputs())


def test_types_are_normalised_so_a_string_from_the_command_line_hits() -> None:
    as_string = load_config("smoke", {"max_length": "32"})  # `mlflow run` passes strings ...
    as_float = load_config("smoke", {"max_length": "32.0"})  # ... and renders numbers as floats
    assert cache.cache_key(inputs(cfg=as_string)) == cache.cache_key(inputs(cfg=as_float))


def test_profiles_with_the_same_values_share_keys_and_different_values_do_not() -> None:
    smoke, local = load_config("smoke"), load_config("local")
    fields = cache.step_fields("prepare")
    key = lambda cfg: cache.cache_key(cache.key_inputs("prepare", cfg, fields, "c", None, "d"))  # noqa: E731
    assert key(smoke) == key(load_config("smoke"))
    assert key(smoke) != key(local)  # max_rows differs


def test_what_changed_names_the_settings_and_parts() -> None:
    old, new = inputs(), inputs(cfg=load_config("smoke", {"max_length": "20"}), code="c2")
    assert cache.what_changed([old], new) == "max_length, code changed"
    assert cache.what_changed([], new) == "no earlier run"
    assert cache.what_changed([inputs()], inputs(upstream_run_id="r9")) == "upstream run changed"


def test_what_changed_is_told_against_the_closest_earlier_run() -> None:
    first = inputs()
    other_setting = inputs(cfg=load_config("smoke", {"max_length": "20"}), upstream_run_id="r2")
    new = inputs(upstream_run_id="r3")
    assert cache.what_changed([other_setting, first], new) == "upstream run changed"


def test_fields_read_finds_every_cfg_attribute() -> None:
    source = "def f(cfg):\n    return cfg.a + helper(cfg.b) + other.c\n"
    assert cache.fields_read(source) == {"a", "b"}
    assert {"learning_rate", "num_train_epochs", "seed"} <= cache.step_fields("finetune")
    assert "learning_rate" not in cache.step_fields("tokenize")


def test_code_closure_follows_imports_within_steps() -> None:
    closure = cache.code_closure("steps.finetune")
    assert {
        "steps.finetune",
        "hf_finetune.tracking",
        "hf_finetune.settings",
        "hf_finetune.artifacts",
        "hf_finetune.devices",
    } <= set(closure)
    assert {"steps.tokenize", "steps.register"}.isdisjoint(closure)  # no step imports another


@pytest.mark.parametrize(
    ("force", "expected"),
    [
        ("", set()),
        ("all", set(main.STEP_NAMES)),
        ("evaluate", {"evaluate", "log_model", "register", "persist", "version_cleanup"}),
        (
            "finetune, evaluate",
            {"finetune", "evaluate", "log_model", "register", "persist", "version_cleanup"},
        ),
    ],
)
def test_forced_steps_include_everything_downstream(force: str, expected: set[str]) -> None:
    assert main.forced_steps(force) == expected


def test_force_naming_an_unknown_step_is_an_error() -> None:
    with pytest.raises(UserError, match=r"force names unknown step.*finetuning.*use all or some of prepare"):
        main.forced_steps("finetuning")


@pytest.mark.parametrize(
    ("given", "tags", "expected"),
    [
        ("", {}, "local"),
        ("", {"mlflow.project.env": "uv"}, "uv"),  # what `mlflow run --env-manager uv` records
        ("local", {"mlflow.project.env": "conda"}, "local"),  # an explicit choice wins
        ("virtualenv", {}, "virtualenv"),
    ],
)
def test_steps_run_with_mains_own_env_manager_by_default(given: str, tags: dict, expected: str) -> None:
    assert driver.child_env_manager(given, tags) == expected


def test_unknown_env_manager_is_an_error() -> None:
    with pytest.raises(UserError, match="unknown env_manager 'pip'"):
        driver.child_env_manager("pip", {})
