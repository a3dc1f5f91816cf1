"""kill -9 in the middle of a step: nothing in the registry lies, and the next main completes.

Each test SIGKILLs one step at a named point (``PIPELINE_TEST_KILL_AT``: the step kills its whole
process group, so the ``main`` that started it dies too, as on a lost machine), then checks:
the champion still loads and predicts, every registered version points at a READY logged model,
and the next ``main`` marks the runs the dead processes left RUNNING as KILLED and completes.
The tests share one store and run in order (each starts from what the last one left).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from hf_finetune import cli, tracking
from hf_finetune.registry import locks
from hf_finetune.tags import STEP_TAG
from steps import main as main_step
from tests.conftest import PROJECT_DIR, isolated_env, use_store
from tests.recorded import logged_model_status

pytestmark = pytest.mark.slow
MODEL = "faults-spam"
BASE = ["--profile", "smoke", "--registered_model", MODEL]
LORA_REFERENCE = ["--peft", "lora", "--save_mode", "reference", "--learning_rate", "1e-3"]


@pytest.fixture(scope="module")
def store(smoke_main_run: tuple[Path, str]) -> Path:
    """The session's smoke store (its steps are reused: seconds, not a training) with a registered
    model of this module's own, whose v1 is the champion every kill below must leave alone."""
    root, _ = smoke_main_run
    with pytest.MonkeyPatch.context() as mp:
        use_store(root, mp)
        assert main_step.main(BASE) == 0
    return root


@pytest.fixture
def client(store: Path, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:
    use_store(store, monkeypatch)
    return mlflow.MlflowClient()


def killed_main(store: Path, point: str, *args: str) -> None:
    """``main`` in its own process group, killed with SIGKILL at ``point``."""
    env = os.environ | isolated_env(store) | {tracking.KILL_AT_ENV: point, "PYTHONPATH": str(PROJECT_DIR)}
    done = subprocess.run(
        [sys.executable, "-m", "steps.main", *BASE, *args],
        cwd=store,
        env=env,
        capture_output=True,
        text=True,
        start_new_session=True,  # its own group: the kill takes main and the step, not pytest
        timeout=600,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def running(client: mlflow.MlflowClient) -> dict[str, str]:
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "attributes.status = 'RUNNING'"
    )
    return {run.info.run_id: run.data.tags.get(STEP_TAG, "?") for run in runs}


def assert_registry_tells_the_truth(client: mlflow.MlflowClient, champion: str) -> None:
    model = client.get_registered_model(MODEL)
    assert model.aliases["champion"] == champion  # not moved by the dead step
    for version in client.search_model_versions(f"name = '{MODEL}'"):
        assert logged_model_status(client, MODEL, version.version) == "READY", version.version
    predicted = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(
        ["Your parcel is held: pay the fee at hxxp://bit.example/p", "running late, see you at 7"]
    )
    assert set(predicted["label"]) <= {"ham", "spam"}


def rerun_completes(client: mlflow.MlflowClient, left_running: dict[str, str], *args: str) -> None:
    assert main_step.main([*BASE, *args]) == 0
    for run_id in left_running:
        assert client.get_run(run_id).info.status == "KILLED", left_running[run_id]
    assert set(running(client)) == set()
    assert not [m.name for m in client.search_registered_models() if m.name.endswith(locks.SUFFIX)]


def champion_version(client: mlflow.MlflowClient) -> str:
    return client.get_registered_model(MODEL).aliases["champion"]


def test_kill_during_finetune(store: Path, client: mlflow.MlflowClient) -> None:
    champion = champion_version(client)
    one_epoch = ["--max_steps", "-1", "--num_train_epochs", "1"]  # smoke stops before an epoch ends
    killed_main(store, "finetune.checkpoint_logged", *one_epoch)
    left = running(client)
    assert sorted(left.values()) == ["finetune", "main"]
    assert_registry_tells_the_truth(client, champion)
    rerun_completes(client, left, *one_epoch)


def test_kill_during_log_model(store: Path, client: mlflow.MlflowClient) -> None:
    champion = champion_version(client)
    versions = len(client.search_model_versions(f"name = '{MODEL}'"))
    killed_main(store, "log_model.logged", "--force", "log_model")
    left = running(client)
    assert sorted(left.values()) == ["log_model", "main"]
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == versions  # nothing registered
    assert_registry_tells_the_truth(client, champion)
    rerun_completes(client, left, "--force", "log_model")


def test_kill_during_register(store: Path, client: mlflow.MlflowClient) -> None:
    champion = champion_version(client)
    killed_main(store, "register.version_created", "--force", "log_model")
    left = running(client)
    assert sorted(left.values()) == ["main", "register"]  # register runs inside main's process
    newest = max(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    assert newest.tags["aliases_pending"].startswith("challenger") and not newest.aliases
    assert_registry_tells_the_truth(client, champion)
    rerun_completes(client, left)  # log_model is reused, so register meets the same version again
    newest = client.get_model_version(MODEL, newest.version)
    assert "aliases_pending" not in newest.tags
    assert client.get_registered_model(MODEL).aliases["challenger"] == newest.version


def test_kill_during_persist(store: Path, client: mlflow.MlflowClient) -> None:
    champion = champion_version(client)
    killed_main(store, "persist.weights_uploaded", *LORA_REFERENCE)
    left = running(client)
    assert sorted(left.values()) == ["main", "persist"]
    reference = client.get_model_version(MODEL, client.get_registered_model(MODEL).aliases["challenger"])
    assert reference.tags["save_mode"] == "reference" and reference.tags["persisted"] == "false"
    assert_registry_tells_the_truth(client, champion)  # the half-persisted version is not champion
    rerun_completes(client, left, *LORA_REFERENCE)
    assert client.get_model_version(MODEL, reference.version).tags["persisted"] == "true"


def tmpfs_over(directory: Path) -> list[str] | None:
    """A command prefix that runs a command with a small, empty tmpfs mounted over ``directory``
    (a private mount namespace: nothing outside the command sees it), or None where this machine
    allows no unprivileged mount namespaces."""
    prefix = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
    # after the command: how much of the tmpfs it left used, in KiB, as the last line
    script = 'mount -t tmpfs -o size=4m tmpfs "$0" || exit 99; "$@"; rc=$?; du -sk "$0"; exit $rc'
    try:
        probe = subprocess.run([*prefix, script, str(directory), "true"], capture_output=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return [*prefix, script, str(directory)] if probe.returncode == 0 else None


def test_full_disk_while_logging_the_model(store: Path, client: mlflow.MlflowClient) -> None:
    """The artifact store's models folder is a 4 MB tmpfs: the weights (~90 MB) cannot fit."""
    champion = champion_version(client)
    versions = len(client.search_model_versions(f"name = '{MODEL}'"))
    (experiment,) = {  # the pipeline's (the champion's history has an experiment of its own)
        run.info.experiment_id
        for run in client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "tags.`pipeline.step` = 'main'"
        )
    }
    models = store / "mlruns" / experiment / "models"
    prefix = tmpfs_over(models)
    if prefix is None:
        pytest.skip("no unprivileged mount namespaces here (unshare --user --mount): cannot make a full disk")
    env = os.environ | isolated_env(store) | {"PYTHONPATH": str(PROJECT_DIR)}
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "steps.main", *BASE, "--force", "log_model"],
        cwd=store,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == cli.EXIT_USER_ERROR, done.stderr[-3000:]  # main: a step failed
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("log_model: error:")]
    assert line.startswith(f"log_model: error: no space left on the device writing {models}/")
    assert "Traceback" not in done.stderr
    logs = client.search_runs(
        [experiment], "tags.`pipeline.step` = 'log_model'", order_by=["attributes.start_time DESC"]
    )
    assert logs[0].info.status == "FAILED"
    used_kib = int(done.stdout.splitlines()[-1].split()[0])
    assert used_kib < 64, done.stdout[-2000:]  # the part it copied was deleted: the space is free
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == versions  # nothing registered
    assert_registry_tells_the_truth(client, champion)
    rerun_completes(client, {}, "--force", "log_model")  # space again: the same command completes
