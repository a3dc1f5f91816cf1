"""Several processes on one store at once: the registry ends as if they had run one at a time.

The lock tests race real processes through a read-then-write of the registry, with a control that
shows the same race loses updates without the lock. The ``slow`` tests run two whole ``main``
pipelines at once on one store (SQLite, and PostgreSQL when ``PIPELINE_TEST_POSTGRES_URI`` names
one), and ``version_cleanup`` in a loop while aliases move onto old versions.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest

from steps import common, registry_lock
from steps.errors import UserError
from tests.conftest import PROJECT_DIR, isolated_env
from tests.helpers import Echo, child_runs, fresh_postgres_database, logged_model_status

RACE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import mlflow
    from steps import registry_lock

    name, barrier, parties, locked = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    client = mlflow.MlflowClient()
    (barrier / str(os.getpid())).touch()
    while len(list(barrier.iterdir())) < parties:  # all imported and ready: start together
        time.sleep(0.01)

    def increment():
        count = int(client.get_registered_model(name).tags["count"])
        time.sleep(1.0)  # the gap between reading the champion and moving it
        client.set_registered_model_tag(name, "count", str(count + 1))

    if locked:
        with registry_lock.registry_lock(client, name):
            increment()
    else:
        increment()
    """
)


def race(root: Path, parties: int, locked: bool) -> int:
    """``parties`` processes each add one to a registered model's tag; the count they leave."""
    client = mlflow.MlflowClient()
    name = f"race-{int(locked)}"
    client.create_registered_model(name, tags={"count": "0"})
    barrier = root / f"barrier-{name}"
    barrier.mkdir()
    env = os.environ | isolated_env(root) | {"PYTHONPATH": str(PROJECT_DIR)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, name, str(barrier), str(parties), "1" if locked else "0"], env=env
        )
        for _ in range(parties)
    ]
    assert [p.wait(timeout=120) for p in processes] == [0] * parties
    return int(client.get_registered_model(name).tags["count"])


def test_without_the_lock_concurrent_read_then_write_loses_updates(tracking: Path) -> None:
    """The control: the race the lock exists for is real on this store."""
    assert race(tracking, parties=3, locked=False) < 3


def test_the_lock_makes_concurrent_read_then_write_lose_nothing(tracking: Path) -> None:
    assert race(tracking, parties=3, locked=True) == 3
    assert not [m.name for m in mlflow.MlflowClient().search_registered_models() if "lock" in m.name]


def dead_process_tags() -> dict[str, str]:
    """The holder tags of a process that has exited."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from steps import common; print(json.dumps(common.process_tags()))",
        ],
        env=os.environ | {"PYTHONPATH": str(PROJECT_DIR)},
        capture_output=True,
        text=True,
        check=True,
    )
    tags = json.loads(done.stdout)
    assert common.holder_alive(tags) is False
    return tags


def test_a_lock_left_by_a_dead_process_is_broken(capsys: pytest.CaptureFixture[str]) -> None:
    client = mlflow.MlflowClient()
    client.create_registered_model(registry_lock.lock_name("spam"), tags=dead_process_tags())
    started = time.monotonic()
    with registry_lock.registry_lock(client, "spam", timeout_s=30):
        held = client.get_registered_model(registry_lock.lock_name("spam")).tags
        assert held[common.PID_TAG] == str(os.getpid())
    assert time.monotonic() - started < 5
    assert "now dead: breaking it" in capsys.readouterr().out
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_registered_model(registry_lock.lock_name("spam"))  # released


def test_a_lock_held_from_another_host_is_waited_for_then_reported_in_one_line() -> None:
    client = mlflow.MlflowClient()
    lock = registry_lock.lock_name("spam")
    client.create_registered_model(
        lock, tags={common.HOST_TAG: "gpu-box-7", common.PID_TAG: "4242", common.PID_STARTED_TAG: "1.0"}
    )
    with pytest.raises(UserError) as raised, registry_lock.registry_lock(client, "spam", timeout_s=0.5):
        pytest.fail("took a lock another host holds")
    message = str(raised.value)
    assert "\n" not in message
    assert "locked for over 0 s by process 4242 on host gpu-box-7" in message
    assert f"delete the registered model {lock!r}" in message
    assert client.get_registered_model(lock).tags[common.HOST_TAG] == "gpu-box-7"  # not ours to break


def test_the_lock_is_released_when_the_body_fails() -> None:
    client = mlflow.MlflowClient()
    with pytest.raises(RuntimeError), registry_lock.registry_lock(client, "spam"):
        raise RuntimeError("register failed half-way")
    with registry_lock.registry_lock(client, "spam", timeout_s=0.5):
        pass


# ----------------------------------------------------------------------------- whole pipelines
def start_main(root: Path, tracking_uri: str, *args: str) -> subprocess.Popen[str]:
    env = (
        os.environ
        | isolated_env(root)
        | {"PYTHONPATH": str(PROJECT_DIR), "MLFLOW_TRACKING_URI": tracking_uri}
    )
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return subprocess.Popen(
        [sys.executable, "-m", "steps.main", "--profile", "smoke", "--registered_model", "race-spam", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(
                os.environ.get("PIPELINE_TEST_CONCURRENT_POSTGRES") != "1",
                reason="two whole mains on PostgreSQL (~90 s): set PIPELINE_TEST_CONCURRENT_POSTGRES=1 "
                "(not yet in CI: its 30-minute budget)",
            ),
        ),
    ],
)
def test_two_mains_at_once_register_both_and_the_better_is_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smoke_main_run: tuple[Path, str], backend: str
) -> None:
    """SQLite: the session's smoke store, in use (one main reuses its steps, the other trains);
    PostgreSQL: a fresh database, both mains from scratch."""
    with fresh_postgres_database() if backend == "postgresql" else contextlib.nullcontext("") as postgres:
        if backend == "postgresql" and not postgres:
            pytest.skip("no PostgreSQL: set PIPELINE_TEST_POSTGRES_URI")
        root = tmp_path if backend == "postgresql" else smoke_main_run[0]
        uri = postgres or f"sqlite:///{root / 'mlflow.db'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.MlflowClient().search_experiments()  # the schema, made once before the race
        # two configurations (so two fine-tunes), no tolerance: the better F1 must end champion
        strict = ["--champion_tolerance", "0"]
        mains = [start_main(root, uri, *strict), start_main(root, uri, *strict, "--learning_rate", "1e-3")]
        outputs = [p.communicate(timeout=900)[0] for p in mains]
        for process, output in zip(mains, outputs, strict=True):
            assert process.returncode == 0, output[-4000:]

        client = mlflow.MlflowClient()
        experiments = [e.experiment_id for e in client.search_experiments()]
        main_ids = [re.findall(r"^main: finished run (\w+)$", out, re.MULTILINE)[-1] for out in outputs]
        assert {client.get_run(i).info.status for i in main_ids} == {"FINISHED"}
        registered = {child_runs(i)["register"].data.tags["model_version"] for i in main_ids}
        versions = {
            str(v.version): client.get_model_version("race-spam", v.version)
            for v in client.search_model_versions("name = 'race-spam'")
        }
        assert registered == set(versions) and len(versions) == 2  # both registered, nothing lost
        for version in versions.values():
            assert logged_model_status(client, "race-spam", version.version) == "READY"
            assert version.tags["persisted"] == "true" and "aliases_pending" not in version.tags
        aliases = client.get_registered_model("race-spam").aliases
        f1 = {number: float(v.tags["test_f1"]) for number, v in versions.items()}
        assert f1[str(aliases["champion"])] == max(f1.values()), (aliases, f1)
        assert str(aliases["challenger"]) == max(versions, key=int)
        assert not client.search_runs(experiments, "attributes.status = 'RUNNING'")
        assert not [
            m.name for m in client.search_registered_models() if m.name.endswith(registry_lock.SUFFIX)
        ]


CLEANUP_LOOP = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from steps import version_cleanup

    name, stop = sys.argv[1], Path(sys.argv[2])
    rounds = 0
    while not stop.exists() or rounds < 3:
        args = ["--profile", "smoke", "--registered_model", name, "--keep_last", "1"]
        assert version_cleanup.main(args) == 0
        rounds += 1
    print("rounds", rounds)
    """
)


def test_version_cleanup_never_deletes_a_version_an_alias_moves_onto(tracking: Path) -> None:
    """As when persist promotes v5 while another main has registered v6: the champion moves onto a
    version that is no longer among the newest ``keep_last``, while version_cleanup runs in a loop
    in another process. Every alias must always name a version that exists."""
    import random

    client = mlflow.MlflowClient()
    with mlflow.start_run():
        uri = mlflow.pyfunc.log_model(name="model", python_model=Echo()).model_uri
    name = "cleanup-race"
    stop = tracking / "stop"
    env = os.environ | isolated_env(tracking) | {"PYTHONPATH": str(PROJECT_DIR)}
    cleaner = subprocess.Popen(
        [sys.executable, "-c", CLEANUP_LOOP, name, str(stop)], env=env, stdout=subprocess.PIPE, text=True
    )
    random.seed(8)
    registered, champion = 0, None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with registry_lock.registry_lock(client, name):  # what register and persist do
            if champion is not None:  # still there, whatever the cleaner did meanwhile
                assert str(client.get_model_version_by_alias(name, "champion").version) == champion
            version = mlflow.register_model(uri, name).version
            registered += 1
            client.set_registered_model_alias(name, "challenger", version)
            existing = [str(v.version) for v in client.search_model_versions(f"name = '{name}'")]
            champion = random.choice(existing)  # often an old one that cleanup wants to delete
            client.set_registered_model_alias(name, "champion", champion)
        time.sleep(random.uniform(0, 0.3))
    stop.touch()
    output, _ = cleaner.communicate(timeout=120)
    assert cleaner.returncode == 0, output
    aliases = client.get_registered_model(name).aliases
    assert str(aliases["champion"]) == champion
    left = {str(v.version) for v in client.search_model_versions(f"name = '{name}'")}
    assert {str(v) for v in aliases.values()} <= left
    assert registered - len(left) >= 3, (registered, left)  # the cleaner really deleted versions
