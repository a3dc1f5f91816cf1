"""A step's own MLflow run, the runs above it, and the process that holds it.

``step_run`` opens (or, under ``mlflow run``, resumes) the run a step writes to, named and
tagged after the step; ``get_upstream`` checks the run ID a step was given; ``upstream_chain``
and ``lineage_tags`` follow the chain up. Process tags let ``main`` tell a dead run from a live
one; ``kill_point`` is the fault tests' way to kill a step at a named place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hf_finetune.config import Config, as_params
from hf_finetune.errors import UserError
from hf_finetune.tags import (
    ALIVE_TAG,
    HOST_TAG,
    LINEAGE_TAGS,
    PID_STARTED_TAG,
    PID_TAG,
    PROFILE_TAG,
    STEP_TAG,
    TASK_LINEAGE_TAGS,
    UPSTREAM_TAG,
)

CONFIG_ARTIFACT = "config.yaml"


# A step run's heartbeat: its ALIVE_TAG renewed this often (60 s); a run of another host silent
# for ten of these is taken as dead (its machine lost), one that never beat cannot be judged.
ALIVE_ENV = "PIPELINE_RUN_HEARTBEAT_S"
SILENT_BEATS = 10

# the tests' way to SIGKILL a step at a named point (README, "Failure behaviour"); never set it
KILL_AT_ENV = "PIPELINE_TEST_KILL_AT"


def get_upstream(run_id: str | None, expected_step: str, flag: str, task: str | None = None) -> Any:
    """Return the finished run ``run_id`` of ``expected_step`` (made for ``task``, where given and
    the run recorded its task), or raise a ``UserError``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not run_id:
        raise UserError(f"--{flag} is required: pass the run ID of a finished {expected_step} run")
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(
            f"run {run_id!r} (--{flag}) does not exist in tracking store "
            f"{mlflow.get_tracking_uri()}: pass the run ID of a finished "
            f"{expected_step} run (see `mlflow runs list --experiment-id <id>`)"
        ) from None
    step = run.data.tags.get(STEP_TAG)
    if step != expected_step:
        raise UserError(
            f"run {run_id} (--{flag}) is a {step or 'non-pipeline'} run, not a "
            f"{expected_step} run: pass the run ID of a {expected_step} run"
        )
    if run.info.status != "FINISHED":
        raise UserError(
            f"run {run_id} (--{flag}) is {run.info.status}, not FINISHED: "
            f"rerun {expected_step} and pass the new run ID"
        )
    made_for = run.data.params.get("config.task")
    if task and made_for and made_for != task:
        raise UserError(
            f"run {run_id} (--{flag}) is a {made_for} run, not {task}: pass --task {made_for}, "
            f"or the run ID of a {task} {expected_step} run"
        )
    return run


def upstream_chain(run: Any) -> dict[str, Any]:
    """``run`` and every run above it, by step, following ``pipeline.upstream_run_id`` tags."""
    import mlflow

    client = mlflow.MlflowClient()
    chain = {}
    while run is not None:
        chain[run.data.tags.get(STEP_TAG, "?")] = run
        parent_id = run.data.tags.get(UPSTREAM_TAG)
        run = client.get_run(parent_id) if parent_id else None
    return chain


def lineage_tags(run: Any) -> dict[str, str]:
    """The data and base-model tags a step carries down from its upstream run (and a task's own,
    ``TASK_LINEAGE_TAGS``, where the run has them)."""
    tags = {key: run.data.tags.get(key, "") for key in LINEAGE_TAGS}
    return tags | {key: run.data.tags[key] for key in TASK_LINEAGE_TAGS if key in run.data.tags}


# A SQL store logs a dataset by looking it up and inserting it when missing, with nothing between
# the two (MLflow 3.17, SqlAlchemyStore._log_inputs_impl). Two runs logging the same new dataset at
# once on PostgreSQL or MySQL can both miss it; the second insert then breaks the (experiment, name,
# digest) key and its whole request is rolled back. Trying again finds the row the other one added.
LOST_INSERT_RACE = re.compile(r"unique ?violation|duplicate key|unique constraint|duplicate entry", re.I)


INSERT_RACE_TRIES = 4


def retry_lost_insert_race(call: Callable[[], Any]) -> Any:
    """``call()``, tried again when the store says another writer inserted the same row first."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, INSERT_RACE_TRIES + 1):
        try:
            return call()
        except MlflowException as exc:
            if attempt == INSERT_RACE_TRIES or not LOST_INSERT_RACE.search(str(exc)):
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def step_run(
    step: str,
    profile: str,
    cfg: Config,
    upstream_run_id: str | None = None,
    system_metrics_interval_s: float | None = None,
) -> Iterator[tuple[str, Path]]:
    """Start (or, under ``mlflow run``, resume) this step's run; yield its ID and a scratch dir.

    Names the run after the step; tags it with the step, profile and upstream run; logs the
    merged config as ``config.*`` params (the raw entry-point parameters keep their own names) and
    as a YAML artifact. An exception inside marks the run FAILED. With ``system_metrics_interval_s``, MLflow
    samples CPU, memory, disk, network (and GPU where ``nvidia-ml-py`` finds one) every so many
    seconds into ``system/*`` metrics of the run while it is open.
    """
    import mlflow

    # `mlflow run` hands the run it created to the step through MLFLOW_RUN_ID. Take it and clear
    # it: left set, anything that starts a run later (the Trainer's callback) fails.
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    tags = {STEP_TAG: step, PROFILE_TAG: profile}
    if upstream_run_id:
        tags[UPSTREAM_TAG] = upstream_run_id
    # nested: main may run a light step in its own process, inside its parent run
    if system_metrics_interval_s is not None:
        mlflow.set_system_metrics_sampling_interval(system_metrics_interval_s)
        mlflow.set_system_metrics_samples_before_logging(1)  # each sample as soon as it is taken
    with mlflow.start_run(
        run_id=run_id,
        run_name=step,  # under `mlflow run` too: MLflow made the run with a random name
        tags=tags,
        nested=mlflow.active_run() is not None,
        # None: MLflow's own switch (MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING) still applies
        log_system_metrics=True if system_metrics_interval_s is not None else None,
    ) as run:
        alive = {ALIVE_TAG: f"{time.time():.0f}"}
        mlflow.set_tags(tags | process_tags() | alive)  # a resumed run ignores start_run's tags
        mlflow.log_params({f"config.{k}": v for k, v in as_params(cfg).items()})
        mlflow.log_dict(dataclasses.asdict(cfg), CONFIG_ARTIFACT)
        with tempfile.TemporaryDirectory(prefix=f"{step}-") as tmp, beating(run.info.run_id):
            yield run.info.run_id, Path(tmp)


def beat_seconds() -> float:
    """How often a step run renews its heartbeat (``PIPELINE_RUN_HEARTBEAT_S``, 60 s)."""
    value = os.environ.get(ALIVE_ENV, "60")
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise UserError(f"{ALIVE_ENV}={value!r} must be a number of seconds > 0")
    return seconds


@contextlib.contextmanager
def every(seconds: float, beat: Callable[[], None]) -> Iterator[None]:
    """Call ``beat`` every so many seconds, from a thread of its own, while the block runs (a
    heartbeat: a killed process stops beating). ``beat`` handles its own errors."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            beat()

    thread = threading.Thread(target=loop, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def beating(run_id: str) -> contextlib.AbstractContextManager[None]:
    """Renew the run's ``pipeline.alive_at`` while the block runs: how a process on another host
    tells this run is still held (a pid says nothing there)."""
    import mlflow

    client = mlflow.MlflowClient()

    def beat() -> None:
        with contextlib.suppress(Exception):  # a missed beat is made up by the next one
            client.set_tag(run_id, ALIVE_TAG, f"{time.time():.0f}")

    return every(beat_seconds(), beat)


def process_tags(pid: int | None = None) -> dict[str, str]:
    """A process of this host (this one by default), as tags: host, pid and start time (a pid
    alone can be reused). Raises ``psutil.NoSuchProcess`` if it is gone."""
    import psutil

    process = psutil.Process(pid)
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(process.pid),
        PID_STARTED_TAG: f"{process.create_time():.2f}",
    }


def holder_alive(tags: dict[str, str]) -> bool | None:
    """Is the process that holds this run alive? On this host, its pid says; on another, its
    heartbeat (silent for ten beats: dead). None when it cannot be told (another host's run that
    never beat, or a run that never said which process held it)."""
    import psutil

    if tags.get(HOST_TAG) != socket.gethostname() and ALIVE_TAG in tags:
        return time.time() - float(tags[ALIVE_TAG]) < SILENT_BEATS * beat_seconds()
    if tags.get(HOST_TAG) != socket.gethostname() or PID_TAG not in tags:
        return None
    try:
        holder = psutil.Process(int(tags[PID_TAG]))
        if holder.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
            return False
        return abs(holder.create_time() - float(tags.get(PID_STARTED_TAG, "0"))) < 1.0
    except psutil.NoSuchProcess:
        return False


def kill_point(name: str) -> None:
    """SIGKILL this process here when ``PIPELINE_TEST_KILL_AT`` names this point.

    For the fault tests: a real kill -9, at a known place, of the step and of every process
    between it and the outermost ``main`` or ``sweep`` that started it, that one included (as
    when a machine is lost: nobody is left to end the runs). Unset, it does nothing.
    """
    if os.environ.get(KILL_AT_ENV) != name:
        return
    import psutil

    sys.stdout.flush()
    parents = psutil.Process().parents()
    outermost = [i for i, p in enumerate(parents) if {"steps.main", "steps.sweep"} & set(p.cmdline())]
    chain = parents[: outermost[-1] + 1] if outermost else []  # a step started by hand: only itself
    for process in chain:
        process.send_signal(signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
