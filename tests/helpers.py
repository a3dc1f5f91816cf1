"""Small helpers for reading what a pipeline run recorded."""

from __future__ import annotations

from typing import Any

import mlflow


def child_runs(parent_run_id: str) -> dict[str, Any]:
    """The children of a main run, by their ``pipeline.step`` tag."""
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {run.data.tags["pipeline.step"]: run for run in runs}


def artifact_paths(run_id: str, path: str = "") -> set[str]:
    """Every artifact file of a run, as paths relative to its artifact root."""
    client = mlflow.MlflowClient()
    found: set[str] = set()
    for info in client.list_artifacts(run_id, path or None):
        if info.is_dir:
            found |= artifact_paths(run_id, info.path)
        else:
            found.add(info.path)
    return found


def registered_models() -> list[str]:
    return [m.name for m in mlflow.MlflowClient().search_registered_models()]
