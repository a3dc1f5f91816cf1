"""The three ways ``log_model`` stores a model: ``full``, ``checkpoint`` and ``reference``.

``full`` loads the pipeline and saves it whole; ``checkpoint`` logs the checkpoint folder by path,
never loading the model; ``reference`` stores only the base model's hub address and revision
(plus a LoRA adapter), built without reading weights or vocabulary. The model class and pipeline
task are the task's.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from hf_finetune import chain, compat, hub, logs
from hf_finetune.errors import UserError
from hf_finetune.tags import (
    BASE_MODEL_TAG,
    BASE_REVISION_SOURCE_TAG,
    BASE_REVISION_TAG,
    DATA_DIGEST_TAG,
    SAVE_MODE_TAG,
)
from hf_finetune.tasks.base import Task

log = logs.logger(chain.LOG_MODEL)
BASELINE_NAME = "baseline"  # the logged model of the base model, by reference


def pipeline_of(task: Task, **parts: Any) -> Any:
    """``transformers.pipeline`` for the task's pipeline task (a name only the task knows)."""
    import transformers

    build: Any = transformers.pipeline  # its overloads want the task as a literal
    return build(task.pipeline_task, **parts)


def pip_requirements(versions: dict[str, str]) -> list[str]:
    """Pinned requirements for serving; a local build tag (``2.13.0+cpu``) is not on PyPI."""
    return [f"{name}=={re.sub(r'[+].*$', '', version)}" for name, version in sorted(versions.items())]


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


def source_name(base_model: str) -> str:
    """How a logged model names its source: the base model's hub id, or a folder's name (never
    a local path, which would mean nothing on another machine)."""
    return (
        Path(base_model).name if Path(base_model).is_absolute() or base_model.startswith(".") else base_model
    )


def log_candidate(task: Task, checkpoint: Path, save_mode: str, options: dict[str, Any], source: str) -> Any:
    """Log the fine-tuned model from its checkpoint folder: the pipeline (``full``) or the folder.

    ``checkpoint`` must be a folder nobody writes into afterwards (the step's own download): in a
    local artifact store the logged files are hard links to it (``checkpoint`` mode) or to
    MLflow's staging folder (``full``), so the weights are not copied again. The model names
    ``source`` (``source_name``) as what it came from, not the folder.
    """
    import mlflow

    # every file is local: no model-card or license lookups on the hub
    with compat.hub_offline(), compat.quick_save_checks(), compat.uploads_linked():
        if save_mode == "full":
            pipe = pipeline_of(task, model=str(checkpoint), tokenizer=str(checkpoint))
            pipe.model.name_or_path = source
            return mlflow.transformers.log_model(pipe, **options)
        # checkpoint: logged by path; the model is never built in this process
        with compat.linked_checkpoint_copy(), compat.source_named(source):
            return mlflow.transformers.log_model(str(checkpoint), **options)


def meta_skeleton(task: Task, config: Any) -> Any:
    """The task's model of ``config`` on PyTorch's meta device (shapes, no data), one layer deep.

    Of a model logged by reference MLflow records its class, dtype and hub name, never its
    weights or depth (``mlflow.transformers.flavor_config``). Each layer only costs time to build
    (24 in BERT-large), so one is built. A config that does not allow a
    single layer (per-layer settings checked against the count) is built whole. Nor are its
    weights initialised: on the meta device they hold no data, and each init runs PyTorch's
    Python fallback to do nothing: half of the build.
    """
    import torch
    from transformers.initialization import no_init_weights

    shallow = copy.deepcopy(config)
    if getattr(config, "num_hidden_layers", 0) > 1:
        shallow.num_hidden_layers = 1
    try:
        with torch.device("meta"), no_init_weights():
            return task.model_class().from_config(shallow)
    except Exception:  # noqa: BLE001 - the whole depth below, which raises what is really wrong
        with torch.device("meta"), no_init_weights():
            return task.model_class().from_config(config)


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


def reference_pipeline(task: Task, ref: hub.HubReference, num_labels: int) -> Any:
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
    model = meta_skeleton(task, config)
    tokenizer = empty_tokenizer(ref, config)
    # device=meta: the pipeline would otherwise move the (empty) model to the CPU
    return pipeline_of(task, model=model, tokenizer=tokenizer, device=torch.device("meta"))


def adapter_pipeline(task: Task, ref: hub.HubReference, adapter: Path, id2label: dict[int, str]) -> Any:
    """A pipeline of the LoRA ``adapter`` on the base model at ``ref``, loaded from the hub cache
    by its hub name and revision, so that MLflow records that address and saves only the adapter.
    The base weights are read once (PEFT needs real tensors to attach the adapter to)."""
    import transformers

    model = task.load_trained(adapter, ref.repo_id, id2label, revision=ref.revision)
    tokenizer = transformers.AutoTokenizer.from_pretrained(adapter)
    return pipeline_of(task, model=model, tokenizer=tokenizer)


def log_adapter_reference(
    task: Task, ref: hub.HubReference, adapter: Path, id2label: dict[int, str], options: dict[str, Any]
) -> Any:
    """Log a LoRA fine-tune as its adapter (kilobytes to megabytes) plus the base model's hub
    address and the revision actually loaded; ``persist`` later folds it into whole weights."""
    import mlflow

    snapshot = hub.snapshot_dir(ref.repo_id, ref.revision)
    with compat.hub_offline(), compat.recorded_revision(ref.revision), compat.quick_save_checks():
        info = mlflow.transformers.log_model(
            adapter_pipeline(task, ref, adapter, id2label),
            save_pretrained=False,
            model_card=hub.model_card(snapshot),
            **options,
        )
    flavor = info.flavors["transformers"]  # the MLmodel file as written
    if flavor.get("source_model_revision") != ref.revision or "peft_adaptor" not in flavor:
        raise RuntimeError(f"MLflow did not record the adapter on {ref.repo_id}@{ref.revision}: {flavor}")
    return info


def log_reference(task: Task, ref: hub.HubReference, name: str, num_labels: int) -> Any:
    """Log ``ref`` by reference only: a hub address and revision, no weights."""
    import mlflow

    snapshot = hub.snapshot_dir(ref.repo_id, ref.revision)  # finetune loaded it from there
    with compat.hub_offline(), compat.recorded_revision(ref.revision), compat.quick_save_checks():
        info = mlflow.transformers.log_model(
            reference_pipeline(task, ref, num_labels),
            name=name,
            task=task.mlflow_task,
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


def log_baseline(task: Task, lineage_tags: dict[str, str], num_labels: int) -> str:
    """The base model by reference, as the baseline every candidate is compared with."""
    import mlflow

    base_model = lineage_tags[BASE_MODEL_TAG]
    try:
        ref = hub.reference_for(base_model, lineage_tags[BASE_REVISION_TAG])
        problem = task.reference_problem(str(hub.snapshot_dir(ref.repo_id, ref.revision)))
        if problem:
            raise UserError(f"base model {base_model}: {problem}")
    except UserError as exc:
        log.info(f"baseline not logged by reference: {exc}")
        return f"skipped: {exc}"
    info = log_reference(task, ref, BASELINE_NAME, num_labels)
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
