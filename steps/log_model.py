"""log_model: the evaluated fine-tuned model -> an MLflow logged model, in the profile's save mode.

Reads: ``--evaluate_run_id``; through its upstream tag the finetune run's ``checkpoint/``, and the
evaluate run's ``evaluation/predictions.parquet`` (the input example and what the model said).
Writes:
- logged model ``model`` (MLflow 3: it lives outside the run's artifacts), with the task's
  pipeline task, and (for text classification) a signature that
  declares the ``batch_size`` inference param, an input example, ``model_config`` (truncation) and
  explicit ``pip_requirements`` (text generation: MLflow's ``llm/v1/completions``, whose
  signature MLflow sets, the ``prompt_template`` the chain carried, greedy decoding up to
  ``max_new_tokens`` as ``model_config``; the model names the base model as its source, never a
  local path). Save modes:
  ``full``: the pipeline is loaded and saved whole;
  ``checkpoint``: logged from the checkpoint folder by path, the model never instantiated, its
  weights written once (MLflow alone stages a copy first: here the staging copy is hard links;
  into a local artifact store the upload is hard links too, to the step's own linked download
  of the finetune run's checkpoint: no weight byte is copied);
  ``reference``: only a hub address; refused for a full fine-tune, whose weights all changed.
- logged model ``baseline``: the base model by reference (repository + revision actually loaded,
  kilobytes), tagged ``role=baseline``; skipped for a base model in a local folder.
- the logged models' tags (``role``, ``save_mode``, ``base_model``, ``base_model_revision``,
  ``data_digest``) and the candidate's test metrics;
- metric ``model_artifact_bytes``: the size of the logged model as logged;
- run tags ``pipeline.model_uri`` (``ModelInfo.model_uri``), ``pipeline.model_id``,
  ``pipeline.baseline_model_uri``, ``save_mode``; artifact ``expected_predictions.json`` (the input
  example and the labels evaluate gave it, for persist's verification).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from hf_finetune import artifacts, chain, cli, hub, logs, lora, tracking
from hf_finetune.chain import ADAPTER_DIR, CHECKPOINT_DIR, EXPECTED_FILE, PREDICTIONS_FILE
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.save_modes import (
    artifact_bytes,
    discard_failed_model,
    installed_versions,
    log_adapter_reference,
    log_baseline,
    log_candidate,
    pip_requirements,
    source_name,
)
from hf_finetune.settings import check_save_mode
from hf_finetune.tags import (
    BASE_MODEL_TAG,
    BASE_REVISION_TAG,
    BASELINE_URI_TAG,
    CHECKPOINT_PATH_TAG,
    MODEL_ID_TAG,
    MODEL_URI_TAG,
    PEFT_TAG,
    SAVE_MODE_TAG,
    UPSTREAM_TAG,
)
from hf_finetune.tasks import registry

STEP = chain.LOG_MODEL
log = logs.logger(STEP)
UPSTREAM = chain.upstream_param(STEP)
MODEL_NAME = "model"


# ----------------------------------------------------------------------------- MLflow
def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    import mlflow

    task = registry.task_of(cfg)
    upstream = tracking.get_upstream(upstream_run_id, chain.EVALUATE, UPSTREAM, cfg.task)
    runs = tracking.upstream_chain(upstream)
    adapter = "finetune" in runs and runs["finetune"].data.tags.get(PEFT_TAG) == "lora"
    check_save_mode(cfg.save_mode, adapter=adapter)
    finetune_run_id = upstream.data.tags[UPSTREAM_TAG]
    evaluated = upstream.data.tags.get(CHECKPOINT_PATH_TAG, CHECKPOINT_DIR)
    lineage_tags = tracking.lineage_tags(upstream)
    test_metrics = {k: v for k, v in upstream.data.metrics.items() if k.startswith("test_")}
    tokenize_run = runs["tokenize"]
    max_length = int(tokenize_run.data.params["config.max_length"])  # what the model was trained on
    id2label = artifacts.id2label_of(tokenize_run)
    reference = None
    if cfg.save_mode == "reference":  # before the run: a base model with no hub address is an error
        reference = hub.reference_for(lineage_tags[BASE_MODEL_TAG], lineage_tags[BASE_REVISION_TAG])
        problem = task.reference_problem(str(hub.snapshot_dir(reference.repo_id, reference.revision)))
        if problem:
            raise UserError(f"save_mode reference of base model {lineage_tags[BASE_MODEL_TAG]}: {problem}")

    with tracking.step_run(STEP, profile, cfg, upstream.info.run_id) as (run_id, tmp):
        if reference is not None:  # the adapter that evaluate evaluated (checkpoint/ is merged)
            path = ADAPTER_DIR if evaluated == CHECKPOINT_DIR else evaluated
            checkpoint = artifacts.download_checkpoint(finetune_run_id, tmp / "model", path)
        else:
            checkpoint = artifacts.download_checkpoint(finetune_run_id, tmp / "model", evaluated)
            if lora.is_adapter(checkpoint):  # an epoch of a LoRA run: fold it in first
                base = hub.resolve_base_model(lineage_tags[BASE_MODEL_TAG])
                checkpoint = lora.merge_adapter(task, checkpoint, base, id2label, tmp / "merged")
        predictions = pd.read_parquet(
            artifacts.download(upstream.info.run_id, PREDICTIONS_FILE, tmp / "eval")
        )
        example = task.example(predictions, cfg, max_length, 3, lineage_tags)
        options: dict[str, Any] = {
            "name": MODEL_NAME,
            "task": task.mlflow_task,
            "signature": example.signature,
            "input_example": example.inputs if example.input_example is None else example.input_example,
            "model_config": example.model_config,
            "pip_requirements": pip_requirements(installed_versions(adapter=reference is not None)),
            **example.options,
        }
        try:
            if reference is not None:
                info = log_adapter_reference(task, reference, checkpoint, id2label, options)
            else:
                info = log_candidate(
                    task, checkpoint, cfg.save_mode, options, source_name(lineage_tags[BASE_MODEL_TAG])
                )
        except BaseException:
            discard_failed_model()
            raise
        tracking.kill_point("log_model.logged")  # logged, but the run does not say so yet

        client = mlflow.MlflowClient()
        client.set_logged_model_tags(
            info.model_id,
            {"role": "candidate", SAVE_MODE_TAG: cfg.save_mode, **lineage_tags},
        )
        if test_metrics:
            mlflow.log_metrics(test_metrics, model_id=info.model_id)
        # what this save mode stored (persist may add the weights later, in place)
        mlflow.log_metric(
            "model_artifact_bytes", artifact_bytes(client.get_logged_model(info.model_id).artifact_location)
        )
        expected = {"texts": example.inputs, "labels": example.outputs}
        (tmp / EXPECTED_FILE).write_text(json.dumps(expected, indent=2))
        mlflow.log_artifact(str(tmp / EXPECTED_FILE))
        mlflow.set_tags(
            {
                MODEL_URI_TAG: info.model_uri,
                MODEL_ID_TAG: info.model_id,
                SAVE_MODE_TAG: cfg.save_mode,
                **lineage_tags,
            }
        )

        baseline_uri = log_baseline(task, lineage_tags, len(id2label))
        mlflow.set_tag(BASELINE_URI_TAG, baseline_uri)
        log.info(f"logged {info.model_uri} ({cfg.save_mode}); baseline {baseline_uri}")
        return run_id


def main(argv: list[str] | None = None) -> int:
    return cli.step_main(STEP, __doc__, UPSTREAM, run, argv)


if __name__ == "__main__":
    cli.exit_quickly(main())
