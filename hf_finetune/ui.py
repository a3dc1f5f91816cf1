"""Where to look in MLflow's UI: the pipeline's runs, the newest report, the champion's card.

    python -m steps.ui [--port 5000] [--experiment NAME] [--registered_model NAME]   # `make ui` prints it

The pipeline's runs go to the experiment ``hf-finetune-pipeline`` (``make run`` names it; any
other experiment works the same). ``main`` marks the experiment it runs in as model training
(``mlflow.experimentKind``: MLflow 3's UI otherwise opens on its GenAI pages) and gives it a
description naming the few metrics to look at first, unless the experiment has its own.
"""

from __future__ import annotations

import argparse
from typing import Any

from hf_finetune import cli, logs
from hf_finetune.chain import CHAMPION
from hf_finetune.config import FIELDS
from hf_finetune.report import REPORT_PATH
from hf_finetune.tags import STEP_TAG
from hf_finetune.tasks import registry

log = logs.logger("ui")

EXPERIMENT = "hf-finetune-pipeline"
KIND_TAG = "mlflow.experimentKind"
KIND = "finetuning"  # one of MLflow 3's model-training kinds: the UI opens on runs, not traces
DESCRIPTION_TAG = "mlflow.note.content"
# What a person should see first among the dozens of metrics the steps log: main's summary.
HEADLINE_METRICS = (
    *dict.fromkeys(name for task in registry.TASKS.values() for name in task.headline_metrics),
    "steps_reused",
)
DESCRIPTION = (
    "Runs of hf-finetune-pipeline. Each `main <profile>` run holds one child run per step "
    "(`prepare` ... `version_cleanup`). Start with the metrics of the `main` runs: "
    + ", ".join(f"`{m}`" for m in HEADLINE_METRICS)
    + " (the fine-tuned model's test F1 beside the classical and untrained baselines on the same rows). "
    "MLflow keeps chart choices per browser: pin those in the chart view. A main run's artifacts "
    "hold `report/pipeline.html`; each registered version's description is its model card."
)


def mark_experiment(client: Any, experiment_id: str) -> None:
    """Make the experiment open on its runs, and describe it, where it does not say otherwise.

    Two ``main`` runs starting together may both find a tag missing; the second write can then
    fail on the tracking server's unique key (its SQL store reads, then inserts). The tag
    is there either way, so that is not a failure; nor is anything else about this cosmetic mark:
    it is a warning, never a failed pipeline."""
    from mlflow.exceptions import MlflowException

    tags = client.get_experiment(experiment_id).tags
    wanted = {KIND_TAG: KIND} if KIND_TAG not in tags else {}
    if not tags.get(DESCRIPTION_TAG):
        wanted[DESCRIPTION_TAG] = DESCRIPTION
    for key, value in wanted.items():
        try:
            client.set_experiment_tag(experiment_id, key, value)
        except MlflowException as exc:
            if not tagged(client, experiment_id, key):
                log.warning("could not tag experiment %s with %s: %s", experiment_id, key, exc)


def tagged(client: Any, experiment_id: str, key: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return key in client.get_experiment(experiment_id).tags
    except MlflowException:
        return False


def runs_page(root: str, experiment_id: str) -> str:
    return f"{root}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def report_page(root: str, experiment_id: str, run_id: str) -> str:
    """A main run's report, in the UI's artifact view."""
    return f"{root}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{REPORT_PATH}"


def newest_main(client: Any, experiment_ids: list[str]) -> Any | None:
    runs = client.search_runs(
        experiment_ids,
        f"tags.`{STEP_TAG}` = 'main' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def addresses(client: Any, root: str, experiment_name: str, registered_model: str) -> list[str]:
    """Lines saying where the runs, the newest report and the champion's card are: in the named
    experiment, else (runs made by a plain ``mlflow run .``) where the newest main run is."""
    experiment = client.get_experiment_by_name(experiment_name)
    newest = newest_main(client, [experiment.experiment_id]) if experiment else None
    if newest is None:
        newest = newest_main(client, [e.experiment_id for e in client.search_experiments()])
    if experiment is None and newest is None:
        return [f"no pipeline run in this store yet (experiment {experiment_name!r}): make run first"]
    experiment_id = newest.info.experiment_id if newest is not None else experiment.experiment_id
    lines = [f"runs:     {runs_page(root, experiment_id)}"]
    if newest is not None:
        lines.append(f"report:   {report_page(root, experiment_id, newest.info.run_id)}")
    try:
        champion = client.get_model_version_by_alias(registered_model, CHAMPION)
    except Exception:  # noqa: BLE001 - no such model or alias yet
        champion = None
    if champion is not None:
        lines.append(
            f"champion: {root}/#/models/{registered_model}/versions/{champion.version} (its model card)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    import mlflow

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="5000")
    parser.add_argument("--experiment", default=EXPERIMENT)
    parser.add_argument("--registered_model", default=str(FIELDS["registered_model"].default))
    args = parser.parse_args(argv)
    root = f"http://{args.host}:{args.port}"
    for line in addresses(mlflow.MlflowClient(), root, args.experiment, args.registered_model):
        print(line)
    return 0


if __name__ == "__main__":
    cli.exit_quickly(main())
