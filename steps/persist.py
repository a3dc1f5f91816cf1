"""persist: make the registered version self-contained in place, verify it, then let it be champion.

Reads: ``--register_run_id``; the version it registered, the logged model behind it, and the
log_model run's ``expected_predictions.json``.
Writes:
- for a LoRA adapter by reference: the adapter folded into the base model's weights (the base
  is loaded once for that), checked to give the input example the adapter model's class
  probabilities (to 1e-5; a causal LM: exactly its greedy generations, reloaded from disk), then
  written as for a whole model below. MLflow's own
  ``persist_pretrained_model`` writes adapter-keyed weights that do not load (mlflow #23761);
- for a reference-only version: the referenced weights and tokenizer files, copied from the hub
  cache (downloaded first only when the hub is reachable) into the logged model's own artifacts
  (``model/``, ``components/tokenizer/``), then its ``MLmodel`` rewritten to point at them. Files
  are linked into a staging folder and uploaded once (into a local artifact store: hard-linked,
  no byte copied), never loaded: memory does not grow with
  the model (MLflow's ``persist_pretrained_model`` loads the whole pipeline to save it again).
  The weights go up before the new ``MLmodel``, so a crash half-way leaves a valid reference model;
- for every version: verification: it loads from the registry with its weights in the artifact
  store and predicts the input example; for the fine-tuned candidate the labels must equal those
  evaluate gave the same texts;
- version tags ``persisted=true``, ``verified=true``; alias ``champion`` if the gate passed and,
  judged again against the champion of now (``steps/gate.py``), still passes; the ``gate_*``
  comparison tags are updated to that judgement;
- the version's model card (``steps/card.py``) rewritten to say so, and the previous champion's
  if the alias moved;
- run tags ``registered_model``, ``model_version``, ``persisted_now`` (``true`` if files were copied).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hf_finetune import artifacts, chain, cli, compat, files, hub, logs, tracking
from hf_finetune.chain import CHAMPION, EXPECTED_FILE
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.registry import card, gate, history, locks
from hf_finetune.tags import (
    GATE_TAG,
    MODEL_ID_TAG,
    PERSISTED_TAG,
    REGISTERED_MODEL_TAG,
    UPSTREAM_TAG,
    VERIFIED_TAG,
    VERSION_TAG,
)
from hf_finetune.tasks import registry
from hf_finetune.tasks.base import Task

STEP = chain.PERSIST
log = logs.logger(STEP)
UPSTREAM = chain.upstream_param(STEP)
MODEL_DIR = "model"  # MLflow's transformers flavor layout
TOKENIZER_DIR = "components/tokenizer"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "added_tokens.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin")
PEFT_KEY = "peft_adaptor"  # MLflow's flavor key for an adapter folder in the model's artifacts


# ----------------------------------------------------------------------------- pure functions
def files_to_copy(snapshot_files: list[str]) -> dict[str, str]:
    """Snapshot file -> where it goes in the model's artifacts (model config and weights,
    tokenizer files). Sentence-transformers extras, READMEs and other formats stay behind."""
    plan = {}
    for name in snapshot_files:
        if "/" in name:
            continue
        if name == "config.json" or name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json"):
            plan[name] = f"{MODEL_DIR}/{name}"
        elif name in TOKENIZER_FILES:
            plan[name] = f"{TOKENIZER_DIR}/{name}"
    return plan


def is_reference_only(flavor: dict[str, Any]) -> bool:
    return "model_binary" not in flavor and "source_model_revision" in flavor


# ----------------------------------------------------------------------------- MLflow
def flavor_of(location: str, dst: Path) -> tuple[Any, Path]:
    """The MLmodel at artifact ``location`` (downloaded alone, not the weights) and its path."""
    import mlflow
    from mlflow.models import Model

    path = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=f"{location.rstrip('/')}/MLmodel", dst_path=str(dst))
    )
    return Model.load(str(path)), path


def persist_in_place(
    model_id: str,
    tmp: Path,
    task: Task | None = None,
    id2label: dict[int, str] | None = None,
    texts: list[str] | None = None,
    cfg: Config | None = None,
    tags: dict[str, str] | None = None,
) -> bool:
    """Make a reference-only model self-contained in its own artifacts. False if it already was.

    A whole base model by reference: its files are copied from the hub cache, never loaded. A LoRA
    adapter by reference: the task folds the adapter into the base weights (``id2label`` names the
    head's outputs) and the merged model must give ``texts`` what the adapter model gave.
    """
    import mlflow
    from mlflow.transformers.flavor_config import update_flavor_conf_to_persist_pretrained_model

    client = mlflow.MlflowClient()
    location = client.get_logged_model(model_id).artifact_location
    mlmodel, mlmodel_path = flavor_of(location, tmp / "meta")
    flavor = mlmodel.flavors["transformers"]
    if not is_reference_only(flavor):
        return False
    snapshot = hub.local_snapshot(flavor["source_model_name"], flavor["source_model_revision"])
    staged = tmp / "persist"
    if flavor.get(PEFT_KEY):
        if task is None or id2label is None or not texts or cfg is None:
            raise ValueError("persisting a LoRA adapter needs its task, labels, texts and config")
        adapter = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location.rstrip('/')}/{flavor[PEFT_KEY]}", dst_path=str(tmp / "adapter")
            )
        )
        merged = task.merge_verified(adapter, snapshot, id2label, texts, tmp / "merged", cfg, tags or {})
        plan = files_to_copy(sorted(p.name for p in merged.iterdir() if p.is_file()))
        source_dir = merged
    else:
        plan = files_to_copy(sorted(p.name for p in snapshot.iterdir() if p.is_file()))
        source_dir = snapshot
    if not any(dst.startswith(MODEL_DIR) and dst.endswith(WEIGHT_SUFFIXES) for dst in plan.values()):
        raise UserError(f"{source_dir} holds no weight files to persist")
    for source, target in plan.items():
        (staged / target).parent.mkdir(parents=True, exist_ok=True)
        # staged by hard link to the cache's file (a copy only across filesystems)
        files.link_or_copy(str((source_dir / source).resolve()), str(staged / target))
    # weights first ... (into a local store by hard link again: the hub replaces its files by
    # renaming and never writes into them, so no byte is copied; into any other store, once)
    with compat.uploads_linked():
        client.log_model_artifacts(model_id, str(staged))
    tracking.kill_point("persist.weights_uploaded")
    persisted = update_flavor_conf_to_persist_pretrained_model(flavor)
    persisted.pop(PEFT_KEY, None)  # merged: the adapter stays in the artifacts as a record only
    mlmodel.add_flavor("transformers", **persisted)
    mlmodel.save(str(mlmodel_path))
    client.log_model_artifact(model_id, str(mlmodel_path))  # ... then the MLmodel that uses them
    return True


def verify(
    task: Task, name: str, version: str, texts: list[str], expected: list[str] | None, tmp: Path
) -> None:
    """The version is self-contained, loads and predicts; the same labels as evaluated, if known."""
    import mlflow

    model_uri = f"models:/{name}/{version}"
    location = mlflow.MlflowClient().get_model_version_download_uri(name, version)
    mlmodel, _ = flavor_of(location, tmp / "verify")
    if "model_binary" not in mlmodel.flavors["transformers"]:
        raise RuntimeError(f"{model_uri} still references its weights instead of holding them")
    predicted = task.served_outputs(mlflow.pyfunc.load_model(model_uri), texts)
    if expected is not None and predicted != expected:
        raise RuntimeError(
            f"{model_uri} predicts {predicted} for the input example, "
            f"evaluate saw {expected}: the registered artifacts are not the evaluated model"
        )


def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    task = registry.task_of(cfg)
    upstream = tracking.get_upstream(upstream_run_id, chain.REGISTER, UPSTREAM, cfg.task)
    name = upstream.data.tags[REGISTERED_MODEL_TAG]
    number = upstream.data.tags[VERSION_TAG]
    try:
        version = client.get_model_version(name, number)
    except MlflowException:
        raise UserError(
            f"{name} version {number} (registered by run {upstream.info.run_id}) no "
            "longer exists: register again"
        ) from None
    log_model_run = client.get_run(upstream.data.tags[UPSTREAM_TAG])
    model_id = log_model_run.data.tags[MODEL_ID_TAG]

    with tracking.step_run(STEP, profile, cfg, upstream.info.run_id) as (run_id, tmp):
        expected = json.loads(
            artifacts.download(log_model_run.info.run_id, EXPECTED_FILE, tmp / "expected").read_text()
        )
        done_before = version.tags.get(PERSISTED_TAG) == "true" and version.tags.get(VERIFIED_TAG) == "true"
        copied = False
        if done_before:  # idempotent: verified files do not change in place
            log.info(f"{name} v{number} was persisted and verified before; not loading it again")
        else:
            tokenize_run = tracking.upstream_chain(log_model_run)["tokenize"]
            id2label = artifacts.id2label_of(tokenize_run)
            copied = persist_in_place(
                model_id, tmp, task, id2label, expected["texts"], cfg, dict(version.tags)
            )
            verify(task, name, number, expected["texts"], expected["labels"], tmp)
        client.set_model_version_tag(name, number, PERSISTED_TAG, "true")
        client.set_model_version_tag(name, number, VERIFIED_TAG, "true")
        promoted = False
        # the champion read and move, and the cards that say who holds which alias: one step
        with locks.registry_lock(client, name):
            history.observe(client, name)  # a move by hand since the last look, recorded first
            if version.tags.get(GATE_TAG) == "passed":
                decision = gate.judge_version(client, name, version, cfg, tmp / "gate")
                previous = client.get_registered_model(name).aliases.get(CHAMPION)
                promoted = decision.passed and gate.move_champion(
                    client, name, number, "persist", decision.reason, run_id
                )
                if promoted:
                    card.refresh_others(client, name, [previous], number)
            history.seen(client, name)
            card.refresh(client, name, number)  # it holds its weights now, and may be champion
        mlflow.set_tags(
            {
                REGISTERED_MODEL_TAG: name,
                VERSION_TAG: str(number),
                "persisted_now": str(copied).lower(),
            }
        )
        log.info(
            f"{name} v{number} "
            + ("persisted and verified" if copied else "verified")
            + ("; now champion" if promoted else "")
        )
        return run_id


def main(argv: list[str] | None = None) -> int:
    return cli.step_main(STEP, __doc__, UPSTREAM, run, argv)


if __name__ == "__main__":
    cli.exit_quickly(main())
