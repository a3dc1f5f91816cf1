"""Sweeps on the smoke profile: trials through main's cache, a worker lost mid-trial and its trial
retried, one registration per study, a resumed study, and two workers on one study at once
(SQLite storage, and PostgreSQL where one is configured)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback

from hf_finetune import sweeps, tracking
from hf_finetune.tags import RESUMED_FROM_TAG, REUSED_FROM_TAG, STEP_TAG, TRIAL_TAG
from tests.conftest import PROJECT_DIR, isolated_env
from tests.recorded import fresh_postgres_database

pytestmark = pytest.mark.slow
MODEL = "sweep-spam"


def start(
    root: Path, *args: str, storage: str = "", env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    environment = os.environ | isolated_env(root) | {"PYTHONPATH": str(PROJECT_DIR)} | (env or {})
    environment["PATH"] = os.path.dirname(sys.executable) + os.pathsep + environment["PATH"]
    storage = storage or f"sqlite:///{root / 'sweep.db'}"
    command = [sys.executable, "-m", "steps.sweep", "--profile", "smoke", "--space", "sweeps/smoke.yaml",
               "--registered_model", MODEL, "--storage", storage, *args]  # fmt: skip
    return subprocess.Popen(
        command, cwd=root, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def done(process: subprocess.Popen[str]) -> str:
    output = process.communicate(timeout=1500)[0]
    assert process.returncode == 0, output[-4000:]
    return output


def the_study(root: Path, storage: str = "") -> optuna.Study:
    storage = storage or f"sqlite:///{root / 'sweep.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def executed(client: mlflow.MlflowClient, step: str) -> list[str]:
    """Runs of ``step`` that really ran (not a cache hit's marker)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{STEP_TAG}` = '{step}'", max_results=500)
    return [r.info.run_id for r in runs if REUSED_FROM_TAG not in r.data.tags]


def versions(client: mlflow.MlflowClient) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))


QUICK_HEARTBEAT = {sweeps.HEARTBEAT_ENV: "2", sweeps.GRACE_ENV: "10"}  # a dead worker's trial fails in 10 s


def test_a_killed_workers_trial_is_retried_the_best_registered_once_and_the_study_resumed(
    tmp_path: Path,
) -> None:
    # Two workers at once; the first is lost mid-trial (its finetune, the trial's main and itself,
    # kill -9). The other finishes its own trial, waits for the lost one's, fails it by its silent
    # heartbeat and tries its settings again.
    mlflow.MlflowClient(isolated_env(tmp_path)["MLFLOW_TRACKING_URI"]).search_experiments()  # schema first
    lost = start(tmp_path, "--n_trials", "2",
                 env=QUICK_HEARTBEAT | {tracking.KILL_AT_ENV: "finetune.checkpoint_logged"})  # fmt: skip
    alive = start(tmp_path, "--n_trials", "2", env=QUICK_HEARTBEAT)
    output = lost.communicate(timeout=900)[0]
    assert lost.returncode == -signal.SIGKILL, output[-4000:]
    done(alive)
    mlflow.set_tracking_uri(isolated_env(tmp_path)["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    study = the_study(tmp_path)
    states = sorted(t.state.name for t in study.trials)
    (failed,) = [t for t in study.trials if t.state.name == "FAIL"]  # the lost worker's
    assert len(states) == 3 and set(states) - {"FAIL"} <= {"COMPLETE", "PRUNED"}, states
    retried = [
        t for t in study.trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == failed.number
    ]
    assert len(retried) == 1 and retried[0].params == failed.params  # its settings, once
    finetune = client.get_run(retried[0].user_attrs["finetune_run_id"])
    lost_finetune = client.get_run(finetune.data.tags[RESUMED_FROM_TAG])  # from the lost one's checkpoint
    assert lost_finetune.info.status == "KILLED" and lost_finetune.data.tags[STEP_TAG] == "finetune"
    assert study.user_attrs["registered_trial"] == study.best_trial.number
    assert versions(client) == ["1"]  # the best, through the gate; the other trial never registered
    assert len(executed(client, "prepare")) == 1 and len(executed(client, "tokenize")) == 1
    assert len(executed(client, "evaluate")) == 1  # the best trial's alone: no trial touched the test split
    everything = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=500)
    assert not [r.info.run_id for r in everything if r.info.status == "RUNNING"]  # the lost ones marked
    sweep_runs = client.search_runs(["0"], f"tags.`{STEP_TAG}` = 'sweep'")
    assert sorted(r.info.status for r in sweep_runs) == ["FINISHED", "KILLED"]
    (sweep_run,) = [r for r in sweep_runs if r.info.status == "FINISHED"]
    children = client.search_runs(["0"], f"tags.`mlflow.parentRunId` = '{sweep_run.info.run_id}'")
    trials = sorted(
        r.data.tags[TRIAL_TAG] for r in children
    )  # its warm-up, both finished trials, the best again
    finished = [str(t.number) for t in study.trials if t.state.name != "FAIL"]
    assert trials == sorted(["warm-up", *finished, str(study.best_trial.number)])
    artifacts = {a.path for a in client.list_artifacts(sweep_run.info.run_id, "sweep")}
    assert artifacts == {"sweep/trials.csv", "sweep/plots.html"}
    metrics = sweep_run.data.metrics
    assert metrics["trials_complete"] + metrics.get("trials_pruned", 0) == 2 and metrics["trials_failed"] == 1
    assert any(k.startswith("best.") for k in sweep_run.data.params)

    again = done(start(tmp_path, "--n_trials", "2"))  # the same command: the same study, nothing to do
    assert "still the best" in again and len(the_study(tmp_path).trials) == 3 and versions(client) == ["1"]

    before = the_study(tmp_path).best_trial.number
    done(start(tmp_path, "--n_trials", "3"))  # one more trial; registered again only for a new best
    study = the_study(tmp_path)
    assert len(study.trials) == 4
    assert versions(client) == (["1"] if study.best_trial.number == before else ["1", "2"])
    assert len(executed(client, "prepare")) == 1


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest) -> Iterator[str]:
    """ "" (SQLite beside the store) or a fresh PostgreSQL database, where one is configured."""
    if request.param == "sqlite":
        yield ""
        return
    with fresh_postgres_database() as uri:
        if not uri:
            pytest.skip("no PostgreSQL: set PIPELINE_TEST_POSTGRES_URI (deploy/postgres/start-local.sh)")
        yield uri


def test_two_workers_share_one_study_and_register_once(tmp_path: Path, storage: str) -> None:
    mlflow.MlflowClient(isolated_env(tmp_path)["MLFLOW_TRACKING_URI"]).search_experiments()  # schema first
    workers = [start(tmp_path, "--n_trials", "3", storage=storage) for _ in range(2)]
    outputs = [done(w) for w in workers]
    study = the_study(tmp_path, storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2]  # every number once, none lost
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    mlflow.set_tracking_uri(isolated_env(tmp_path)["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    assert versions(client) == ["1"], outputs  # one registration, whichever worker finished last
    assert len(executed(client, "prepare")) == 1 and len(executed(client, "tokenize")) == 1
