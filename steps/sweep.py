"""sweep: Optuna trials of prepare -> tokenize -> finetune through main's cache; the best goes on.

    mlflow run . --env-manager local -e sweep -P n_trials=8                 # sweeps/default.yaml
    python -m steps.sweep --profile smoke --space sweeps/smoke.yaml --n_trials 3
    python -m steps.sweep --storage postgresql://optuna:...@db:5432/optuna  # the same on N machines

Reads: ``main``'s settings (fixed for every trial), ``space`` (a YAML search space over the
settings' own names, ``hf_finetune/sweeps.py``), ``n_trials`` (the study's total, however many
workers), ``storage`` (Optuna's RDB storage) and ``study_name`` (by default derived from the
space, the data's digest, the task, the base model, the profile and the settings given: the same
command resumes its study, a change starts another). Before any run starts, each is checked and
a mistake is one line, exit status 2: a name in the space that is not a setting of prepare,
tokenize or finetune, a value the setting's validation refuses, ``n_trials`` below 1, a storage
that does not connect, a registered model of another task.

1. A parent run, ``pipeline.step=sweep``, tag ``pipeline.study`` (and the storage, without its
   password).
2. prepare and tokenize execute once per study: a ``main --until tokenize`` under a lock named
   after the study, so workers that start together wait and then reuse them.
3. Trials until the study holds ``n_trials``: Optuna's TPE (``constant_liar``, seeded from
   ``seed`` and the worker's place in the study, so workers do not try the same settings and a
   rerun asks what the first run did) asks under that lock; each
   trial is a ``main --until finetune`` with its settings, a child run tagged
   ``pipeline.sweep_trial``, whose steps come from the cache where they exist. The objective is
   finetune's ``best_val_<metric>`` (``Task.validation_metric``: F1 up, or the completion's loss
   down), never the test split; the pruner stops bad trials from the per-epoch validation metric
   (their finetune ends FINISHED, tagged ``pipeline.pruned``). A heartbeat marks a killed worker's
   trial failed, and another worker tries it again once.
4. When the study has ``n_trials`` finished, its best trial alone runs the whole chain (a ``main``
   with its settings: the first steps reused, evaluate -> ... -> version_cleanup run, so the
   champion gate judges it): once per study, whichever worker finishes last (a lock and the
   study's ``registered_trial`` attribute); a resumed study with a larger ``n_trials`` registers
   again only if its best trial changed. That main is tagged ``pipeline.sweep_run_id``.
5. On the parent run: params ``best.<setting>``, metrics ``best_value``, ``trials_complete``,
   ``trials_pruned``, ``trials_failed``; artifacts ``sweep/trials.csv`` (every trial) and
   ``sweep/plots.html`` (Optuna's optimisation history, parallel coordinates and, with two or more
   complete trials, parameter importances).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from hf_finetune import chain, cli, logs, sweeps, tracking, uris
from hf_finetune.config import FIELDS, Config
from hf_finetune.errors import UserError
from hf_finetune.registry import locks
from hf_finetune.registry.models import check_registered_model
from hf_finetune.reuse import data_digest
from hf_finetune.tags import SWEEP_RUN_TAG, TRIAL_TAG
from hf_finetune.tasks import registry

STEP = chain.SWEEP
log = logs.logger(STEP)
OWN = {name for name, field in FIELDS.items() if field.metadata["steps"] == (STEP,)}  # not main's
STUDY_TAG = "pipeline.study"
REGISTERED_ATTR = "registered_trial"  # the study's: the trial whose whole chain ran
STUDY_LOCK_S = 3 * 3600.0  # the study's lock is held through warm-up and the best trial's chain


# ----------------------------------------------------------------------------- pure functions
def main_flags(profile: str, settings: dict[str, Any]) -> list[str]:
    """``python -m steps.main`` flags for these settings (the sweep's own left out)."""
    flags = ["--profile", profile]
    for name, value in settings.items():
        if name not in OWN:
            flags += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def counts(trials: list[Any]) -> dict[str, int]:
    """Trials by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    out: dict[str, int] = {}
    for trial in trials:
        out[trial.state.name] = out.get(trial.state.name, 0) + 1
    return out


# ----------------------------------------------------------------------------- MLflow and Optuna
def heartbeat(storage: Any, trial_id: int) -> AbstractContextManager[None]:
    """Tell the storage this worker is alive while a trial runs (a killed one stops telling); its
    first beat was at the ask."""

    def beat() -> None:
        try:
            storage.record_heartbeat(trial_id)
        except Exception as exc:  # noqa: BLE001 - a busy database: beat again next time
            log.warning(f"trial {trial_id}'s heartbeat not recorded ({type(exc).__name__}): again later")

    return tracking.every(sweeps.heartbeat_seconds()[0], beat)


def child_main(parent: str, tags: dict[str, str], flags: list[str], env: dict[str, str]) -> str:
    """A ``main`` as a child run of the sweep's; its run ID. A failed main fails the sweep."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_run(parent).info.experiment_id
    run = client.create_run(experiment, tags={"mlflow.parentRunId": parent, **tags})
    command = [sys.executable, "-m", "steps.main", *flags, "--env_manager", "local"]
    done = subprocess.run(command, env=os.environ | env | {"MLFLOW_RUN_ID": run.info.run_id},
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        if done.returncode == cli.EXIT_USER_ERROR:  # main's one line: the user's to fix
            raise UserError(last.removeprefix("main: error: "))
        raise RuntimeError(f"main of {tags} failed (exit {done.returncode}): {last}")
    return str(run.info.run_id)


def trial_value(main_run_id: str, metric: str) -> tuple[float, bool, str]:
    """The trial's objective (finetune's ``best_val_<metric>``), whether it was pruned, its finetune run."""
    import mlflow

    from hf_finetune.tags import PRUNED_TAG

    client = mlflow.MlflowClient()
    finetune = client.get_run(client.get_run(main_run_id).data.tags[f"pipeline.{chain.FINETUNE}_run_id"])
    return finetune.data.metrics[f"best_val_{metric}"], PRUNED_TAG in finetune.data.tags, finetune.info.run_id


def run_trials(study: Any, storage: Any, cfg: Config, profile: str, overrides: dict[str, str],
               dims: list[sweeps.Dimension], parent: str, lock: str) -> None:  # fmt: skip
    """Trials until the study holds ``n_trials``; then stay while other workers' trials run, to
    retry any whose worker is lost, so that someone is left to register the best."""
    import time

    import mlflow
    import optuna

    client = mlflow.MlflowClient()
    metric = registry.task_of(cfg).validation_metric
    kinds = {dim.name: type(FIELDS[dim.name].default) for dim in dims}
    fixed = {name: getattr(cfg, name) for name in FIELDS}
    started = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")
    waiting_said = False
    while True:
        trial = None
        with locks.registry_lock(client, lock, STUDY_LOCK_S):  # count and ask together: never past n_trials
            optuna.storages.fail_stale_trials(study)  # a lost worker's trial: FAIL, and WAITING again
            state = counts(study.get_trials(deepcopy=False))
            if state.get("WAITING") or sum(state.get(s, 0) for s in started) < cfg.n_trials:
                trial = sweeps.ask(study)  # a WAITING one (a retry) first, else TPE's next
                storage.record_heartbeat(trial._trial_id)  # alive from its first moment
        if trial is None:
            if not state.get("RUNNING"):
                return
            if not waiting_said:
                log.info(f"{state['RUNNING']} trial(s) of other workers still running: waiting for them")
                waiting_said = True
            time.sleep(sweeps.heartbeat_seconds()[0])
            continue
        try:
            with heartbeat(storage, trial._trial_id):
                settings = sweeps.trial_settings(dims, trial, fixed, kinds)
                log.info(f"trial {trial.number}: {settings}")
                env = {sweeps.STORAGE_ENV: cfg.storage, sweeps.STUDY_ENV: study.study_name,
                       sweeps.TRIAL_ENV: str(trial._trial_id)}  # fmt: skip
                flags = main_flags(profile, overrides | settings) + ["--until", chain.FINETUNE]
                main_run = child_main(parent, {TRIAL_TAG: str(trial.number)}, flags, env)
                value, pruned, finetune = trial_value(main_run, metric)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            raise
        trial.set_user_attr("main_run_id", main_run)
        trial.set_user_attr("finetune_run_id", finetune)
        client.log_metric(main_run, "objective", value)
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        else:
            study.tell(trial, value, skip_if_finished=True)
        now = storage.get_trial(trial._trial_id).state.name
        if now == "FAIL":  # its heartbeat was missed for the grace period: another worker retries it
            log.warning(
                f"trial {trial.number} was failed by its heartbeat while it ran: its result is not counted"
            )
        else:
            log.info(f"trial {trial.number}: {'pruned, ' if pruned else ''}val {metric} {value:.4f}")


def register_best(
    study: Any, cfg: Config, profile: str, overrides: dict[str, str], parent: str, lock: str
) -> None:
    """The best trial's whole chain, once per study (and again only for a new best trial)."""
    import mlflow

    with locks.registry_lock(mlflow.MlflowClient(), lock, STUDY_LOCK_S):
        best = study.best_trial
        if study.user_attrs.get(REGISTERED_ATTR) == best.number:
            log.info(f"trial {best.number} is still the best and went through the chain before")
            return
        log.info(f"trial {best.number} is the best: the whole chain, with the champion gate")
        tags = {TRIAL_TAG: str(best.number), SWEEP_RUN_TAG: parent}
        main_run = child_main(parent, tags, main_flags(profile, overrides | best.params), {})
        study.set_user_attr(REGISTERED_ATTR, best.number)
        study.set_user_attr("registered_main_run_id", main_run)
        mlflow.set_tag("pipeline.best_main_run_id", main_run)


def log_study(study: Any, tmp: Path) -> None:
    """The trials table, the plots and the best settings, on the sweep's run."""
    import mlflow
    import optuna

    trials = study.get_trials(deepcopy=False)
    state = counts(trials)
    mlflow.log_metrics(
        {
            f"trials_{name}": float(state.get(s, 0))
            for s, name in (("COMPLETE", "complete"), ("PRUNED", "pruned"), ("FAIL", "failed"))
        }
    )
    folder = tmp / "sweep"
    folder.mkdir()
    study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        mlflow.log_params({f"best.{k}": v for k, v in study.best_trial.params.items()})
        mlflow.log_metric("best_value", study.best_value)
        plots = [optuna.visualization.plot_optimization_history(study),
                 optuna.visualization.plot_parallel_coordinate(study)]  # fmt: skip
        if len(complete) >= 2 and len(study.best_trial.params) >= 1:
            plots.append(optuna.visualization.plot_param_importances(study))
        parts = [p.to_html(full_html=False, include_plotlyjs=i == 0) for i, p in enumerate(plots)]
        head = f"<head><meta charset='utf-8'><title>{study.study_name}</title></head>"
        page = f"<html>{head}<body>{''.join(parts)}</body></html>"
        (folder / "plots.html").write_text(page, encoding="utf-8")
    mlflow.log_artifacts(str(folder), "sweep")


def run(
    upstream_run_id: str | None, cfg: Config, profile: str, overrides: dict[str, str] | None = None
) -> str:
    import mlflow
    import optuna

    del upstream_run_id  # beside the chain
    overrides = overrides or {}
    task = registry.task_of(cfg)
    path = sweeps.space_file(cfg.space)
    text = path.read_text(encoding="utf-8")
    dims = sweeps.parse_space(text, str(cfg.space))
    given = {k: v for k, v in overrides.items() if k not in OWN}  # main's settings, fixed for the study
    sweeps.check_space(dims, str(cfg.space), profile, given)
    cfg = dataclasses.replace(cfg, storage=sweeps.absolute(cfg.storage))  # the trials' mains run elsewhere
    storage = sweeps.connect(cfg.storage)
    check_registered_model(mlflow.MlflowClient(), cfg.registered_model, task)
    name = cfg.study_name or sweeps.study_name(
        text, data_digest(cfg), task.name, cfg.base_model, profile, given
    )
    pruner = sweeps.pruner()
    direction = (
        optuna.study.StudyDirection.MAXIMIZE
        if task.validation_higher_is_better
        else optuna.study.StudyDirection.MINIMIZE
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, pruner=pruner,
                                load_if_exists=True)  # fmt: skip
    lock = f"{name}.sweep"
    with tracking.step_run(STEP, profile, cfg) as (run_id, tmp):
        mlflow.set_tags({STUDY_TAG: name, "pipeline.storage": uris.redact(cfg.storage)})
        log.info(
            f"study {name} in {uris.redact(cfg.storage)}: {len(study.trials)} trials so far of {cfg.n_trials}"
        )
        with locks.registry_lock(mlflow.MlflowClient(), lock, STUDY_LOCK_S):  # prepare, tokenize once
            study.sampler = sweeps.join(study, cfg.seed)
            child_main(
                run_id, {TRIAL_TAG: "warm-up"}, main_flags(profile, given) + ["--until", chain.TOKENIZE], {}
            )
        run_trials(study, storage, cfg, profile, given, dims, run_id, lock)
        finished = sum(counts(study.get_trials(deepcopy=False)).get(s, 0) for s in ("COMPLETE", "PRUNED"))
        if finished >= cfg.n_trials and any(t.state.name == "COMPLETE" for t in study.trials):
            register_best(study, cfg, profile, given, run_id, lock)
        else:
            log.info(
                f"{finished} of {cfg.n_trials} trials finished: the worker that finishes the last registers"
            )
        log_study(study, tmp)
        return run_id


def main(argv: list[str] | None = None) -> int:
    parser = cli.step_parser(__doc__)
    args = cli.parse_step_args(parser, argv)
    return cli.cli(STEP, lambda: run(None, cli.config_for(args), args.profile, args.overrides))


if __name__ == "__main__":
    cli.exit_quickly(main())
