"""main: run the pipeline's steps in order, each as a child run of one parent run.

Each step runs through MLflow Projects (its local backend) as its own entry point and its
own MLflow run, and gets the run ID of the step before it. Settings given to ``main`` reach every
step whose entry point in ``MLproject`` declares them; ``MLproject`` is the one list of which
step takes what.

Writes on the parent run: tags ``pipeline.step=main``, ``pipeline.profile`` and
``pipeline.<step>_run_id`` for each step; the merged config as ``config.*`` params; metrics
``test_f1``, ``classical_f1``, ``baseline_f1``, ``probe_f1``, ``steps_reused``; a description of
what the run did (``mlflow.note.content``); prepare's datasets and log_model's logged model,
linked to it; the pipeline report ``report/pipeline.html`` (``steps/report.py``). On the
experiment, where it has none of its own: its kind and description (``steps/ui.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from steps import cache, chain, common, compat, corpus, report, ui
from steps.chain import RESUME_PARAM
from steps.config import PROJECT_DIR, Config, check_save_mode, load_config
from steps.errors import UserError
from steps.tags import (
    ALREADY_TAG,
    GATE_REASON_TAG,
    GATE_TAG,
    INPUTS_TAG,
    KEY_TAG,
    LAST_CHECKPOINT_TAG,
    MODEL_ID_TAG,
    PID_TAG,
    PROFILE_TAG,
    REGISTERED_MODEL_TAG,
    REUSED_FROM_TAG,
    STEP_TAG,
    UPSTREAM_TAG,
    VERSION_TAG,
)

STEP = "main"
log = common.logger(STEP)
CHAIN = chain.CHAIN
ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")
STEP_NAMES = chain.STEPS
DESCRIPTION_TAG = "mlflow.note.content"  # what MLflow's UI shows as a run's description


# ----------------------------------------------------------------------------- pure functions
def step_parameters(
    declared: set[str],
    profile: str,
    overrides: dict[str, str],
    upstream_param: str | None,
    upstream_run_id: str | None,
) -> dict[str, str]:
    """The parameters one step gets: the profile, the settings it declares, the upstream run ID."""
    params = {"profile": profile} | step_overrides(declared, overrides)
    if upstream_param:
        if upstream_run_id is None:
            raise ValueError(f"{upstream_param} needs the previous step's run ID")
        params[upstream_param] = upstream_run_id
    return params


def forced_steps(force: str) -> set[str]:
    """``all``, or named steps: those and every step after them."""
    names = [name.strip() for name in force.split(",") if name.strip()]
    if not names or names == ["none"]:
        return set()
    if names == ["all"]:
        return set(STEP_NAMES)
    unknown = [name for name in names if name not in STEP_NAMES]
    if unknown:
        raise UserError(
            f"force names unknown step(s) {', '.join(unknown)}: use all or some of {', '.join(STEP_NAMES)}"
        )
    first = min(STEP_NAMES.index(name) for name in names)
    return set(STEP_NAMES[first:])


def step_overrides(declared: set[str], overrides: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in overrides.items() if key in declared}


def parent_tag(run_id: str, step: str) -> str:
    """The run ID of ``step`` above ``run_id`` in the chain."""
    import mlflow

    runs = common.upstream_chain(mlflow.MlflowClient().get_run(run_id))
    return str(runs[step].info.run_id)


def preflight(cfg: Config, data_accepted_before: Callable[[], bool]) -> None:
    """Catch the common mistakes before any run starts: one clear line instead of a failed chain.

    A local data file is read and checked whole, as ``prepare`` will, unless ``prepare`` already
    accepted these very bytes with these settings and this code (``data_accepted_before``: a
    finished run with its cache key, asked of the store only after the other checks): a rerun
    with nothing changed should not pay for reading it, nor for importing scikit-learn to split
    it. (A hub dataset is ``prepare``'s to fetch.)
    """
    from steps import modeling

    check_save_mode(cfg.save_mode, adapter=cfg.peft == "lora")
    modeling.check_precision(cfg.precision, modeling.available_device(cfg.device))
    if corpus.resolve_data_path(cfg.data) and not data_accepted_before():
        corpus.prepared(cfg)


# ----------------------------------------------------------------------------- MLflow
def declared_parameters() -> dict[str, set[str]]:
    """Entry point -> the parameters ``MLproject`` declares for it (MLflow's own parser)."""
    project = compat.load_project(str(PROJECT_DIR))
    return {name: set(ep.parameters) for name, ep in project._entry_points.items()}


def data_digest(cfg: Config) -> str:
    """What ``prepare`` will read: a file's bytes (and those of the ``dataset.yaml`` beside it, which
    prepare records for the model card), or a hub dataset's id and split."""
    path = corpus.resolve_data_path(cfg.data)
    if not path:
        return f"hub:{cfg.data}:{cfg.hub_split}"
    described = corpus.dataset_card_file(cfg.data)
    return cache.file_digest(path) + (f"+{cache.file_digest(described)}" if described else "")


def step_key_inputs(
    step: str,
    args: common.StepArgs,
    declared: dict[str, set[str]],
    specs: dict[str, str],
    upstream: str | None,
) -> dict[str, Any]:
    """What ``step``'s cache key covers in this main: its settings, its code, its upstream run and,
    for ``prepare``, the data."""
    step_cfg = load_config(args.profile, step_overrides(declared[step], args.overrides))
    return cache.key_inputs(
        step,
        step_cfg,
        cache.step_fields(step),
        cache.code_hash(step, specs[step]),
        upstream,
        data_digest(step_cfg) if step == chain.PREPARE else None,
    )


def newest_runs(
    client: Any, experiment_ids: list[str], step: str, condition: str, max_results: int
) -> list[Any]:
    """Runs of ``step`` in these experiments that meet ``condition`` (a search filter), newest first."""
    return list(
        client.search_runs(
            experiment_ids,
            f"tags.`{STEP_TAG}` = '{step}' and {condition}",
            order_by=["attributes.start_time DESC"],
            max_results=max_results,
        )
    )


def find_cached(client: Any, experiment_ids: list[str], step: str, key: str) -> Any | None:
    """The newest finished run of ``step`` with this cache key in these experiments, if any."""
    runs = newest_runs(
        client,
        experiment_ids,
        step,
        f"tags.`{KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        1,
    )
    return runs[0] if runs else None


def previous_inputs(client: Any, experiment_id: str, step: str) -> list[dict[str, Any]]:
    """The cache inputs of recent keyed runs of ``step``, to say what changed."""
    runs = newest_runs(client, [experiment_id], step, f"tags.`{INPUTS_TAG}` != ''", 50)
    return [json.loads(run.data.tags[INPUTS_TAG]) for run in runs]


def mark_dead_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark KILLED every pipeline run still RUNNING whose process on this host is gone.

    A process killed with SIGKILL (or lost with its machine) cannot end its run: the run would
    say RUNNING forever. Each step run records its host, pid and the pid's start time
    (``common.process_tags``); a run whose process no longer exists is marked here, at the start
    of every main. Runs of other hosts cannot be checked from here and are left alone (and
    ``find_resumable`` marks a dead run of the step it is about to run).
    """
    runs = client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.`{PID_TAG}` != ''", max_results=500
    )
    marked = []
    for run in runs:
        if common.holder_alive(run.data.tags) is False:
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
    if PID_TAG in tags or tags.get("mlflow.project.entryPoint") != STEP:
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


def find_resumable(client: Any, experiment_id: str, step: str, key: str) -> Any | None:
    """The newest unfinished run of ``step`` with this key that logged a checkpoint to resume from.

    A run still marked RUNNING whose process is alive belongs to another main doing the same
    work right now: it is neither marked nor resumed. One whose process is gone, or that never
    said which process held it, died without saying so (killed, machine lost): it is marked
    KILLED and resumed from.
    """
    runs = newest_runs(
        client,
        [experiment_id],
        step,
        f"tags.`{KEY_TAG}` = '{key}' and attributes.status != 'FINISHED'",
        5,
    )
    for run in runs:
        if run.info.status == "RUNNING":
            if common.holder_alive(run.data.tags):
                continue  # another main is training it now
            client.set_terminated(run.info.run_id, "KILLED")
        if LAST_CHECKPOINT_TAG in run.data.tags:
            return run
    return None


def record_reuse(
    client: Any, parent: Any, step: str, profile: str, original: Any, upstream: str | None
) -> str:
    """A child run of this main that says ``step`` was reused, with the original's record.

    It copies the original's params, latest metrics, lineage tags and dataset inputs (not its
    artifacts: downstream steps read those from the original, whose ID they are given), so that
    every main run has one child per step.
    """
    from mlflow.entities import Metric, Param, RunTag

    tags = {
        "mlflow.parentRunId": parent.info.run_id,
        "mlflow.runName": f"{step} (reused)",
        STEP_TAG: step,
        PROFILE_TAG: profile,
        REUSED_FROM_TAG: original.info.run_id,
        **common.lineage_tags(original),
    }
    if upstream:
        tags[UPSTREAM_TAG] = upstream
    marker = client.create_run(parent.info.experiment_id, tags={k: v for k, v in tags.items() if v})
    run_id = marker.info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in original.data.metrics.items()],
        params=[Param(k, v) for k, v in original.data.params.items()],
        tags=[
            RunTag(k, v)
            for k, v in original.data.tags.items()
            if k.startswith(("pipeline.model", "pipeline.baseline")) or k == "save_mode"
        ],
    )
    if original.inputs and original.inputs.dataset_inputs:
        inputs = list(original.inputs.dataset_inputs)
        common.retry_lost_insert_race(lambda: client.log_inputs(run_id, datasets=inputs))
    client.set_terminated(run_id, "FINISHED")
    return str(run_id)


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
        return common.process_tags(pid)
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


REUSE, RESUME, IN_PROCESS, RUN = "reuse", "resume", "in process", "run"


@dataclasses.dataclass(frozen=True)
class Lookups:
    """What the store says about one cacheable step in this main (all empty for the others)."""

    key_tags: dict[str, str] = dataclasses.field(default_factory=dict)
    cached: Any = None  # a finished run with this key
    resumable: Any = None  # an unfinished run with this key and a checkpoint to resume from
    changed: str = ""  # what changed since the closest earlier run


@dataclasses.dataclass(frozen=True)
class Plan:
    action: str  # REUSE, RESUME, IN_PROCESS or RUN
    says: str  # the line main prints for the step


def decide(step: str, forced: bool, env_manager: str, found: Lookups) -> Plan:
    """What main does with ``step``: reuse a cached run, resume a killed one, run it inside
    main's process (a registry step, when the steps share main's environment), or run it."""
    if step in chain.ALWAYS_RUN:
        says = "running (changes the registry: never skipped, idempotent)"
        return Plan(IN_PROCESS if env_manager == "local" else RUN, says)
    if found.cached is not None and not forced:
        return Plan(REUSE, f"reused run {found.cached.info.run_id} (key unchanged)")
    if found.resumable is not None and not forced:
        killed = found.resumable.info.run_id
        return Plan(RESUME, f"running (resuming killed run {killed} from its last checkpoint)")
    return Plan(RUN, f"running ({'forced' if forced else found.changed})")


def look_up(
    client: Any, experiment_id: str, step: str, inputs: dict[str, Any], forced: bool, resumable: bool
) -> Lookups:
    """Ask the store only what ``decide`` will need: nothing about the past when forced."""
    key = cache.cache_key(inputs)
    key_tags = {KEY_TAG: key, INPUTS_TAG: json.dumps(inputs, sort_keys=True)}
    if forced:
        return Lookups(key_tags)
    cached = find_cached(client, [experiment_id], step, key)
    if cached is not None:
        return Lookups(key_tags, cached=cached)
    return Lookups(
        key_tags,
        resumable=find_resumable(client, experiment_id, step, key) if resumable else None,
        changed=what_changed_since(client, experiment_id, step, inputs),
    )


def run(args: common.StepArgs, env_manager: str, force: str = "") -> str:
    import mlflow

    child_env_manager(env_manager, {})  # a misspelt one fails before any run starts
    forced = forced_steps(force)
    cfg = common.config_for(args)
    declared = declared_parameters()
    specs = cache.entry_point_specs()
    client = mlflow.MlflowClient()
    # the data is read once, here: its digest is prepare's key now and in the loop below
    prepare_inputs = step_key_inputs(chain.PREPARE, args, declared, specs, None)

    def data_accepted_before() -> bool:  # by a finished prepare run of this key, in any experiment
        if chain.PREPARE in forced:  # reread whatever the store says: no need to ask it
            return False
        every_experiment = [e.experiment_id for e in client.search_experiments()]
        key = cache.cache_key(prepare_inputs)
        return find_cached(client, every_experiment, chain.PREPARE, key) is not None

    preflight(cfg, data_accepted_before)

    tags = {STEP_TAG: STEP, PROFILE_TAG: args.profile}
    run_name = f"{STEP} {args.profile}"
    with mlflow.start_run(
        run_id=os.environ.pop("MLFLOW_RUN_ID", None), run_name=run_name, tags=tags
    ) as parent:
        experiment_id = parent.info.experiment_id
        env_manager = child_env_manager(env_manager, client.get_run(parent.info.run_id).data.tags)
        if env_manager == "local":
            # `local` runs `python -m steps.<name>` from PATH: make that this interpreter, so a step
            # never lands in another Python when the virtualenv was not activated.
            bin_dir = os.path.dirname(sys.executable)
            os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        mlflow.set_tags(tags | common.process_tags())
        ui.mark_experiment(client, experiment_id)
        mark_dead_runs(client, experiment_id)
        close_never_started(client, experiment_id, int(time.time() * 1000))
        mlflow.log_params({f"config.{k}": str(v) for k, v in dataclasses.asdict(cfg).items()})
        # tags, not params: under `mlflow run` these are entry-point parameters, logged already
        mlflow.set_tags({"pipeline.env_manager": env_manager, "pipeline.force": force or "none"})
        upstream: str | None = None
        reused = 0
        for step, upstream_param in CHAIN:
            params = step_parameters(declared[step], args.profile, args.overrides, upstream_param, upstream)
            found = Lookups()
            if step not in chain.ALWAYS_RUN:
                inputs = (
                    prepare_inputs
                    if step == chain.PREPARE
                    else step_key_inputs(step, args, declared, specs, upstream)
                )
                found = look_up(
                    client, experiment_id, step, inputs, step in forced, RESUME_PARAM in declared[step]
                )
            plan = decide(step, step in forced, env_manager, found)
            common.logger(step).info(plan.says)
            if plan.action == REUSE:
                assert found.cached is not None
                record_reuse(client, parent, step, args.profile, found.cached, upstream)
                upstream = found.cached.info.run_id
                reused += 1
            elif plan.action == IN_PROCESS:
                step_cfg = load_config(args.profile, step_overrides(declared[step], args.overrides))
                upstream = run_in_process(step, args.profile, step_cfg, upstream)
            else:
                if plan.action == RESUME:
                    assert found.resumable is not None
                    params[RESUME_PARAM] = found.resumable.info.run_id
                upstream = launch(step, params, env_manager, experiment_id, found.key_tags)
            mlflow.set_tag(f"pipeline.{step}_run_id", upstream)
        assert upstream is not None  # CHAIN is not empty
        metrics = client.get_run(parent_tag(upstream, chain.EVALUATE)).data.metrics
        summary: dict[str, float] = {k: metrics[k] for k in ui.HEADLINE_METRICS if k in metrics}
        mlflow.log_metrics(summary | {"steps_reused": float(reused)})
        finish_parent(client, parent.info.run_id, args.profile, cfg)
        log.info(
            "done; "
            + ", ".join(f"{k}={v:.4f}" for k, v in summary.items())
            + f"; {reused} of {len(CHAIN)} steps reused"
        )
        return parent.info.run_id


def describe(
    profile: str, cfg: Config, actions: dict[str, str], metrics: dict[str, float], registered: dict[str, str]
) -> str:
    """The parent run's description: what this run did, in a few sentences (Markdown)."""
    ran = [step for step, action in actions.items() if action != "reused"]
    reused = [step for step, action in actions.items() if action == "reused"]
    lines = [
        f"Profile `{profile}`{f' on `{common.redact(cfg.data)}`' if cfg.data else ''}, base model "
        f"`{cfg.base_model}`: ran {', '.join(ran) or 'no step'}"
        + (
            f"; reused {', '.join(reused)} from earlier runs (nothing they depend on changed)."
            if reused
            else "."
        )
    ]
    if "test_f1" in metrics:
        baselines = [
            f"{label} {metrics[key]:.3f}"
            for key, label in (
                ("classical_f1", "TF-IDF + linear SVM"),
                ("baseline_f1", "untrained base model"),
            )
            if key in metrics
        ]
        lines.append(
            f"Test F1 **{metrics['test_f1']:.3f}**"
            + (f" (same rows: {', '.join(baselines)})." if baselines else ".")
        )
    if registered:
        aliases = registered.get("aliases") or "no alias"
        what = "Already registered as" if registered.get("already") else "Registered"
        lines.append(
            f"{what} `{registered['name']}` version {registered['version']} ({aliases}); "
            f"gate {registered.get('gate', '?')}: {registered.get('reason', '')}."
        )
    lines.append(
        f"The whole story, with curves and the gate's comparison: `{report.REPORT_PATH}` among the artifacts."
    )
    return "\n\n".join(lines)


def finish_parent(client: Any, run_id: str, profile: str, cfg: Config) -> None:
    """What a reader of the parent run sees: its description, the datasets and the logged model
    its children produced, linked to it, and the pipeline report. None of it is the pipeline's
    state: by now the registry has changed, so a part that fails is reported (a warning, and the
    tag ``pipeline.report_error``) and never fails main."""
    parts: list[tuple[str, Callable[[], Any]]] = [
        (
            "description",
            lambda: client.set_tag(run_id, DESCRIPTION_TAG, describe_run(client, run_id, profile, cfg)),
        ),
        ("links", lambda: link_outputs(client, run_id)),
        ("report", lambda: report.write(client, run_id)),
    ]
    failed = []
    for part, write in parts:
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - see above
            failed.append(f"{part}: {common.redact(str(exc))}"[:500])
            log.warning(f"the parent run's {part} was not written: {common.redact(str(exc))}")
    if failed:
        client.set_tag(run_id, "pipeline.report_error", "; ".join(failed)[:5000])


def chain_runs(client: Any, run_id: str) -> dict[str, Any]:
    """The run of each step of this main (the original of a reused one)."""
    parent = client.get_run(run_id)
    return {step: client.get_run(parent.data.tags[f"pipeline.{step}_run_id"]) for step in STEP_NAMES}


def describe_run(client: Any, run_id: str, profile: str, cfg: Config) -> str:
    runs = chain_runs(client, run_id)
    actions = {
        step: "ran" if run.data.tags.get("mlflow.parentRunId") == run_id else "reused"
        for step, run in runs.items()
    }
    register_tags = runs[chain.REGISTER].data.tags
    registered: dict[str, str] = {}
    if VERSION_TAG in register_tags:
        name, number = register_tags[REGISTERED_MODEL_TAG], register_tags[VERSION_TAG]
        try:
            aliases = ", ".join(sorted(client.get_model_version(name, number).aliases))
        except Exception:  # noqa: BLE001 - deleted since: the description says what was registered
            aliases = "deleted since"
        registered = {
            "name": name,
            "version": number,
            "aliases": aliases,
            "gate": register_tags.get(GATE_TAG, ""),
            "reason": register_tags.get(GATE_REASON_TAG, ""),
            "already": register_tags.get(ALREADY_TAG, ""),
        }
    return describe(profile, cfg, actions, runs[chain.EVALUATE].data.metrics, registered)


def link_outputs(client: Any, run_id: str) -> None:
    """Link prepare's datasets and log_model's logged model to the parent run."""
    from mlflow.entities import LoggedModelOutput

    runs = chain_runs(client, run_id)
    inputs = runs[chain.PREPARE].inputs
    datasets = list(inputs.dataset_inputs) if inputs and inputs.dataset_inputs else []
    if datasets:
        common.retry_lost_insert_race(lambda: client.log_inputs(run_id, datasets=datasets))
    model_id = runs[chain.LOG_MODEL].data.tags.get(MODEL_ID_TAG)
    if model_id:
        client.log_outputs(run_id, [LoggedModelOutput(model_id, 0)])


def what_changed_since(client: Any, experiment_id: str, step: str, inputs: dict[str, Any]) -> str:
    return cache.what_changed(previous_inputs(client, experiment_id, step), inputs)


def main(argv: list[str] | None = None) -> int:
    parser = common.step_parser(__doc__)
    parser.add_argument(
        "--env_manager",
        default="",
        help="how MLflow runs each step: local (this environment), virtualenv, uv or conda; "
        "auto (the default): the one `mlflow run` used for main, else local",
    )
    parser.add_argument(
        "--force",
        default="",
        help="rerun these steps and all after them (comma-separated), or all; none (the default)",
    )
    ns, _ = parser.parse_known_args(argv)
    args = common.parse_step_args(parser, argv)
    return common.cli(STEP, lambda: run(args, ns.env_manager or "", ns.force or ""))


if __name__ == "__main__":
    common.exit_quickly(main())
