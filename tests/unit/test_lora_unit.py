"""LoRA, per-epoch checkpoints, system metrics and linked artifact logging, on tiny models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest

from hf_finetune import artifacts, chain, hub, lora, tracking, training
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.profiles import coerce, load_config
from hf_finetune.settings import BUNDLED_BASE_MODEL, module_names
from hf_finetune.tags import EPOCH_CHECKPOINTS_TAG
from hf_finetune.tasks.text_classification import classifier

ID2LABEL = {0: "ham", 1: "spam"}
TEXTS = ["Your parcel is held: pay the fee at dhl-parcel.help", "see you at 7, bring the charger"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init BERT classifier with the bundled tokenizer, saved like a hub checkpoint."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(hub.resolve_base_model(BUNDLED_BASE_MODEL)).save_pretrained(folder)
    return folder


def tiny_classifier(base: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}
    )


def trained_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter whose weights are not the identity (LoRA starts with B = 0): as if trained."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(1)
    model = lora.with_lora(tiny_classifier(base), Config(peft="lora", lora_r=4), "SEQ_CLS")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "classifier" in name:
                param.add_(torch.randn_like(param) * 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- settings
def test_bad_lora_settings_are_one_line_errors() -> None:
    with pytest.raises(UserError, match="unknown peft 'qlora': use one of none, lora"):
        Config(peft="qlora")
    with pytest.raises(UserError, match="lora_r=0 and lora_alpha=16 must be at least 1"):
        Config(peft="lora", lora_r=0)
    with pytest.raises(UserError, match="lora_r=-2"):
        load_config("lora-reference", {"lora_r": "-2"})
    with pytest.raises(UserError, match="lora_target_modules is empty"):
        Config(peft="lora", lora_target_modules=" , ")
    with pytest.raises(UserError, match="unknown epoch_checkpoints 'some'"):
        Config(epoch_checkpoints="some")
    with pytest.raises(UserError, match="system_metrics_interval_s=0 must be > 0"):
        Config(system_metrics_interval_s=0)


def test_lora_reference_profile_selects_lora_and_reference() -> None:
    cfg = load_config("lora-reference")
    assert (cfg.peft, cfg.save_mode, cfg.device) == ("lora", "reference", "cpu")
    assert module_names(cfg.lora_target_modules) == ["query", "value"]  # a YAML list in the profile
    assert coerce("lora_target_modules", ["query", "key"], "x") == "query,key"


def test_target_modules_not_in_the_model_are_named_with_the_ones_that_are(tiny_base: Path) -> None:
    with pytest.raises(UserError) as caught:
        lora.with_lora(
            tiny_classifier(tiny_base), Config(peft="lora", lora_target_modules="query,q_proj"), "SEQ_CLS"
        )
    message = str(caught.value)
    assert "lora_target_modules q_proj not found in the base model" in message
    assert "its linear layers are classifier, dense, key, query, value" in message
    assert "\n" not in message


def test_lora_trains_the_adapters_and_the_head_only(tiny_base: Path) -> None:
    model = lora.with_lora(tiny_classifier(tiny_base), Config(peft="lora", lora_r=4), "SEQ_CLS")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "classifier" in name for name in trainable)
    assert any("lora_A" in name and "query" in name for name in trainable)
    assert not any("key" in name for name in trainable)  # not a target
    assert any("classifier" in name for name in trainable)  # the new head learns too
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert any("word_embeddings" in name for name in frozen)


# ----------------------------------------------------------------------------- merge
def test_a_merged_adapter_predicts_what_the_adapter_did(tiny_base: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    adapter = trained_adapter(tiny_base, tmp_path / "adapter")
    assert lora.is_adapter(adapter) and not lora.is_adapter(tiny_base)
    merged = classifier.merge_verified(adapter, tiny_base, ID2LABEL, TEXTS, tmp_path / "merged")
    assert not lora.is_adapter(merged)
    reloaded = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    assert reloaded.config.id2label == ID2LABEL  # the labels survive, not LABEL_0 / LABEL_1
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    batch = AutoTokenizer.from_pretrained(merged)(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        after = torch.softmax(reloaded(**batch).logits, -1)
        before = torch.softmax(
            classifier.load_classifier(adapter, str(tiny_base), ID2LABEL).eval()(**batch).logits, -1
        )
        untouched = torch.softmax(tiny_classifier(tiny_base).eval()(**batch).logits, -1)
    assert float((before - after).abs().max()) <= 1e-5
    assert float((before - untouched).abs().max()) > 1e-3  # the adapter really changed something


def test_merge_verification_refuses_a_merge_that_changed_predictions(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = trained_adapter(tiny_base, tmp_path / "adapter")
    real_merge = classifier.load_classifier

    def broken(*args, **kwargs):  # a merge that loses the adapter: MLflow #23761's symptom
        model = real_merge(*args, **kwargs)
        model.merge_and_unload = lambda: model.get_base_model()  # type: ignore[method-assign]
        return model

    monkeypatch.setattr(classifier, "load_classifier", broken)
    with pytest.raises(RuntimeError, match="merged model's probabilities differ from the adapter's"):
        classifier.merge_verified(adapter, tiny_base, ID2LABEL, TEXTS, tmp_path / "merged")


# ----------------------------------------------------------------------------- epochs
def test_epoch_numbers_and_model_files(tmp_path: Path) -> None:
    assert [training.epoch_number(e) for e in (1.0, 2.0, 0.27, 2.5, None)] == [1, 2, 1, 3, 1]
    names = "model.safetensors config.json tokenizer.json optimizer.pt scheduler.pt rng_state.pth"
    names += " trainer_state.json training_args.bin adapter_model.safetensors"
    for name in names.split():
        (tmp_path / name).write_text("x")
    kept = [p.name for p in training.model_files(tmp_path)]
    assert kept == ["adapter_model.safetensors", "config.json", "model.safetensors", "tokenizer.json"]


def test_an_epoch_that_was_not_logged_names_the_ones_that_were() -> None:
    tags = {EPOCH_CHECKPOINTS_TAG: json.dumps({"1": "epochs/epoch-1", "3": "epochs/epoch-3"})}
    assert artifacts.checkpoint_path(tags, "abc", 3) == "epochs/epoch-3"
    assert artifacts.checkpoint_path(tags, "abc", 0) == chain.CHECKPOINT_DIR
    with pytest.raises(
        UserError, match=r"checkpoint_epoch=2 was not logged by finetune run abc \(logged epochs: 1, 3\)"
    ):
        artifacts.checkpoint_path(tags, "abc", 2)
    with pytest.raises(UserError, match=r"logged epochs: none"):
        artifacts.checkpoint_path({}, "abc", 1)


# ----------------------------------------------------------------------------- tracking
def test_checkpoints_are_hard_linked_into_a_local_store(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 1000)
    (folder / "sub" / "x.json").write_text("{}")
    with mlflow.start_run() as run:
        artifacts.log_artifacts_linked(folder, "trainer_checkpoints/checkpoint-1")
    stored = Path(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="trainer_checkpoints")
    )
    assert (stored / "checkpoint-1" / "sub" / "x.json").read_text() == "{}"
    root = Path(run.info.artifact_uri.removeprefix("file://"))
    linked = root / "trainer_checkpoints" / "checkpoint-1" / "model.safetensors"
    assert linked.stat().st_ino == (folder / "model.safetensors").stat().st_ino  # no bytes copied


def test_where_a_link_cannot_be_made_the_upload_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another filesystem (EXDEV), or a file of another user: the same upload, by copy."""
    import errno
    import os

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"w" * 1000)

    def cannot_link(src: str, dst: str) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cannot_link)
    with mlflow.start_run() as run:
        artifacts.log_artifacts_linked(folder, "checkpoint")
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoint" / "model.safetensors"
    assert stored.read_bytes() == b"w" * 1000
    assert stored.stat().st_ino != (folder / "model.safetensors").stat().st_ino


def test_a_linked_download_is_the_stored_file_and_a_plain_one_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "checkpoint"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 1000)
    (folder / "sub" / "x.json").write_text("{}")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "checkpoint")
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoint"
    linked = artifacts.download(run.info.run_id, "checkpoint", tmp_path / "a", link=True)
    assert linked == tmp_path / "a" / "checkpoint" and (linked / "sub" / "x.json").read_text() == "{}"
    assert (linked / "model.safetensors").stat().st_ino == (stored / "model.safetensors").stat().st_ino
    one_file = artifacts.download(run.info.run_id, "checkpoint/sub/x.json", tmp_path / "b", link=True)
    assert one_file.stat().st_ino == (stored / "sub" / "x.json").stat().st_ino
    copied = artifacts.download(run.info.run_id, "checkpoint", tmp_path / "c")
    assert (copied / "model.safetensors").stat().st_ino != (stored / "model.safetensors").stat().st_ino
    # a store that is not a local folder (S3, a tracking server): MLflow's own download, a copy
    monkeypatch.setattr(artifacts, "local_artifact_dir", lambda uri: None)
    remote = artifacts.download(run.info.run_id, "checkpoint", tmp_path / "d", link=True)
    assert (remote / "model.safetensors").read_bytes() == b"w" * 1000
    assert (remote / "model.safetensors").stat().st_ino != (stored / "model.safetensors").stat().st_ino


def test_system_metrics_are_sampled_while_the_step_runs() -> None:
    cfg = Config(system_metrics=True, system_metrics_interval_s=1.0)
    with tracking.step_run("finetune", "local", cfg, None, cfg.system_metrics_interval_s) as (run_id, _):
        time.sleep(3.5)
    metrics = mlflow.MlflowClient().get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert metrics["system/system_memory_usage_megabytes"] > 0
    history = mlflow.MlflowClient().get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2  # sampled every second, not once


def test_no_system_metrics_unless_asked() -> None:
    with tracking.step_run("finetune", "local", Config(), None) as (run_id, _):
        time.sleep(1.5)
    assert not [k for k in mlflow.MlflowClient().get_run(run_id).data.metrics if k.startswith("system/")]
