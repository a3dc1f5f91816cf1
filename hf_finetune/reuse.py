"""Main's step cache in the tracking store: what each step's run would reuse, or resume.

For each cacheable step ``main`` computes its cache key (``cache``), asks the store for a finished
run with that key (reused) or an unfinished one with a checkpoint (resumed), and otherwise runs
it, saying what changed since the closest earlier run.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hf_finetune import cache, chain, cli, sources, tracking
from hf_finetune.config import Config
from hf_finetune.profiles import load_config
from hf_finetune.tags import (
    INPUTS_TAG,
    KEY_TAG,
    LAST_CHECKPOINT_TAG,
    PROFILE_TAG,
    PRUNED_TAG,
    REUSED_FROM_TAG,
    STEP_TAG,
    UPSTREAM_TAG,
)


def step_overrides(declared: set[str], overrides: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in overrides.items() if key in declared}


def data_digest(cfg: Config) -> str:
    """What ``prepare`` will read: a file's bytes (and those of the ``dataset.yaml`` beside it, which
    prepare records for the model card), or a hub dataset's id and split."""
    path = sources.resolve_data_path(cfg.data)
    if not path:
        return f"hub:{cfg.data}:{cfg.hub_split}"
    described = sources.dataset_card_file(cfg.data)
    return cache.file_digest(path) + (f"+{cache.file_digest(described)}" if described else "")


def step_key_inputs(
    step: str,
    args: cli.StepArgs,
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
    """The newest finished run of ``step`` with this cache key in these experiments, if any; a
    finetune a sweep's pruner cut short (``pipeline.pruned``) never counts."""
    runs = newest_runs(
        client,
        experiment_ids,
        step,
        f"tags.`{KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        20,
    )
    return next((run for run in runs if PRUNED_TAG not in run.data.tags), None)


def previous_inputs(client: Any, experiment_id: str, step: str) -> list[dict[str, Any]]:
    """The cache inputs of recent keyed runs of ``step``, to say what changed."""
    runs = newest_runs(client, [experiment_id], step, f"tags.`{INPUTS_TAG}` != ''", 50)
    return [json.loads(run.data.tags[INPUTS_TAG]) for run in runs]


def find_resumable(client: Any, experiment_id: str, step: str, key: str) -> Any | None:
    """The newest unfinished run of ``step`` with this key that logged a checkpoint to resume from.

    A run still marked RUNNING whose process is alive (on another host: whose heartbeat is
    fresh) belongs to another main doing the same work right now: it is neither marked nor
    resumed. One whose process is gone or silent, or that never said which process held it, died
    without saying so (killed, machine lost): it is marked KILLED and resumed from.
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
            if tracking.holder_alive(run.data.tags):
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
        **tracking.lineage_tags(original),
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
        tracking.retry_lost_insert_race(lambda: client.log_inputs(run_id, datasets=inputs))
    client.set_terminated(run_id, "FINISHED")
    return str(run_id)


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


def what_changed_since(client: Any, experiment_id: str, step: str, inputs: dict[str, Any]) -> str:
    return cache.what_changed(previous_inputs(client, experiment_id, step), inputs)
