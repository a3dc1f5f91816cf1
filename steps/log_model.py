"""log_model: the evaluated fine-tuned model -> an MLflow logged model, in the profile's save mode.

Reads: ``--evaluate_run_id``; through its upstream tag the finetune run's ``checkpoint/``, and the
evaluate run's ``evaluation/predictions.parquet`` (the input example and what the model said).
Writes:
- logged model ``model`` (MLflow 3: it lives outside the run's artifacts), with a signature that
  declares the ``batch_size`` inference param, an input example, ``model_config`` (truncation) and
  explicit ``pip_requirements``. Save modes:
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

import copy
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from steps import artifacts, chain, common, compat, hub, modeling
from steps.chain import ADAPTER_DIR, CHECKPOINT_DIR, EVAL_DIR, EXPECTED_FILE, TASK
from steps.config import Config, check_save_mode
from steps.errors import UserError
from steps.tags import (
    BASE_MODEL_TAG,
    BASE_REVISION_SOURCE_TAG,
    BASE_REVISION_TAG,
    BASELINE_URI_TAG,
    CHECKPOINT_PATH_TAG,
    DATA_DIGEST_TAG,
    MODEL_ID_TAG,
    MODEL_URI_TAG,
    PEFT_TAG,
    SAVE_MODE_TAG,
    UPSTREAM_TAG,
)

STEP = chain.LOG_MODEL
log = common.logger(STEP)
UPSTREAM = chain.upstream_param(STEP)
MODEL_NAME = "model"
BASELINE_NAME = "baseline"
INFERENCE_PARAMS = {"batch_size": 8}


# ----------------------------------------------------------------------------- pure functions
def input_example(predictions: pd.DataFrame, size: int) -> pd.DataFrame:
    """A few test texts, each label represented first, with what evaluate predicted for them."""
    firsts = predictions.groupby("label", sort=True).head(1)
    rest = predictions.drop(firsts.index)
    chosen = pd.concat([firsts, rest]).head(max(size, len(firsts)))
    return chosen[["text", "prediction"]].reset_index(drop=True)


def pip_requirements(versions: dict[str, str]) -> list[str]:
    """Pinned requirements for serving; a local build tag (``2.13.0+cpu``) is not on PyPI."""
    return [f"{name}=={re.sub(r'[+].*$', '', version)}" for name, version in sorted(versions.items())]


def model_config(max_length: int) -> dict[str, Any]:
    """Pipeline call settings saved with the model: long texts are truncated, never an error."""
    return {"truncation": True, "max_length": max_length}


# ----------------------------------------------------------------------------- MLflow
def installed_versions(adapter: bool = False) -> dict[str, str]:
    import mlflow
    import safetensors
    import tokenizers
    import torch
    import transformers

    versions = {
        "mlflow": mlflow.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
    }
    if adapter:  # MLflow applies a LoRA adapter with peft when it loads the model
        import peft

        versions["peft"] = peft.__version__
    return versions


def log_candidate(checkpoint: Path, save_mode: str, options: dict[str, Any]) -> Any:
    """Log the fine-tuned model from its checkpoint folder: the pipeline (``full``) or the folder.

    ``checkpoint`` must be a folder nobody writes into afterwards (the step's own download): in a
    local artifact store the logged files are hard links to it (``checkpoint`` mode) or to
    MLflow's staging folder (``full``), so the weights are not copied again.
    """
    import mlflow

    # every file is local: no model-card or license lookups on the hub
    with compat.hub_offline(), compat.quick_save_checks(), compat.uploads_linked():
        if save_mode == "full":
            import transformers

            pipe = transformers.pipeline(TASK, model=str(checkpoint), tokenizer=str(checkpoint))
            return mlflow.transformers.log_model(pipe, **options)
        # checkpoint: logged by path; the model is never built in this process
        with compat.linked_checkpoint_copy():
            return mlflow.transformers.log_model(str(checkpoint), **options)


def meta_skeleton(config: Any) -> Any:
    """The classifier of ``config`` on PyTorch's meta device (shapes, no data), one layer deep.

    Of a model logged by reference MLflow records its class, dtype and hub name, never its
    weights or depth (``mlflow.transformers.flavor_config``). Each layer only costs time to build
    (24 in BERT-large), so one is built. A config that does not allow a
    single layer (per-layer settings checked against the count) is built whole. Nor are its
    weights initialised: on the meta device they hold no data, and each init runs PyTorch's
    Python fallback to do nothing: half of the build.
    """
    import torch
    import transformers
    from transformers.initialization import no_init_weights

    shallow = copy.deepcopy(config)
    if getattr(config, "num_hidden_layers", 0) > 1:
        shallow.num_hidden_layers = 1
    try:
        with torch.device("meta"), no_init_weights():
            return transformers.AutoModelForSequenceClassification.from_config(shallow)
    except Exception:  # noqa: BLE001 - the whole depth below, which raises what is really wrong
        with torch.device("meta"), no_init_weights():
            return transformers.AutoModelForSequenceClassification.from_config(config)


def empty_tokenizer(ref: hub.HubReference, config: Any = None) -> Any:
    """The tokenizer class ``AutoTokenizer`` picks for ``ref``, built without a vocabulary.

    Of a reference's tokenizer MLflow records its class, hub name and revision, never its
    vocabulary (``mlflow.transformers.flavor_config``), and loads it from the hub by those. The
    class is chosen by ``AutoTokenizer``'s own code (tokenizer config, model type, the hub's known
    mistakes); only its last step, reading the vocabulary files into the tokenizer, is replaced
    by building the class empty. That read is most of loading a tokenizer: 0.7 MB of JSON parsed
    for BERT, tens of MB for the 250,000-token vocabularies of multilingual
    models. A class that cannot be built empty is read whole. ``config``, the model's config when
    the caller has read it already, spares ``AutoTokenizer`` reading it again.
    """
    import transformers

    with compat.tokenizers_built_empty():
        return transformers.AutoTokenizer.from_pretrained(ref.repo_id, revision=ref.revision, config=config)


def reference_pipeline(ref: hub.HubReference, num_labels: int) -> Any:
    """A pipeline that describes ``ref`` without holding its weights or its vocabulary.

    For a reference (``save_pretrained=False``) MLflow reads names, classes, dtype and task from
    the pipeline and never its weights, so the model is a skeleton (``meta_skeleton``) and the
    tokenizer an empty one of its class (``empty_tokenizer``): logging a reference costs the same
    for a 100 MB model as for a 100 GB one, in time and in memory. Only the config files are read.
    """
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(
        ref.repo_id, revision=ref.revision, num_labels=num_labels
    )
    model = meta_skeleton(config)
    tokenizer = empty_tokenizer(ref, config)
    # device=meta: the pipeline would otherwise move the (empty) model to the CPU
    return transformers.pipeline(TASK, model=model, tokenizer=tokenizer, device=torch.device("meta"))


def adapter_pipeline(ref: hub.HubReference, adapter: Path, id2label: dict[int, str]) -> Any:
    """A pipeline of the LoRA ``adapter`` on the base model at ``ref``, loaded from the hub cache
    by its hub name and revision, so that MLflow records that address and saves only the adapter.
    The base weights are read once (PEFT needs real tensors to attach the adapter to)."""
    import transformers

    model = modeling.load_classifier(adapter, ref.repo_id, id2label, revision=ref.revision)
    tokenizer = transformers.AutoTokenizer.from_pretrained(adapter)
    return transformers.pipeline(TASK, model=model, tokenizer=tokenizer)


def log_adapter_reference(
    ref: hub.HubReference, adapter: Path, id2label: dict[int, str], options: dict[str, Any]
) -> Any:
    """Log a LoRA fine-tune as its adapter (kilobytes to megabytes) plus the base model's hub
    address and the revision actually loaded; ``persist`` later folds it into whole weights."""
    import mlflow

    snapshot = hub.snapshot_dir(ref.repo_id, ref.revision)
    with compat.hub_offline(), compat.recorded_revision(ref.revision), compat.quick_save_checks():
        info = mlflow.transformers.log_model(
            adapter_pipeline(ref, adapter, id2label),
            save_pretrained=False,
            model_card=hub.model_card(snapshot),
            **options,
        )
    flavor = info.flavors["transformers"]  # the MLmodel file as written
    if flavor.get("source_model_revision") != ref.revision or "peft_adaptor" not in flavor:
        raise RuntimeError(f"MLflow did not record the adapter on {ref.repo_id}@{ref.revision}: {flavor}")
    return info


def log_reference(ref: hub.HubReference, name: str, num_labels: int) -> Any:
    """Log ``ref`` by reference only: a hub address and revision, no weights."""
    import mlflow

    snapshot = hub.snapshot_dir(ref.repo_id, ref.revision)  # finetune loaded it from there
    with compat.hub_offline(), compat.recorded_revision(ref.revision), compat.quick_save_checks():
        info = mlflow.transformers.log_model(
            reference_pipeline(ref, num_labels),
            name=name,
            task=TASK,
            save_pretrained=False,
            model_card=hub.model_card(snapshot),  # the cached README, not a hub request
            pip_requirements=pip_requirements(installed_versions()),
        )
    flavor = info.flavors["transformers"]  # the MLmodel file as written
    if flavor.get("source_model_revision") != ref.revision:  # pragma: no cover - a guard
        raise RuntimeError(f"MLflow recorded {flavor.get('source_model_revision')}, not {ref.revision}")
    return info


def discard_failed_model() -> None:
    """Delete the files of a model whose log failed half-way (a full disk, a lost store).

    MLflow marks such a logged model FAILED, so nothing registers it, but leaves what it had
    copied: on a full disk that is the space the user must free first. A model that reached READY
    is left alone.
    """
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        model = mlflow.last_logged_model()
        if model is not None and str(model.status).split(".")[-1].upper() == "FAILED":
            get_artifact_repository(model.artifact_location).delete_artifacts()
            log.info(f"deleted the files of logged model {model.model_id} (its log failed)")
    except Exception as exc:  # noqa: BLE001 - the original error is the one to report
        log.warning(f"could not delete the files of the failed model: {exc}")


def artifact_bytes(artifact_uri: str) -> int:
    """The size of everything under ``artifact_uri``, through the artifact store's listing."""
    import mlflow

    total = 0
    for info in mlflow.artifacts.list_artifacts(artifact_uri=artifact_uri):
        if info.is_dir:
            total += artifact_bytes(f"{artifact_uri.rstrip('/')}/{info.path.rsplit('/', 1)[-1]}")
        else:
            total += info.file_size or 0
    return total


def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    import mlflow
    from mlflow.models import infer_signature

    upstream = common.get_upstream(upstream_run_id, chain.EVALUATE, UPSTREAM)
    runs = common.upstream_chain(upstream)
    adapter = "finetune" in runs and runs["finetune"].data.tags.get(PEFT_TAG) == "lora"
    check_save_mode(cfg.save_mode, adapter=adapter)
    finetune_run_id = upstream.data.tags[UPSTREAM_TAG]
    evaluated = upstream.data.tags.get(CHECKPOINT_PATH_TAG, CHECKPOINT_DIR)
    lineage_tags = common.lineage_tags(upstream)
    test_metrics = {k: v for k, v in upstream.data.metrics.items() if k.startswith("test_")}
    tokenize_run = runs["tokenize"]
    max_length = int(tokenize_run.data.params["config.max_length"])  # what the model was trained on
    id2label = artifacts.id2label_of(tokenize_run)
    reference = None
    if cfg.save_mode == "reference":  # before the run: a base model with no hub address is an error
        reference = hub.reference_for(lineage_tags[BASE_MODEL_TAG], lineage_tags[BASE_REVISION_TAG])

    with common.step_run(STEP, profile, cfg, upstream.info.run_id) as (run_id, tmp):
        if reference is not None:  # the adapter that evaluate evaluated (checkpoint/ is merged)
            path = ADAPTER_DIR if evaluated == CHECKPOINT_DIR else evaluated
            checkpoint = artifacts.download_checkpoint(finetune_run_id, tmp / "model", path)
        else:
            checkpoint = artifacts.download_checkpoint(finetune_run_id, tmp / "model", evaluated)
            if modeling.is_adapter(checkpoint):  # an epoch of a LoRA run: fold it in first
                base = common.resolve_base_model(lineage_tags[BASE_MODEL_TAG])
                checkpoint = modeling.merge_adapter(checkpoint, base, id2label, tmp / "merged")
        predictions = pd.read_parquet(
            common.download(upstream.info.run_id, f"{EVAL_DIR}/predictions.parquet", tmp / "eval")
        )
        example = input_example(predictions, size=3)
        texts = example["text"].tolist()
        signature = infer_signature(
            texts,
            pd.DataFrame({"label": example["prediction"], "score": [0.5] * len(example)}),
            params=INFERENCE_PARAMS,
        )
        options: dict[str, Any] = {
            "name": MODEL_NAME,
            "task": TASK,
            "signature": signature,
            "input_example": texts,
            "model_config": model_config(max_length),
            "pip_requirements": pip_requirements(installed_versions(adapter=reference is not None)),
        }
        try:
            if reference is not None:
                info = log_adapter_reference(reference, checkpoint, id2label, options)
            else:
                info = log_candidate(checkpoint, cfg.save_mode, options)
        except BaseException:
            discard_failed_model()
            raise
        common.kill_point("log_model.logged")  # logged, but the run does not say so yet

        client = mlflow.MlflowClient()
        client.set_logged_model_tags(
            info.model_id, {"role": "candidate", SAVE_MODE_TAG: cfg.save_mode, **lineage_tags}
        )
        if test_metrics:
            mlflow.log_metrics(test_metrics, model_id=info.model_id)
        # what this save mode stored (persist may add the weights later, in place)
        mlflow.log_metric(
            "model_artifact_bytes", artifact_bytes(client.get_logged_model(info.model_id).artifact_location)
        )
        (tmp / EXPECTED_FILE).write_text(
            json.dumps({"texts": texts, "labels": example["prediction"].tolist()}, indent=2)
        )
        mlflow.log_artifact(str(tmp / EXPECTED_FILE))
        mlflow.set_tags(
            {
                MODEL_URI_TAG: info.model_uri,
                MODEL_ID_TAG: info.model_id,
                SAVE_MODE_TAG: cfg.save_mode,
                **lineage_tags,
            }
        )

        baseline_uri = log_baseline(lineage_tags, len(predictions["label"].unique()))
        mlflow.set_tag(BASELINE_URI_TAG, baseline_uri)
        log.info(f"logged {info.model_uri} ({cfg.save_mode}); baseline {baseline_uri}")
        return run_id


def log_baseline(lineage_tags: dict[str, str], num_labels: int) -> str:
    """The base model by reference, as the baseline every candidate is compared with."""
    import mlflow

    base_model = lineage_tags[BASE_MODEL_TAG]
    try:
        ref = hub.reference_for(base_model, lineage_tags[BASE_REVISION_TAG])
    except UserError as exc:
        log.info(f"baseline not logged by reference: {exc}")
        return f"skipped: {exc}"
    info = log_reference(ref, BASELINE_NAME, num_labels)
    mlflow.MlflowClient().set_logged_model_tags(
        info.model_id,
        {
            "role": "baseline",
            SAVE_MODE_TAG: "reference",
            BASE_MODEL_TAG: base_model,
            "hub_repo": ref.repo_id,
            BASE_REVISION_TAG: ref.revision,
            BASE_REVISION_SOURCE_TAG: ref.revision_source,
            DATA_DIGEST_TAG: lineage_tags[DATA_DIGEST_TAG],
        },
    )
    return str(info.model_uri)


def main(argv: list[str] | None = None) -> int:
    return common.step_main(STEP, __doc__, UPSTREAM, run, argv)


if __name__ == "__main__":
    common.exit_quickly(main())
