"""End to end: ``main`` on the ``lora-reference`` profile, offline, and what each step recorded.

One main run (module fixture: 2 epochs on 2,000 of the corpus's rows in batches of 16, instead
of the profile's 4 epochs on all of it in batches of 32, the same settings otherwise: half the
time, and epoch 1 still learns) is read by every test here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from hf_finetune import artifacts, chain, hub, tags
from hf_finetune.settings import BUNDLED_BASE_MODEL, PROJECT_DIR
from hf_finetune.tasks.text_classification import classifier
from steps import evaluate, finetune
from tests.conftest import deleted_unless_a_test_failed, main_in_store, use_store
from tests.recorded import artifact_paths, child_runs

pytestmark = pytest.mark.slow
MODEL = "lora-spam"
ID2LABEL = {0: "ham", 1: "spam"}


@pytest.fixture(scope="module")
def lora_main(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("lora-store")
    argv = ["--profile", "lora-reference", "--num_train_epochs", "2", "--registered_model", MODEL]
    argv += ["--max_rows", "2000", "--train_batch_size", "16"]
    with deleted_unless_a_test_failed(request, root):
        yield root, main_in_store(root, argv)


@pytest.fixture
def steps_of(lora_main: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> dict:
    root, run_id = lora_main
    use_store(root, monkeypatch)
    return child_runs(run_id)


def probe() -> pd.DataFrame:
    return pd.read_csv(PROJECT_DIR / "data" / "probe_sms.csv")


def test_finetune_trained_an_adapter_and_recorded_it(steps_of: dict) -> None:
    run = steps_of["finetune"]
    metrics = run.data.metrics
    # MiniLM: 6 layers x (query, value) x r=8 x (384 in + 384 out), plus the 384x2 head and bias
    assert metrics["trainable_params"] == 6 * 2 * 8 * (384 + 384) + 384 * 2 + 2
    assert 0.002 < metrics["trainable_fraction"] < 0.005
    assert run.data.tags[tags.PEFT_TAG] == "lora"
    files = artifact_paths(run.info.run_id)
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= files
    assert "checkpoint/model.safetensors" in files  # the merged, whole model
    for epoch in (1, 2):  # epoch_checkpoints: all
        assert f"epochs/epoch-{epoch}/adapter_model.safetensors" in files
        assert f"epochs/epoch-{epoch}/optimizer.pt" not in files
    logged = json.loads(run.data.tags[tags.EPOCH_CHECKPOINTS_TAG])
    assert logged == {"1": "epochs/epoch-1", "2": "epochs/epoch-2"}
    assert 1 <= metrics["best_epoch"] <= metrics["stopped_epoch"] <= 2
    assert run.data.tags[tags.BEST_EPOCH_TAG] == str(int(metrics["best_epoch"]))


def test_finetune_logged_system_metrics(steps_of: dict) -> None:
    run_id = steps_of["finetune"].info.run_id
    history = mlflow.MlflowClient().get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2  # sampled through the training, every 5 s
    assert steps_of["finetune"].data.metrics["system/system_memory_usage_megabytes"] > 100


def test_the_logged_model_was_the_adapter_only(steps_of: dict) -> None:
    run = steps_of["log_model"]
    assert run.data.tags["save_mode"] == "reference"
    assert run.data.metrics["model_artifact_bytes"] < 1_000_000  # the base model is 90 MB
    model = mlflow.MlflowClient().get_logged_model(run.data.tags["pipeline.model_id"])
    files = {f.path for f in mlflow.artifacts.list_artifacts(artifact_uri=model.artifact_location + "/peft")}
    assert "peft/adapter_model.safetensors" in files


def test_champion_is_persisted_and_predicts_what_the_adapter_did(steps_of: dict, tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["persisted"] == "true" and champion.tags["save_mode"] == "reference"
    texts = probe()["text"].tolist()
    predicted = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(texts)
    assert set(predicted["label"]) <= {"ham", "spam"}  # the labels survived the merge
    # unseen messages, in styles the bundled data never has
    assert (predicted["label"] == probe()["label"]).mean() >= 0.85

    adapter_dir = artifacts.download(steps_of["finetune"].info.run_id, chain.ADAPTER_DIR, tmp_path)
    base = hub.resolve_base_model(BUNDLED_BASE_MODEL)
    adapter = classifier.load_classifier(adapter_dir, base, ID2LABEL).eval()
    batch = AutoTokenizer.from_pretrained(adapter_dir)(
        texts, truncation=True, max_length=96, padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        probs = torch.softmax(adapter(**batch).logits, -1).numpy()
    assert list(predicted["label"]) == [ID2LABEL[i] for i in probs.argmax(-1)]
    assert abs(predicted["score"].to_numpy() - probs.max(-1)).max() <= 1e-5


def test_evaluate_takes_any_logged_epoch_and_names_them_for_one_that_was_not(
    steps_of: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    finetune_id = steps_of["finetune"].info.run_id
    assert (
        evaluate.main(
            ["--finetune_run_id", finetune_id, "--profile", "lora-reference", "--checkpoint_epoch", "1"]
        )
        == 0
    )
    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [steps_of["finetune"].info.experiment_id],
        f"tags.`pipeline.step` = 'evaluate' and tags.`{evaluate.CHECKPOINT_PATH_TAG}` = 'epochs/epoch-1'",
    )
    assert len(runs) == 1 and runs[0].data.metrics["test_f1"] > 0.5
    capsys.readouterr()
    assert (
        evaluate.main(
            ["--finetune_run_id", finetune_id, "--profile", "lora-reference", "--checkpoint_epoch", "7"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "checkpoint_epoch=7 was not logged" in err and "(logged epochs: 1, 2)" in err


def test_early_stopping_records_the_epoch_it_stopped_at(pipeline: str) -> None:
    """Patience 1 and a learning rate too small to change anything: validation F1 cannot improve
    after epoch 1, so training stops after epoch 2 of 4, and the run says so."""
    tokenize_id = child_runs(pipeline)["tokenize"].info.run_id
    argv = ["--profile", "smoke", "--tokenize_run_id", tokenize_id, "--max_steps", "-1"]
    argv += ["--num_train_epochs", "4", "--learning_rate", "1e-9", "--early_stopping_patience", "1"]
    argv += ["--best_model_metric", "f1"]  # F1 cannot move at this rate; the loss moves by 1e-9
    assert finetune.main([*argv, "--epoch_checkpoints", "all"]) == 0
    client = mlflow.MlflowClient()
    run = client.search_runs(
        [client.get_run(pipeline).info.experiment_id],
        "tags.`pipeline.step` = 'finetune'",
        order_by=["attributes.start_time DESC"],
    )[0]
    metrics = run.data.metrics
    assert (metrics["best_epoch"], metrics["stopped_epoch"], metrics["stopped_early"]) == (1, 2, 1)
    assert json.loads(run.data.tags[tags.EPOCH_CHECKPOINTS_TAG]) == {
        "1": "epochs/epoch-1",
        "2": "epochs/epoch-2",
    }
    assert "epochs/epoch-2/model.safetensors" in artifact_paths(run.info.run_id)


def test_lora_target_module_the_model_lacks_stops_finetune(
    capsys: pytest.CaptureFixture[str], pipeline: str
) -> None:
    client = mlflow.MlflowClient()
    versions_before = len(client.search_model_versions())
    tokenize_id = child_runs(pipeline)["tokenize"].info.run_id
    argv = [
        "--profile",
        "smoke",
        "--tokenize_run_id",
        tokenize_id,
        "--peft",
        "lora",
        "--lora_target_modules",
        "q_proj",
    ]
    assert finetune.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(lines) == 1
    assert "lora_target_modules q_proj not found in the base model" in lines[0]
    assert "key, query, value" in lines[0]
    assert len(client.search_model_versions()) == versions_before
