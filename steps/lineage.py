"""lineage: print the whole chain behind a registered model or a main run.

    python -m steps.lineage models:/sms-spam-classifier@champion
    python -m steps.lineage models:/sms-spam-classifier/3
    python -m steps.lineage <main run ID>
    python -m steps.lineage <predict run ID>      # the version it scored with, and its chain

One block per step: its run ID and status, the settings it read, data digest, base model and
revision, code version (git commit and the cache's code hash), and for a main run whether the step
ran or was reused from the cache. It only reads the tracking store.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hf_finetune import cache, chain, cli, tracking, uris
from hf_finetune.errors import UserError
from hf_finetune.tags import (
    BASE_MODEL_TAG,
    BASE_REVISION_SOURCE_TAG,
    BASE_REVISION_TAG,
    DATA_DIGEST_TAG,
    INPUTS_TAG,
    MODEL_URI_TAG,
    MODEL_VERSION_TAG,
    PROFILE_TAG,
    REUSED_FROM_TAG,
    STEP_TAG,
)
from hf_finetune.tasks import registry

# the few figures printed per step: prepare's, finetune's and each task's own headline metrics
HEADLINE_METRICS = (
    "rows_clean",
    *(f"best_val_{task.gate_metric}" for task in registry.TASKS.values()),
    "epochs_completed",
    *dict.fromkeys(name for task in registry.TASKS.values() for name in task.headline_metrics),
)


# ----------------------------------------------------------------------------- pure functions
def parse_target(target: str) -> tuple[str, str | None, str | None] | None:
    """(name, alias, version) for a ``models:/`` URI; None for anything else (a run ID)."""
    parsed = uris.parse_registry_uri(target)
    if parsed is None and target.startswith("models:/"):
        raise UserError(f"{target!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    return parsed


def one_line(value: str) -> str:
    """A setting's value as one line: quoted, with its escapes, where it holds line breaks (a
    prompt template)."""
    return json.dumps(value) if any(c in value for c in "\n\r\t") else value


def describe(step: str, run: Any, reused_by: str | None = None) -> list[str]:
    """The lines printed for one step run."""
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    read = sorted(cache.step_fields(step)) if step in chain.STEPS else []
    settings = ", ".join(f"{k}={one_line(params[f'config.{k}'])}" for k in read if f"config.{k}" in params)
    code_hash = json.loads(tags[INPUTS_TAG])["code"][:12] if INPUTS_TAG in tags else "-"
    lines = [
        f"{step:<16} {run.info.run_id}  {run.info.status}"
        + (f"  (reused from cache by {reused_by})" if reused_by else "")
    ]
    if settings:
        lines.append(f"  settings       {settings}")
    if tags.get(DATA_DIGEST_TAG):
        lines.append(f"  data digest    {tags[DATA_DIGEST_TAG]}")
    if tags.get(BASE_MODEL_TAG):
        lines.append(
            f"  base model     {tags[BASE_MODEL_TAG]} @ "
            f"{tags.get(BASE_REVISION_TAG, '?')} "
            f"({tags.get(BASE_REVISION_SOURCE_TAG, '?')})"
        )
    lines.append(
        f"  code           git {tags.get('mlflow.source.git.commit', '-')[:12]}, step code {code_hash}"
    )
    shown = {k: metrics[k] for k in HEADLINE_METRICS if k in metrics}
    if shown:
        lines.append("  metrics        " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    for key in (
        "pipeline.model_uri",
        "registered_model",
        "model_version",
        "gate",
        "gate_reason",
        "pipeline.resumed_from",
    ):
        if key in tags:
            lines.append(f"  {key.removeprefix('pipeline.'):<14} {tags[key]}")
    return lines


# ----------------------------------------------------------------------------- MLflow
def chain_of_version(client: Any, name: str, alias: str | None, version: str | None) -> tuple[str, dict]:
    from mlflow.exceptions import MlflowException

    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
    except MlflowException:
        which = f"alias {alias!r}" if alias else f"version {version}"
        raise UserError(
            f"registered model {name!r} has no {which} in {_uri()}: check the name, alias or version"
        ) from None
    run_id = mv.tags.get(f"run.{chain.LOG_MODEL}") or mv.run_id
    if not run_id:
        raise UserError(f"{name} v{mv.version} was not registered by this pipeline (no run.log_model tag)")
    runs = tracking.upstream_chain(client.get_run(run_id))
    header = (
        f"{name} v{mv.version}"
        + (f" (@{alias})" if alias else "")
        + f": save_mode={mv.tags.get('save_mode', '?')}, persisted={mv.tags.get('persisted', '?')}, "
        f"test_f1={mv.tags.get('test_f1', '?')}, gate={mv.tags.get('gate', '?')}"
    )
    return header, {step: (run, None) for step, run in runs.items()}


def chain_of_main(client: Any, run_id: str) -> tuple[str, dict]:
    from mlflow.exceptions import MlflowException

    try:
        main_run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"{run_id!r} is neither a models:/ URI nor a run ID in {_uri()}") from None
    if main_run.data.tags.get(STEP_TAG) == chain.PREDICT:
        return chain_of_prediction(client, main_run)
    if main_run.data.tags.get(STEP_TAG) != "main":
        raise UserError(
            f"run {run_id} is a {main_run.data.tags.get(STEP_TAG, 'non-pipeline')} "
            "run, not a main or predict run: pass one of those run IDs or a models:/ URI"
        )
    children = client.search_runs(
        [main_run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'", max_results=100
    )
    markers = {c.data.tags.get(STEP_TAG): c for c in children}
    runs = {}
    for step in chain.STEPS:
        used = main_run.data.tags.get(f"pipeline.{step}_run_id")
        if used:
            marker = markers.get(step)
            reused = marker is not None and REUSED_FROM_TAG in marker.data.tags
            runs[step] = (client.get_run(used), run_id if reused else None)
    header = f"main {run_id}: {main_run.info.status}, profile {main_run.data.tags.get(PROFILE_TAG)}"
    return header, runs


def chain_of_prediction(client: Any, run: Any) -> tuple[str, dict]:
    """A predict run: what it scored, with which version, and that version's training chain."""
    tags, metrics = run.data.tags, run.data.metrics
    given = tags.get(MODEL_URI_TAG, "?")
    parsed = uris.parse_registry_uri(given)
    version = tags.get(MODEL_VERSION_TAG)
    rows = int(metrics.get("rows_scored", 0))
    header = (
        f"predict {run.info.run_id}: {run.info.status}, {rows} rows of "
        f"{run.data.params.get('config.data', '?')} scored with {given}"
    )
    if parsed is None or not version:
        return header + " (not a registered version: no training chain to follow)", {}
    try:
        version_header, runs = chain_of_version(client, parsed[0], None, version)
    except UserError:  # deleted since (version_cleanup): follow the run that logged its model
        logged_in = tags.get("pipeline.model_run_id")
        if not logged_in:
            raise
        runs = {step: (r, None) for step, r in tracking.upstream_chain(client.get_run(logged_in)).items()}
        version_header = f"{parsed[0]} v{version} (deleted since; its model was logged by run {logged_in})"
    return f"{header}\n{version_header}", runs


def _uri() -> str:
    import mlflow

    return str(mlflow.get_tracking_uri())


def lineage(target: str) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient()
    parsed = parse_target(target)
    header, runs = chain_of_version(client, *parsed) if parsed else chain_of_main(client, target)
    lines = header.splitlines()
    for step in chain.STEPS:
        if step in runs:
            run, reused_by = runs[step]
            lines += describe(step, run, reused_by)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "target", help="models:/<name>@<alias>, models:/<name>/<version>, or a main or predict run ID"
    )
    args = parser.parse_args(argv)
    try:
        print("\n".join(lineage(args.target)))
    except UserError as exc:
        print(f"lineage: error: {exc}", file=sys.stderr)
        return cli.EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    cli.exit_quickly(main())
