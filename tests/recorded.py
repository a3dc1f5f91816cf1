"""Reading what a pipeline run recorded, and the few fixtures the tests share to make it."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow

from hf_finetune.tasks import registry

CLASSIFICATION = registry.TASKS["text-classification"]


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


POSTGRES_ENV = "PIPELINE_TEST_POSTGRES_URI"
REQUIRE_POSTGRES_ENV = "PIPELINE_REQUIRE_POSTGRES"


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """The URI of a new, empty PostgreSQL database (dropped afterwards) when
    ``PIPELINE_TEST_POSTGRES_URI`` names a server; "" when it does not, unless
    ``PIPELINE_REQUIRE_POSTGRES=1`` makes that a failure (CI starts one)."""
    import pytest

    base = os.environ.get(POSTGRES_ENV, "")
    if not base:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {POSTGRES_ENV} is not set")
        yield ""
        return
    import sqlalchemy

    name = f"pipeline_test_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def logged_model_status(client: Any, name: str, version: str | int) -> str:
    """READY, PENDING or FAILED: the logged model behind a registered version."""
    full = client.get_model_version(name, str(version))  # search_model_versions leaves model_id empty
    logged = client.get_logged_model(full.model_id or full.source.removeprefix("models:/"))
    return str(logged.status).split(".")[-1].upper()


def assert_both_registered_and_the_gate_held(client: Any, name: str, main_ids: list[str]) -> None:
    """After several ``main`` runs at once with one registered model: each registered its own
    version, nothing half-done is left, and the aliases are what running them one at a time
    would give: each version was judged against the champion of its moment (the one before it
    that passed), and the champion is the last that passed; challenger is the newest."""
    from hf_finetune.registry import locks

    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = [client.get_run(i).info for i in main_ids]
    assert {run.status for run in runs} == {"FINISHED"}
    assert max(r.start_time for r in runs) < min(r.end_time for r in runs), "they did not overlap"
    registered = {child_runs(i)["register"].data.tags["model_version"] for i in main_ids}
    versions = {
        str(v.version): client.get_model_version(name, v.version)
        for v in client.search_model_versions(f"name = '{name}'")
    }
    assert registered == set(versions) and len(versions) == len(main_ids)  # nothing lost
    champion = ""
    for number in sorted(versions, key=int):
        version = versions[number]
        assert logged_model_status(client, name, version.version) == "READY"
        assert version.tags["persisted"] == "true" and "aliases_pending" not in version.tags
        assert version.tags["gate_compared_version"] == champion, (number, version.tags)
        if version.tags["gate"] == "passed":
            champion = number
    aliases = client.get_registered_model(name).aliases
    assert str(aliases["champion"]) == champion
    assert str(aliases["challenger"]) == max(versions, key=int)
    assert not client.search_runs(experiments, "attributes.status = 'RUNNING'")
    locks = [m.name for m in client.search_registered_models() if m.name.endswith(locks.SUFFIX)]
    assert not locks, locks


class Echo(mlflow.pyfunc.PythonModel):
    """The smallest model to log: it predicts its input."""

    def predict(self, context, model_input):  # type: ignore[no-untyped-def]
        return model_input


def register_tiny_classifier(name: str, folder: Path, texts: list[str]) -> str:
    """A random-init two-layer BERT ham/spam classifier with the bundled tokenizer, logged as the
    log_model step logs a model (save mode full) and registered as ``name``'s champion: a model
    to score with in milliseconds. Its version."""
    import pandas as pd
    import torch
    from mlflow.models import infer_signature
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from hf_finetune import hub, save_modes, settings
    from hf_finetune.tasks.text_classification import task as tc_task
    from steps import log_model

    torch.manual_seed(0)
    labels = {0: "ham", 1: "spam"}
    tiny = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    BertForSequenceClassification(tiny).save_pretrained(folder)
    AutoTokenizer.from_pretrained(hub.resolve_base_model(settings.BUNDLED_BASE_MODEL)).save_pretrained(folder)
    signature = infer_signature(
        texts[:2],
        pd.DataFrame({"label": ["ham", "spam"], "score": [0.5, 0.5]}),
        params={"batch_size": 8},
    )
    options = {
        "name": log_model.MODEL_NAME,
        "task": CLASSIFICATION.pipeline_task,
        "signature": signature,
        "input_example": texts[:2],
        "model_config": tc_task.model_config(32),
        "pip_requirements": save_modes.pip_requirements(save_modes.installed_versions()),
    }
    with mlflow.start_run():
        info = save_modes.log_candidate(CLASSIFICATION, folder, "full", options, "tiny-bert")
    version = mlflow.register_model(info.model_uri, name)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version.version)
    return str(version.version)


def bundled_tokenizer() -> Any:
    """The bundled model's tokenizer as the text-generation task uses it (EOS and pad set)."""
    from transformers import AutoTokenizer

    from hf_finetune import hub, settings
    from hf_finetune.tasks.text_generation import causal

    resolved = hub.resolve_base_model(settings.BUNDLED_BASE_MODEL)
    return causal.with_special_tokens(AutoTokenizer.from_pretrained(resolved))


def tiny_decoder(kind: str, folder: Path) -> Path:
    """A randomly initialised GPT-2 or Llama of two layers with the bundled tokenizer's vocabulary,
    saved like a hub checkpoint (the architectures users fine-tune, without their weights)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from hf_finetune.tasks.text_generation import causal

    tokenizer = bundled_tokenizer()
    torch.manual_seed(0)
    model: Any
    if kind == "gpt2":
        config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128)
        model = GPT2LMHeadModel(config)
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=128,
            )
        )
    causal.align_special_ids(model, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def in_hub_cache(folder: Path, repo_id: str, hub_cache: Path) -> str:
    """Place the model files of ``folder`` in ``hub_cache`` as the hub would have downloaded
    ``repo_id`` (``refs/main`` naming a commit, its snapshot holding the files), so that it loads
    by its hub id offline; returns the commit."""
    import hashlib
    import shutil

    commit = hashlib.sha1(repo_id.encode(), usedforsecurity=False).hexdigest()
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def java_17_or_newer() -> bool:
    """Whether a Java that Spark 4 runs on is on PATH."""
    import shutil
    import subprocess

    java = shutil.which("java")
    if java is None:
        return False
    done = subprocess.run([java, "-version"], capture_output=True, text=True)
    first = (done.stderr or done.stdout).split('"')
    return len(first) > 1 and int(first[1].split(".")[0]) >= 17
