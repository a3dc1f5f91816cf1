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
import os
import sys
import time
from collections.abc import Callable

from hf_finetune import cache, chain, cli, corpus, logs, reuse, sources, tracking, ui
from hf_finetune.chain import RESUME_PARAM
from hf_finetune.config import Config
from hf_finetune.driver import (
    MAIN,
    child_env_manager,
    close_never_started,
    declared_parameters,
    launch,
    mark_dead_runs,
    run_in_process,
)
from hf_finetune.errors import UserError
from hf_finetune.profiles import load_config
from hf_finetune.reuse import Lookups, find_cached, look_up, record_reuse, step_key_inputs, step_overrides
from hf_finetune.settings import check_save_mode
from hf_finetune.summary import finish_parent
from hf_finetune.tags import (
    PROFILE_TAG,
    STEP_TAG,
)
from hf_finetune.tasks import registry

STEP = MAIN
log = logs.logger(STEP)
CHAIN = chain.CHAIN
STEP_NAMES = chain.STEPS


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


def parent_tag(run_id: str, step: str) -> str:
    """The run ID of ``step`` above ``run_id`` in the chain."""
    import mlflow

    runs = tracking.upstream_chain(mlflow.MlflowClient().get_run(run_id))
    return str(runs[step].info.run_id)


def preflight(cfg: Config, data_accepted_before: Callable[[], bool]) -> None:
    """Catch the common mistakes before any run starts: one clear line instead of a failed chain.

    A local data file is read and checked whole, as ``prepare`` will, unless ``prepare`` already
    accepted these very bytes with these settings and this code (``data_accepted_before``: a
    finished run with its cache key, asked of the store only after the other checks): a rerun
    with nothing changed should not pay for reading it, nor for importing scikit-learn to split
    it. (A hub dataset is ``prepare``'s to fetch.)
    """
    import mlflow

    from hf_finetune import devices
    from hf_finetune.registry.models import check_registered_model

    task = registry.task_of(cfg)
    check_save_mode(cfg.save_mode, adapter=cfg.peft == "lora")
    check_registered_model(mlflow.MlflowClient(), cfg.registered_model, task)
    if cfg.save_mode == "reference":
        from hf_finetune import hub

        problem = task.reference_problem(hub.resolve_base_model(cfg.base_model))
        if problem:
            raise UserError(f"save_mode reference of base model {cfg.base_model}: {problem}")
    devices.check_precision(cfg.precision, devices.available_device(cfg.device))
    if sources.resolve_data_path(cfg.data) and not data_accepted_before():
        corpus.prepared(cfg, registry.task_of(cfg))


# ----------------------------------------------------------------------------- MLflow
def steps_until(until: str) -> tuple[tuple[str, str | None], ...]:
    """The chain up to and including ``until`` (all of it for "" or none)."""
    if until in ("", "none"):
        return CHAIN
    if until not in STEP_NAMES:
        raise UserError(f"until names unknown step {until!r}: use one of {', '.join(STEP_NAMES)}")
    return CHAIN[: STEP_NAMES.index(until) + 1]


def run(args: cli.StepArgs, env_manager: str, force: str = "", until: str = "") -> str:
    import mlflow

    child_env_manager(env_manager, {})  # a misspelt one fails before any run starts
    forced = forced_steps(force)
    steps = steps_until(until)
    cfg = cli.config_for(args)
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
        mlflow.set_tags(tags | tracking.process_tags())
        ui.mark_experiment(client, experiment_id)
        mark_dead_runs(client, experiment_id)
        close_never_started(client, experiment_id, int(time.time() * 1000))
        mlflow.log_params({f"config.{k}": str(v) for k, v in dataclasses.asdict(cfg).items()})
        # tags, not params: under `mlflow run` these are entry-point parameters, logged already
        mlflow.set_tags({"pipeline.env_manager": env_manager, "pipeline.force": force or "none"})
        upstream: str | None = None
        reused = 0
        for step, upstream_param in steps:
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
            plan = reuse.decide(step, step in forced, env_manager, found)
            logs.logger(step).info(plan.says)
            if plan.action == reuse.REUSE:
                assert found.cached is not None
                record_reuse(client, parent, step, args.profile, found.cached, upstream)
                upstream = found.cached.info.run_id
                reused += 1
            elif plan.action == reuse.IN_PROCESS:
                step_cfg = load_config(args.profile, step_overrides(declared[step], args.overrides))
                upstream = run_in_process(step, args.profile, step_cfg, upstream)
            else:
                if plan.action == reuse.RESUME:
                    assert found.resumable is not None
                    params[RESUME_PARAM] = found.resumable.info.run_id
                upstream = launch(step, params, env_manager, experiment_id, found.key_tags)
            mlflow.set_tag(f"pipeline.{step}_run_id", upstream)
        assert upstream is not None  # CHAIN is not empty
        if len(steps) < len(CHAIN):  # --until: a sweep's trial, or a look at the first steps
            mlflow.log_metric("steps_reused", float(reused))
            ran = ", ".join(step for step, _ in steps)
            mlflow.set_tag(
                "mlflow.note.content", f"Stopped after {steps[-1][0]} (--until): {ran}; {reused} reused."
            )
            log.info(f"done after {steps[-1][0]} (--until); {reused} of {len(steps)} steps reused")
            return parent.info.run_id
        metrics = client.get_run(parent_tag(upstream, chain.EVALUATE)).data.metrics
        headline = registry.task_of(cfg).headline_metrics
        summary: dict[str, float] = {k: metrics[k] for k in headline if k in metrics}
        mlflow.log_metrics(summary | {"steps_reused": float(reused)})
        finish_parent(client, parent.info.run_id, args.profile, cfg)
        log.info(
            "done; "
            + ", ".join(f"{k}={v:.4f}" for k, v in summary.items())
            + f"; {reused} of {len(CHAIN)} steps reused"
        )
        return parent.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = cli.step_parser(__doc__)
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
    parser.add_argument(
        "--until",
        default="",
        help="stop after this step (a sweep's trials stop after finetune); none (default): the whole chain",
    )
    ns, _ = parser.parse_known_args(argv)
    args = cli.parse_step_args(parser, argv)
    return cli.cli(STEP, lambda: run(args, ns.env_manager or "", ns.force or "", ns.until or ""))


if __name__ == "__main__":
    cli.exit_quickly(main())
