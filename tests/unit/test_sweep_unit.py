"""The sweep's search space, study name and refusals, without a trial (the trials themselves:
``tests/e2e/test_sweep.py``)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest

from hf_finetune import sweeps
from hf_finetune.config import FIELDS
from hf_finetune.errors import UserError
from hf_finetune.settings import PROJECT_DIR
from steps import sweep


def dims_of(text: str) -> list[sweeps.Dimension]:
    return sweeps.parse_space(text, "space.yaml")


def test_the_default_space_is_valid_for_both_tasks_and_lora_only_where_it_applies() -> None:
    text = (PROJECT_DIR / "sweeps" / "default.yaml").read_text()
    dims = dims_of(text)
    names = [d.name for d in dims]
    assert names[:5] == [
        "learning_rate",
        "num_train_epochs",
        "train_batch_size",
        "warmup_fraction",
        "weight_decay",
    ]
    for overrides in ({}, {"task": "text-generation"}, {"peft": "lora"}):
        sweeps.check_space(dims, "default.yaml", "local", overrides)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    fixed = {"task": "text-classification", "peft": "none"}
    kinds = {d.name: type(FIELDS[d.name].default) for d in dims}
    chosen = sweeps.trial_settings(dims, study.ask(), fixed, kinds)
    assert "class_weight" in chosen and "lora_r" not in chosen
    chosen = sweeps.trial_settings(dims, study.ask(), {"task": "text-generation", "peft": "lora"}, kinds)
    assert "class_weight" not in chosen and {"lora_r", "lora_alpha"} <= set(chosen)
    assert 2e-5 <= chosen["learning_rate"] <= 3e-4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rate: 0.1", "needs low and high, or choices"),
        ("learning_rate: {low: 0.1, high: 0.01}", "needs numbers low < high"),
        ("learning_rate: {low: 0, high: 0.01, log: true}", "low must be above 0"),
        ("learning_rate: {low: 1e-5, high: 1e-3, step: 2}", "unknown keys step"),
        ("- learning_rate", "must map setting names to ranges"),
        ("learning_rate: {choices: []}", "choices are empty"),
        ("learning_rate: {low: [1, 2", "is not valid YAML"),
    ],
)
def test_a_malformed_space_is_one_line(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        dims_of(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learnin_rate: {low: 1e-5, high: 1e-3}", "learnin_rate is not a setting"),
        ("min_test_f1: {low: 0.5, high: 0.9}", "is not a setting of prepare, tokenize or finetune"),
        ("learning_rate: {low: -1.0, high: 1e-3}", "learning_rate=-1.0 is refused by the settings"),
        ("train_batch_size: {choices: [0, 16]}", "train_batch_size=0 is refused by the settings"),
        ("lora_r: {choices: [8], when: {pft: lora}}", "when names pft, which is not a setting"),
        # a dimension that applies only where another swept one takes a value: checked there
        (
            "peft: {choices: [none, lora]}\nlora_r: {choices: [0, 8], when: {peft: lora}}",
            "lora_r=0 is refused",
        ),
        (
            "peft: {choices: [none, lora]}\nlora_r: {choices: [8], when: {peft: lroa}}",
            "lora_r's when is refused",
        ),
    ],
)
def test_a_space_the_settings_refuse_is_one_line(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        sweeps.check_space(dims_of(text), "space.yaml", "smoke", {})


def test_the_study_name_follows_what_makes_sweeps_comparable() -> None:
    name = sweeps.study_name("lr: {}", "sha:1", "text-classification", "gt", "smoke", {"seed": "1"})
    assert name == sweeps.study_name("lr: {}", "sha:1", "text-classification", "gt", "smoke", {"seed": "1"})
    assert name.startswith("sweep-text-classification-")
    for changed in (
        ("lr: {x}", "sha:1", "text-classification", "gt", "smoke", {"seed": "1"}),
        ("lr: {}", "sha:2", "text-classification", "gt", "smoke", {"seed": "1"}),
        ("lr: {}", "sha:1", "text-generation", "gt", "smoke", {"seed": "1"}),
        ("lr: {}", "sha:1", "text-classification", "gt2", "smoke", {"seed": "1"}),
        ("lr: {}", "sha:1", "text-classification", "gt", "local", {"seed": "1"}),
        ("lr: {}", "sha:1", "text-classification", "gt", "smoke", {"seed": "2"}),
    ):
        assert sweeps.study_name(*changed) != name


def test_main_flags_leave_the_sweeps_own_settings_out() -> None:
    flags = sweep.main_flags(
        "smoke", {"learning_rate": 1e-4, "n_trials": "3", "storage": "x", "dry_run": True}
    )
    assert flags == ["--profile", "smoke", "--learning_rate", "0.0001", "--dry_run", "true"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n_trials", "0"], "n_trials=0 must be at least 1"),
        (["--space", "nowhere.yaml"], "search space nowhere.yaml not found"),
        (
            ["--storage", "sqlite:////no/such/folder/sweep.db"],
            "the sweep storage sqlite:////no/such/folder/sweep.db does not connect",
        ),
        (["--storage", "nosuchscheme://x"], "does not connect"),
        (["env", "PIPELINE_SWEEP_GRACE_S=10s"], "PIPELINE_SWEEP_GRACE_S=10s must be a whole number"),
        (["env", "PIPELINE_SWEEP_GRACE_S=30"], "PIPELINE_SWEEP_GRACE_S (30) must be longer than"),
    ],
)
def test_the_sweep_refuses_before_any_run(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tracking: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    capsys.readouterr()
    if argv[0] == "env":  # a setting from the environment
        monkeypatch.setenv(*argv[1].split("=", 1))
        argv = []
    assert sweep.main(["--profile", "smoke", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not [
        e
        for e in mlflow.MlflowClient().search_experiments()
        if mlflow.MlflowClient().search_runs([e.experiment_id])
    ]
    assert not (tracking / "sweep.db").exists() or "storage" in " ".join(argv)


def test_a_space_naming_no_setting_is_refused_by_the_sweep_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "bad.yaml"
    space.write_text("learnin_rate: {low: 1e-5, high: 1e-3}\n")
    capsys.readouterr()
    assert (
        sweep.main(
            ["--profile", "smoke", "--space", str(space), "--storage", f"sqlite:///{tmp_path / 's.db'}"]
        )
        == 2
    )
    assert "learnin_rate is not a setting" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///sweep.db", "sqlite:///{cwd}/sweep.db"),
        ("sqlite:///runs/s.db", "sqlite:///{cwd}/runs/s.db"),
        ("sqlite:////abs/s.db", "sqlite:////abs/s.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql://u:p@db:5432/optuna", "postgresql://u:p@db:5432/optuna"),
    ],
)
def test_a_relative_sqlite_storage_is_made_absolute_for_the_trials(
    url: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert sweeps.absolute(url) == expected.format(cwd=tmp_path.resolve())


def test_the_trials_finetune_prunes_with_the_studys_own_pruner() -> None:
    study = optuna.create_study(direction="maximize", pruner=sweeps.pruner())
    for value in (0.9, 0.8):  # two finished trials: the pruner's start-up
        trial = study.ask()
        trial.report(value, step=1)
        study.tell(trial, value)
    worse, better = study.ask(), study.ask()
    worse.report(0.1, step=1)
    better.report(0.95, step=1)
    assert worse.should_prune() and not better.should_prune()  # Optuna's default would wait for five


def test_workers_are_seeded_by_their_place_in_the_study_so_a_rerun_asks_the_same(tmp_path: Path) -> None:
    def asked(storage: str, workers: int, trials: int = 4) -> list[list[float]]:
        """Each worker's first ``trials`` learning rates, the workers joining one new study in turn."""
        study = optuna.create_study(study_name="s", storage=storage)
        out = []
        for _ in range(workers):
            study.sampler = sweeps.join(study, seed=42)
            rates = []
            for _ in range(trials):
                trial = study.ask()
                rates.append(trial.suggest_float("learning_rate", 1e-6, 1e-3, log=True))
                study.tell(trial, rates[-1])
            out.append(rates)
        return out

    first = asked(f"sqlite:///{tmp_path / 'a.db'}", workers=2)
    again = asked(f"sqlite:///{tmp_path / 'b.db'}", workers=2)
    assert first == again  # the same command on a new study: the same settings in the same order
    assert first[0] != first[1]  # the second worker is not the first one over again
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'a.db'}")
    assert study.user_attrs[sweeps.WORKERS_ATTR] == 2
