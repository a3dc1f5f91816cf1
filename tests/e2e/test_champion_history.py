"""The champion's story through whole mains: the gate, a move by hand, a rollback racing a main's
register, version_cleanup; then "who was champion at T" for every T. On SQLite (the session's
smoke store, its steps reused) and through the basic-auth tracking server on PostgreSQL (a fresh
database, when ``PIPELINE_TEST_POSTGRES_URI`` names a server; else the server on SQLite).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest

from hf_finetune.registry import history, timeline
from hf_finetune.tags import ROLLED_BACK_TAG
from tests.conftest import PROJECT_DIR, isolated_env
from tests.recorded import fresh_postgres_database
from tests.server import as_user, running_server

pytestmark = pytest.mark.slow
NAME = "history-spam"
Start = Callable[[str, list[str]], subprocess.Popen[str]]


def starter(root: Path, env: dict[str, str]) -> Start:
    def start(module: str, args: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", f"steps.{module}", *args],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    return start


def finished(process: subprocess.Popen[str], code: int = 0) -> str:
    output = process.communicate(timeout=900)[0]
    assert process.returncode == code, output[-4000:]
    return output


def aliases(client: mlflow.MlflowClient) -> dict[str, str]:
    """The aliases as strings: a SQL store gives ints, the server strings."""
    return {alias: str(v) for alias, v in client.get_registered_model(NAME).aliases.items()}


def story(start: Start, client: mlflow.MlflowClient) -> None:
    main = ["--profile", "smoke", "--registered_model", NAME]
    marks = [time.time()]
    finished(start("main", main))  # v1: the first champion, through the gate
    marks.append(time.time())
    finished(start("main", [*main, "--save_mode", "checkpoint"]))  # v2: the same model, not better
    assert aliases(client) == {"champion": "1", "challenger": "2"}
    client.set_registered_model_alias(NAME, "champion", "2")  # by hand, outside the pipeline
    by_hand = time.time()

    # a rollback racing a main's register: started the moment the register's run is
    started = int(1000 * time.time())
    third = start("main", [*main, "--force", "log_model"])  # v3: logged again, not better either
    deadline = time.monotonic() + 600
    registering = (
        "tags.`pipeline.step` = 'register' and attributes.status = 'RUNNING' "
        f"and attributes.start_time > {started}"
    )
    while not client.search_runs([e.experiment_id for e in client.search_experiments()], registering):
        assert third.poll() is None and time.monotonic() < deadline, "the main ended before its register"
        time.sleep(0.1)
    finished(
        start("rollback", ["--registered_model", NAME, "--to_version", "1", "--reason", "v2 was set by hand"])
    )
    finished(third)
    marks.append(time.time())
    # as if one after the other, in either order: v3 lost to whichever champion it met
    assert aliases(client) == {"champion": "1", "challenger": "3"}
    v3 = client.get_model_version(NAME, "3")
    assert v3.tags["gate"] == "failed" and v3.tags["gate_compared_version"] in ("1", "2")
    assert client.get_model_version(NAME, "2").tags[ROLLED_BACK_TAG]

    cleanup = ["--registered_model", NAME, "--keep_last", "1"]
    dry = finished(start("version_cleanup", [*cleanup, "--dry_run", "true"]))
    assert "protected from deletion: [2]" in dry  # a champion before: kept for a rollback
    finished(start("version_cleanup", [*cleanup, "--keep_champions", "1"]))
    assert sorted(str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")) == ["1", "3"]

    moves = history.read(client, NAME)
    champions = timeline.done(moves, "champion")
    assert [(m.from_version, m.to_version, m.how) for m in champions] == [
        (None, 1, "gate"), (1, 2, "manual"), (2, 1, "rollback")]  # fmt: skip
    assert [(m.from_version, m.to_version) for m in timeline.done(moves, "challenger")] == [
        (None, 1), (1, 2), (2, 3)]  # fmt: skip
    assert not [m for m in history.records(client, NAME) if m.state == timeline.PENDING]
    gate, manual, rollback = champions
    assert marks[0] < gate.when < marks[1] and gate.run_id and "no champion yet" in gate.reason
    assert manual.after is not None and manual.before is not None
    assert marks[1] < manual.after < by_hand < manual.before < rollback.when < marks[2]
    assert rollback.reason == "v2 was set by hand" and rollback.user

    def truth(at: float) -> int | None:
        return 1 if at >= rollback.when else 2 if at >= by_hand else 1 if at >= gate.when else None

    start_at, end_at = marks[0] - 5, marks[-1] + 5
    for i in range(500):
        at = start_at + (end_at - start_at) * i / 499
        within = manual.after < at < manual.before
        assert timeline.champion_at(moves, at) == ((None, (1, 2)) if within else (truth(at), None)), at
    inside = timeline.iso((manual.after + manual.before) / 2) or ""
    answer = finished(start("history", [NAME, "--json", "--at", inside]))
    assert '"champion": null, "between": [1, 2]' in answer
    card = client.get_model_version(NAME, "1").description
    assert "## Champion history" in card and "rollback" in card and "v2 was set by hand" in card


def test_the_champions_story_on_sqlite(
    smoke_main_run: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = smoke_main_run[0]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    env = os.environ | isolated_env(root) | {"PYTHONPATH": str(PROJECT_DIR), "MLFLOW_TRACKING_URI": uri}
    story(starter(root, env), mlflow.MlflowClient())


def test_the_champions_story_through_the_server(tmp_path: Path) -> None:
    with fresh_postgres_database() as backend, running_server(tmp_path / "server", backend) as srv:
        password = srv.admin_password()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env |= {k: v for k, v in isolated_env(tmp_path).items() if not k.startswith("MLFLOW_TRACKING")}
        env |= {
            "PYTHONPATH": str(PROJECT_DIR),
            "MLFLOW_TRACKING_URI": srv.uri,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": password,
        }
        with as_user(srv, "admin", password) as client:
            story(starter(tmp_path, env), client)
            rollback = timeline.done(history.read(client, NAME), "champion")[-1]
            assert rollback.user == "admin"  # the server's user, not the machine's
