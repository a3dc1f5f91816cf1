"""register: the logged model -> a registered model version, with aliases and a quality gate.

Reads: ``--log_model_run_id``; its ``pipeline.model_uri`` tag, the logged model's status, and the
test metrics of the evaluate run above it.
Writes (registry): a new version of ``registered_model`` (created with tag ``task`` if new),
version tags ``task``, ``save_mode``, ``persisted``, ``base_model``, ``base_model_revision``,
``data_digest``, ``test_accuracy``, ``test_precision``, ``test_recall``, ``test_f1``,
``run.<step>`` (the run ID of every step that produced it), the gate's decision and comparison
(``gate``, ``gate_reason``, ``gate_compared_version``, ``gate_rows``, ``gate_rows_excluded``,
``gate_metric``, ``gate_candidate``, ``gate_champion``, ``gate_diff_low``, ``gate_diff_high``, and
for an F1 gate also ``gate_candidate_f1``, ``gate_champion_f1``, ``gate_f1_diff_low``,
``gate_f1_diff_high``: see ``hf_finetune/registry/gate.py``: the candidate against the champion on
the candidate's own test rows, paired), the lineage tags (and ``prompt_template`` for text
generation),
and ``aliases_pending`` until the aliases are set; the version's description is its model card
(``hf_finetune/registry/card.py``, also ``model_card.md`` with the logged model), and the cards
of the versions the aliases left are rewritten. Alias ``challenger`` always moves to the new
version; ``champion`` moves only if the gate passes **and** the weights are in the artifact store
(a reference-only version waits for persist). Stages are not used (deprecated in MLflow 3):
aliases only.
Writes (run): tags ``gate``, ``gate_reason``,
``registered_model``, ``model_version``; metric ``gate_passed``.

The champion read, the gate, the new version and its aliases happen under the registered model's
lock (``registry_lock``): two mains registering to one name at once end as if one had run after
the other. A log_model run that is already registered is not registered again: the step records which
version holds it and changes nothing (so reruns are idempotent). Every check runs before the
first registry write; if a write fails after the version exists, the
version is deleted again, so the registry is as it was. A register killed between creating the
version and setting its aliases (kill -9, no chance to clean up) leaves a version tagged
``aliases_pending``; the next register of the same log_model run sets those aliases (champion only
if the gate still passes against the champion of that moment) instead of doing nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_finetune import chain, cli, logs, tracking
from hf_finetune.chain import CHALLENGER, CHAMPION
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.registry import card, gate, history, locks
from hf_finetune.registry.models import check_registered_model
from hf_finetune.tags import (
    ALREADY_TAG,
    GATE_REASON_TAG,
    GATE_TAG,
    MODEL_ID_TAG,
    MODEL_URI_TAG,
    PENDING_TAG,
    PERSISTED_TAG,
    REGISTERED_MODEL_TAG,
    SAVE_MODE_TAG,
    TASK_TAG,
    VERSION_TAG,
)
from hf_finetune.tasks import registry
from hf_finetune.tasks.base import Task

STEP = chain.REGISTER
log = logs.logger(STEP)
UPSTREAM = chain.upstream_param(STEP)
NEWEST = "the newest version"  # why challenger moves


# ----------------------------------------------------------------------------- pure functions
def is_self_contained(save_mode: str) -> bool:
    return save_mode in ("full", "checkpoint")


def version_tags(
    task: Task,
    save_mode: str,
    lineage: dict[str, str],
    metrics: dict[str, float],
    run_ids: dict[str, str],
    decision: gate.Gate,
) -> dict[str, str]:
    gated = metrics[f"test_{task.gate_metric}"]
    tags = {
        TASK_TAG: task.name,
        SAVE_MODE_TAG: save_mode,
        PERSISTED_TAG: str(is_self_contained(save_mode)).lower(),
        **gate.comparison_tags(decision, gated, int(metrics.get("test_rows", 0)), task),
    }
    tags |= {k: v for k, v in lineage.items() if v}
    tags |= {name: f"{metrics[name]:.6f}" for name in task.version_metrics if name in metrics}
    tags |= {f"run.{step}": run_id for step, run_id in run_ids.items()}
    return tags


# ----------------------------------------------------------------------------- MLflow
def finish_interrupted(client: Any, name: str, version: Any, cfg: Config, work: Path, run_id: str) -> str:
    """Set the aliases an interrupted register meant to set on ``version``; say which it set.

    ``challenger`` only if no newer version has come since (it names the newest candidate);
    ``champion`` only if the gate, judged again against the champion of now, still passes.
    """
    wanted = version.tags[PENDING_TAG].split(",")
    before = dict(client.get_registered_model(name).aliases)
    newest = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    done = []
    if CHALLENGER in wanted and int(version.version) == newest:
        history.move(client, name, CHALLENGER, version.version, "gate", NEWEST, run_id)
        done.append(CHALLENGER)
    if CHAMPION in wanted:
        decision = gate.judge_version(client, name, version, cfg, work)
        moved = decision.passed and gate.move_champion(
            client, name, version.version, "gate", decision.reason, run_id
        )
        if moved:
            done.append(CHAMPION)
    client.delete_model_version_tag(name, version.version, PENDING_TAG)
    card.refresh(client, name, version.version)
    card.refresh_others(client, name, [before.get(alias) for alias in done], version.version)
    return ", ".join(done) or "no alias (newer versions came first)"


def check_logged_model(client: Any, model_id: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_logged_model(model_id)
    except MlflowException:
        raise UserError(
            f"logged model {model_id} does not exist (deleted?): rerun log_model and register the new run"
        ) from None
    status = str(model.status).split(".")[-1].upper()
    if status != "READY":
        raise UserError(
            f"logged model {model_id} is {status}, not READY (its log_model run "
            "failed): rerun log_model and register the new run"
        )


def already_registered(client: Any, name: str, log_model_run_id: str) -> Any | None:
    """The version this log_model run already became, if any: registering twice changes nothing."""
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get(f"run.{chain.LOG_MODEL}") == log_model_run_id:
            return version
    return None


def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    import mlflow

    task = registry.task_of(cfg)
    client = mlflow.MlflowClient()
    upstream = tracking.get_upstream(upstream_run_id, chain.LOG_MODEL, UPSTREAM, cfg.task)
    model_uri = upstream.data.tags[MODEL_URI_TAG]
    check_logged_model(client, upstream.data.tags[MODEL_ID_TAG])
    runs = tracking.upstream_chain(upstream)
    wanted = {*task.version_metrics, f"test_{task.gate_metric}", "test_rows"}
    metrics = {k: v for k, v in runs[chain.EVALUATE].data.metrics.items() if k in wanted}
    save_mode = upstream.data.tags[SAVE_MODE_TAG]
    name = cfg.registered_model
    check_registered_model(client, name, task)  # a name that holds another task: refused before any run

    # Under the registry lock: the champion read, the gate, the new version and its aliases are one
    # step that no concurrent register, persist or version_cleanup of this name interleaves with.
    with (
        tracking.step_run(STEP, profile, cfg, upstream.info.run_id) as (run_id, tmp),
        locks.registry_lock(client, name),
    ):
        exists = check_registered_model(client, name, task)
        if exists:
            history.observe(client, name)  # a move by hand since the last look, recorded first
        earlier = already_registered(client, name, upstream.info.run_id) if exists else None
        if earlier is not None and PENDING_TAG in earlier.tags:
            where = finish_interrupted(client, name, earlier, cfg, tmp, run_id)
            history.seen(client, name)
            mlflow.set_tags(
                {
                    GATE_TAG: earlier.tags.get(GATE_TAG, ""),
                    GATE_REASON_TAG: earlier.tags.get(GATE_REASON_TAG, ""),
                    REGISTERED_MODEL_TAG: name,
                    VERSION_TAG: str(earlier.version),
                }
            )
            log.info(f"{name} v{earlier.version}: finished an interrupted register -> {where}")
            return run_id
        if earlier is not None:
            mlflow.set_tags(
                {
                    GATE_TAG: earlier.tags.get(GATE_TAG, ""),
                    GATE_REASON_TAG: earlier.tags.get(GATE_REASON_TAG, ""),
                    REGISTERED_MODEL_TAG: name,
                    VERSION_TAG: str(earlier.version),
                    ALREADY_TAG: "true",
                }
            )
            log.info(f"{name} v{earlier.version} already holds this model; registry unchanged")
            return run_id

        evaluate_run_id = runs[chain.EVALUATE].info.run_id
        value = metrics[f"test_{task.gate_metric}"]
        decision = gate.judge(client, name, evaluate_run_id, value, task.gate_floor(cfg, metrics), cfg, tmp)
        promote = decision.passed and is_self_contained(save_mode)
        tags = version_tags(
            task,
            save_mode,
            tracking.lineage_tags(upstream),
            metrics,
            {step: run.info.run_id for step, run in runs.items()},
            decision,
        )
        tags[PENDING_TAG] = ",".join([CHALLENGER, CHAMPION] if promote else [CHALLENGER])
        main_run_id = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
        if main_run_id:
            tags[card.MAIN_RUN_TAG] = main_run_id
        before = dict(client.get_registered_model(name).aliases) if exists else {}
        version = None
        try:
            if not exists:
                client.create_registered_model(name, tags={TASK_TAG: task.name})
            version = mlflow.register_model(model_uri, name, tags=tags)
            tracking.kill_point("register.version_created")
            history.move(client, name, CHALLENGER, version.version, "gate", NEWEST, run_id)
            if promote:
                gate.move_champion(client, name, version.version, "gate", decision.reason, run_id)
            client.delete_model_version_tag(name, version.version, PENDING_TAG)
        except BaseException:  # leave the registry as it was, then fail
            if version is not None:  # the aliases back where they were, recorded, then the version
                back = f"register of v{version.version} failed: given back"
                for alias in (CHALLENGER, CHAMPION):
                    history.move(client, name, alias, before.get(alias), "gate", back, run_id)
                client.delete_model_version(name, version.version)
            if not exists:
                client.delete_registered_model(name)
            raise
        history.seen(client, name)
        card.refresh(client, name, version.version)
        moved = [CHALLENGER, CHAMPION] if promote else [CHALLENGER]
        card.refresh_others(client, name, [before.get(alias) for alias in moved], version.version)
        mlflow.set_tags(
            {
                GATE_TAG: tags[GATE_TAG],
                GATE_REASON_TAG: decision.reason,
                REGISTERED_MODEL_TAG: name,
                VERSION_TAG: str(version.version),
            }
        )
        mlflow.log_metric("gate_passed", float(decision.passed))
        where = "champion" if promote else "champion after persist" if decision.passed else "challenger only"
        log.info(f"{name} v{version.version} -> {where} ({decision.reason})")
        return run_id


def main(argv: list[str] | None = None) -> int:
    return cli.step_main(STEP, __doc__, UPSTREAM, run, argv)


if __name__ == "__main__":
    cli.exit_quickly(main())
