"""Several processes on one store at once: the registry ends as if they had run one at a time.

The lock tests race real processes through a read-then-write of the registry, with a control that
shows the same race loses updates without the lock. On PostgreSQL, two runs log one new dataset at
the same moment, with a control that shows the store's insert losing without the retry. And
``version_cleanup`` runs in a loop while aliases move onto old versions. Two whole pipelines at
once: tests/e2e/test_concurrent_mains.py and tests/e2e/test_server_pipelines.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

from hf_finetune import reuse, tracking
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.registry import locks
from hf_finetune.tags import (
    ALIVE_TAG,
    HOST_TAG,
    KEY_TAG,
    LAST_CHECKPOINT_TAG,
    PID_STARTED_TAG,
    PID_TAG,
    STEP_TAG,
)
from tests.conftest import PROJECT_DIR, isolated_env
from tests.recorded import (
    POSTGRES_ENV,
    Echo,
    fresh_postgres_database,
)

RACE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import mlflow
    from hf_finetune.registry import locks

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
        with locks.registry_lock(client, name):
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
            "import json; from hf_finetune import tracking; print(json.dumps(tracking.process_tags()))",
        ],
        env=os.environ | {"PYTHONPATH": str(PROJECT_DIR)},
        capture_output=True,
        text=True,
        check=True,
    )
    tags = json.loads(done.stdout)
    assert tracking.holder_alive(tags) is False
    return tags


def test_a_lock_left_by_a_dead_process_is_broken(capsys: pytest.CaptureFixture[str]) -> None:
    client = mlflow.MlflowClient()
    client.create_registered_model(locks.lock_name("spam"), tags=dead_process_tags())
    started = time.monotonic()
    with locks.registry_lock(client, "spam", timeout_s=30):
        held = client.get_registered_model(locks.lock_name("spam")).tags
        assert held[PID_TAG] == str(os.getpid())
    assert time.monotonic() - started < 5
    assert "now dead: breaking it" in capsys.readouterr().out
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_registered_model(locks.lock_name("spam"))  # released


def test_a_lock_held_from_another_host_is_waited_for_then_reported_in_one_line() -> None:
    client = mlflow.MlflowClient()
    lock = locks.lock_name("spam")
    client.create_registered_model(
        lock, tags={HOST_TAG: "gpu-box-7", PID_TAG: "4242", PID_STARTED_TAG: "1.0"}
    )
    with pytest.raises(UserError) as raised, locks.registry_lock(client, "spam", timeout_s=0.5):
        pytest.fail("took a lock another host holds")
    message = str(raised.value)
    assert "\n" not in message
    assert "locked for over 0 s by process 4242 on host gpu-box-7" in message
    assert f"delete the registered model {lock!r}" in message
    assert client.get_registered_model(lock).tags[HOST_TAG] == "gpu-box-7"  # not ours to break


def test_the_lock_is_released_when_the_body_fails() -> None:
    client = mlflow.MlflowClient()
    with pytest.raises(RuntimeError), locks.registry_lock(client, "spam"):
        raise RuntimeError("register failed half-way")
    with locks.registry_lock(client, "spam", timeout_s=0.5):
        pass


# ----------------------------------------------------------------------------- dataset inputs
@contextlib.contextmanager
def first_dataset_inserts_meet(parties: int) -> Iterator[None]:
    """Hold each thread's first insert of a new dataset row until ``parties`` threads are there:
    every one of them has looked the dataset up and not found it, as when two runs race."""
    from mlflow.store.tracking.dbmodels.models import SqlDataset
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    barrier = threading.Barrier(parties, timeout=60)
    waited = threading.local()

    def before_flush(session: Any, _context: Any, _instances: Any) -> None:
        if not getattr(waited, "once", False) and any(isinstance(o, SqlDataset) for o in session.new):
            waited.once = True
            barrier.wait()

    event.listen(Session, "before_flush", before_flush)
    try:
        yield
    finally:
        event.remove(Session, "before_flush", before_flush)


def log_one_new_dataset_at_once(uri: str, name: str, log: Callable[[Callable[[], None]], None]) -> list[Any]:
    """Two runs log the same new dataset at the same moment; ``log(call)`` makes each call.
    Returns what each thread raised (None when it did not) and checks nothing else."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    client = mlflow.MlflowClient(tracking_uri=uri)
    dataset = Dataset(name=name, digest="414edfe9", source_type="local", source='{"uri": "data/x.csv"}')
    inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])]
    run_ids = [client.create_run("0").info.run_id for _ in range(2)]
    raised: list[Any] = [None, None]

    def one(i: int) -> None:
        try:
            log(lambda: client.log_inputs(run_ids[i], datasets=inputs))
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            raised[i] = exc

    with first_dataset_inserts_meet(2):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    for i, run_id in enumerate(run_ids):
        names = [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs]
        assert names == ([] if raised[i] else [name])
    return raised


def test_two_runs_logging_one_new_dataset_at_once_both_keep_it() -> None:
    """On PostgreSQL (as in CI's race of two mains through a server), the store's look-up-then-
    insert of a dataset loses to a concurrent insert; prepare and main retry that call."""
    with fresh_postgres_database() as uri:
        if not uri:
            pytest.skip(f"no PostgreSQL: set {POSTGRES_ENV} (deploy/postgres/start-local.sh)")
        plain = log_one_new_dataset_at_once(uri, "race-plain", lambda call: call())
        assert sorted(map(bool, plain)) == [False, True], "the control did not race"
        lost = next(e for e in plain if e)
        assert tracking.LOST_INSERT_RACE.search(str(lost)), lost
        assert log_one_new_dataset_at_once(uri, "race-retried", tracking.retry_lost_insert_race) == [
            None,
            None,
        ]


def test_a_lost_insert_race_is_retried_and_other_errors_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException

    monkeypatch.setattr(time, "sleep", lambda _s: None)
    calls: list[int] = []

    def fails(times: int, message: str) -> Callable[[], str]:
        def call() -> str:
            calls.append(1)
            if len(calls) <= times:
                raise MlflowException(message)
            return "logged"

        return call

    lost = '(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"'
    assert tracking.retry_lost_insert_race(fails(2, lost)) == "logged" and len(calls) == 3
    calls.clear()
    with pytest.raises(MlflowException, match="dataset_pk"):
        tracking.retry_lost_insert_race(fails(99, lost))
    assert len(calls) == tracking.INSERT_RACE_TRIES
    calls.clear()
    with pytest.raises(MlflowException, match="not found"):
        tracking.retry_lost_insert_race(fails(1, "Run 'abc' not found"))
    assert len(calls) == 1


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
        with locks.registry_lock(client, name):  # what register and persist do
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


def test_a_run_of_another_host_is_alive_while_it_beats_and_dead_when_it_falls_silent() -> None:
    other = {HOST_TAG: "gpu-box-7", PID_TAG: "4242", PID_STARTED_TAG: "1.0"}
    silence = tracking.SILENT_BEATS * tracking.beat_seconds()
    assert tracking.holder_alive(other) is None  # never beat: cannot be told from here
    assert tracking.holder_alive(other | {ALIVE_TAG: f"{time.time() - 5:.0f}"}) is True
    assert tracking.holder_alive(other | {ALIVE_TAG: f"{time.time() - silence - 5:.0f}"}) is False


def test_a_step_run_renews_its_heartbeat_while_open_and_not_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracking.ALIVE_ENV, "0.2")
    client = mlflow.MlflowClient()
    with tracking.step_run("prepare", "smoke", Config()) as (run_id, _):
        first = float(client.get_run(run_id).data.tags[ALIVE_TAG])
        time.sleep(2.5)
        renewed = float(client.get_run(run_id).data.tags[ALIVE_TAG])
    assert renewed >= first + 2  # beats every 0.2 s, in whole seconds
    time.sleep(1.5)
    assert float(client.get_run(run_id).data.tags[ALIVE_TAG]) == pytest.approx(renewed, abs=1)


@pytest.mark.parametrize("silent_for_s", [5, 3600])
def test_a_finetune_another_host_still_trains_is_left_alone_and_a_silent_one_is_resumed(
    silent_for_s: int,
) -> None:
    client = mlflow.MlflowClient()
    experiment = client.create_experiment(f"resumable-{silent_for_s}")
    run = client.create_run(experiment, tags={
        STEP_TAG: "finetune", KEY_TAG: "k1", LAST_CHECKPOINT_TAG: "checkpoint-3", HOST_TAG: "gpu-box-7",
        PID_TAG: "4242", PID_STARTED_TAG: "1.0", ALIVE_TAG: f"{time.time() - silent_for_s:.0f}",
    })  # fmt: skip
    found = reuse.find_resumable(client, experiment, "finetune", "k1")
    status = client.get_run(run.info.run_id).info.status
    if silent_for_s < tracking.beat_seconds():  # beating: another main is training it now
        assert (found, status) == (None, "RUNNING")
    else:  # its machine is lost: marked, and resumed from its checkpoint
        assert (found.info.run_id, status) == (run.info.run_id, "KILLED")
