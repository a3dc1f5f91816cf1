"""How ``main`` runs a step: through MLflow Projects as a child run, or inside its own process.

Also the housekeeping at the start of every main: runs left RUNNING by a dead process are marked
KILLED, and ``main`` runs that MLflow created but never started are marked FAILED.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from typing import Any

from hf_finetune import compat, logs, tracking
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.settings import PROJECT_DIR
from hf_finetune.tags import PID_TAG, STEP_TAG

MAIN = "main"  # the driver's own entry point
log = logs.logger(MAIN)
ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")


def declared_parameters() -> dict[str, set[str]]:
    """Entry point -> the parameters ``MLproject`` declares for it (MLflow's own parser)."""
    project = compat.load_project(str(PROJECT_DIR))
    return {name: set(ep.parameters) for name, ep in project._entry_points.items()}


def mark_dead_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark KILLED every pipeline run still RUNNING whose process on this host is gone.

    A process killed with SIGKILL (or lost with its machine) cannot end its run: the run would
    say RUNNING forever. Each step run records its host, pid and the pid's start time
    (``tracking.process_tags``); a run whose process no longer exists is marked here, at the start
    of every main, and so is one of another host whose heartbeat (``pipeline.alive_at``) fell
    silent. Runs of other hosts that never beat cannot be judged and are left alone (and
    ``find_resumable`` marks a dead run of the step it is about to run).
    """
    runs = client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.`{PID_TAG}` != ''", max_results=500
    )
    marked = []
    for run in runs:
        if tracking.holder_alive(run.data.tags) is False:
            client.set_terminated(run.info.run_id, "KILLED")
            step = run.data.tags.get(STEP_TAG, "?")
            log.info(f"run {run.info.run_id} ({step}) was left RUNNING by a dead process: marked KILLED")
            marked.append(run.info.run_id)
    return marked


NEVER_STARTED_AFTER_S = 24 * 3600  # a main whose environment was not ready a day later died


def conda_available() -> bool:
    """Whether MLflow could find conda here (its own rule: ``MLFLOW_CONDA_HOME``, or on PATH)."""
    return bool(os.environ.get("MLFLOW_CONDA_HOME") or os.environ.get("CONDA_EXE") or shutil.which("conda"))


def never_started(tags: dict[str, str], age_s: float, conda_here: bool) -> str | None:
    """Why a RUNNING ``main`` run that this project's code never tagged died, or None.

    ``mlflow run`` creates the run before it builds the environment: when that fails (no conda
    on the machine, no network for virtualenv) the run stays RUNNING and ``main`` never ran, so
    it has no ``pipeline.pid`` for ``mark_dead_runs`` to check.
    """
    if PID_TAG in tags or tags.get("mlflow.project.entryPoint") != MAIN:
        return None
    if tags.get("mlflow.source.name") != str(PROJECT_DIR):
        return None  # another project's main, or this one's from another checkout
    if tags.get("mlflow.project.env") == "conda" and not conda_here:
        return "MLflow could not build its conda environment (conda is not installed here)"
    if age_s > NEVER_STARTED_AFTER_S:
        return "its environment was never ready"
    return None


def close_never_started(client: Any, experiment_id: str, now_ms: int) -> list[str]:
    """Mark FAILED every ``main`` run that MLflow created but whose ``main`` never started."""
    runs = client.search_runs(
        [experiment_id],
        "attributes.status = 'RUNNING' and tags.`mlflow.project.entryPoint` = 'main'",
        max_results=200,
    )
    closed = []
    conda_here = conda_available()
    for run in runs:
        why = never_started(run.data.tags, (now_ms - run.info.start_time) / 1000, conda_here)
        if why:
            client.set_tag(run.info.run_id, "pipeline.closed_because", why)
            client.set_terminated(run.info.run_id, "FAILED")
            log.info(
                f"run {run.info.run_id} never started ({why}): marked FAILED; where conda is "
                "missing, run with --env-manager local"
            )
            closed.append(run.info.run_id)
    return closed


def run_in_process(step: str, profile: str, step_cfg: Config, upstream: str | None) -> str:
    """Run a light registry step inside main's process, as a child run of main.

    With ``env_manager=local`` a subprocess would run the same code in the same environment, and
    cost seconds of imports: a fully cached main would spend most of its time starting Python.
    """
    import mlflow
    from mlflow.entities import RunTag

    module = importlib.import_module(f"steps.{step}")  # the step by its entry point's name
    run_id = str(module.run(upstream, step_cfg, profile))
    parent = mlflow.active_run()
    assert parent is not None
    source = {k: v for k, v in parent.data.tags.items() if k.startswith(("mlflow.source.", "mlflow.git"))}
    mlflow.MlflowClient().log_batch(
        run_id, tags=[RunTag(k, v) for k, v in {"mlflow.project.entryPoint": step, **source}.items()]
    )
    return run_id


def launch(
    step: str, params: dict[str, str], env_manager: str, experiment_id: str, key_tags: dict[str, str]
) -> str:
    """Run one entry point through MLflow Projects as a child of the active run.

    MLflow makes a folder for each run it starts (where it would download ``path`` parameters)
    and never deletes it; here it is made in a temporary folder removed when the step ends, so
    that ``main`` does not leave one in ``/tmp`` per step and run.
    """
    import mlflow

    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory(prefix=f"mlflow-project-{step}-") as storage_dir:
        submitted = start_entry_point(step, params, env_manager, experiment_id, storage_dir)
        try:
            # tagged at once: a crashed run is found again to resume, and its process can be
            # checked (the step re-tags the run with its own process; `bash -c` execs into it)
            for key, value in (key_tags | launched_process_tags(submitted)).items():
                client.set_tag(submitted.run_id, key, value)
            finished = submitted.wait()
        except BaseException:  # Ctrl-C, or the store gone: the step does not outlive main
            submitted.cancel()
            end_unless_ended(client, submitted.run_id, "FAILED")
            raise
    end_unless_ended(client, submitted.run_id, "FINISHED" if finished else "FAILED")
    if not finished:
        raise UserError(f"step {step} failed (run {submitted.run_id}); its error is printed above")
    return str(submitted.run_id)


def start_entry_point(
    step: str, params: dict[str, str], env_manager: str, experiment_id: str, storage_dir: str
) -> Any:
    """Start the entry point's command as MLflow Projects' local backend does, and return at once.

    How, and why not ``mlflow.projects.run``: ``compat.run_project_without_waiting``. Waiting and
    the final status are left to ``launch``, as ``mlflow.projects.run`` would do them.
    """
    return compat.run_project_without_waiting(
        uri=str(PROJECT_DIR),
        experiment_id=experiment_id,
        entry_point=step,
        version=None,
        parameters=params,
        docker_args=None,
        backend_name="local",
        backend_config={},
        storage_dir=storage_dir,
        env_manager=env_manager,
        synchronous=True,
        run_name=None,
        build_image=False,
        docker_auth=None,
    )


def end_unless_ended(client: Any, run_id: str, status: str) -> None:
    """End the run with ``status`` unless its step ended it (a step ends its own run; one killed
    or crashed before it could leaves it RUNNING)."""
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status)


def launched_process_tags(submitted: Any) -> dict[str, str]:
    """Host, pid and start time of the process MLflow started for a step (empty if none)."""
    import psutil

    pid = getattr(getattr(submitted, "command_proc", None), "pid", None)
    if pid is None:
        return {}
    try:
        return tracking.process_tags(pid)
    except psutil.NoSuchProcess:
        return {}


def child_env_manager(given: str, own_run_tags: dict[str, str]) -> str:
    """The env manager for the steps: the one given, else the one ``mlflow run`` used for main.

    MLflow records a conda, virtualenv or uv environment as the tag ``mlflow.project.env`` on the
    run it starts; nested ``mlflow.projects.run`` calls do not inherit it by themselves.
    """
    chosen = (given if given != "auto" else "") or own_run_tags.get("mlflow.project.env", "local")
    if chosen not in ENV_MANAGERS:
        raise UserError(f"unknown env_manager {chosen!r}: use one of {', '.join(ENV_MANAGERS)}")
    return chosen
