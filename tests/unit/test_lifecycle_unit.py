"""Pure functions of the lifecycle steps: the gate, version tags, cleanup plans, persist plans."""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from hf_finetune import compat, hub, save_modes
from hf_finetune.errors import UserError
from hf_finetune.registry import gate
from hf_finetune.settings import check_save_mode
from hf_finetune.tasks import registry
from hf_finetune.tasks.text_classification import measures
from hf_finetune.tasks.text_classification import task as tc_task
from steps import persist, register, version_cleanup

CLASSIFICATION = registry.TASKS["text-classification"]


def comparison(
    candidate: float, champion: float, low: float, high: float, rows: int = 500
) -> gate.Comparison:
    return gate.Comparison("3", rows, 7, candidate, champion, low, high)


@pytest.mark.parametrize(
    ("f1", "minimum", "compared", "tolerance", "passed", "why"),
    [
        (0.97, 0.9, None, 0.0, True, "no champion yet"),
        (0.85, 0.9, None, 0.0, False, "below min_test_f1 0.9000"),
        (0.85, 0.9, comparison(0.85, 0.5, 0.2, 0.4), 0.0, False, "below min_test_f1"),
        (
            0.97,
            0.9,
            comparison(0.97, 0.94, 0.01, 0.05),
            0.0,
            True,
            "better: on 500 shared test rows (7 left out)",
        ),
        (0.97, 0.9, comparison(0.97, 0.96, -0.01, 0.03), 0.0, False, "not measurably better"),
        (0.97, 0.9, comparison(0.97, 0.96, -0.01, 0.03), 0.02, True, "better"),  # a looser tolerance
        (0.97, 0.9, comparison(0.96, 0.96, 0.0, 0.0), 0.05, False, "not better"),  # the same predictions
        (0.97, 0.9, comparison(0.95, 0.97, -0.05, 0.0), 0.05, False, "not better"),
        (
            0.97,
            0.9,
            comparison(float("nan"), float("nan"), float("nan"), float("nan"), rows=0),
            0.0,
            False,
            "no test row left",
        ),
    ],
)
def test_the_gate_decision(
    f1: float, minimum: float, compared: gate.Comparison | None, tolerance: float, passed: bool, why: str
) -> None:
    decision = gate.decide(f1, minimum, compared, tolerance)
    assert decision.passed is passed
    assert why in decision.reason


@pytest.mark.parametrize(
    ("loss", "ceiling", "candidate", "champion", "low", "high", "passed", "why"),
    [
        (1.5, 1.0, 1.5, 0.0, 0.0, 0.0, False, "test_loss 1.5000 is not below min_test_loss 1.0000"),
        (0.8, 1.0, 0.8, 0.9, -0.15, -0.05, True, "test_loss 0.8000 < min_test_loss 1.0000; better"),
        (0.8, 1.0, 0.8, 0.9, -0.15, 0.02, False, "not measurably better (interval reaches +0.0000)"),
        (0.95, 1.0, 0.95, 0.9, 0.01, 0.09, False, "not better"),
    ],
)
def test_the_gate_turns_round_for_a_metric_where_less_is_better(
    loss: float,
    ceiling: float,
    candidate: float,
    champion: float,
    low: float,
    high: float,
    passed: bool,
    why: str,
) -> None:
    """A task whose gate metric is lower-is-better (a loss, bits per byte): the floor is a ceiling,
    and the candidate must lower the metric measurably (the whole interval below zero)."""
    compared = gate.Comparison("3", 100, 0, candidate, champion, low, high)
    decision = gate.decide(loss, ceiling, compared, 0.0, metric="loss", higher_is_better=False)
    assert decision.passed is passed
    assert why in decision.reason


def test_paired_f1_interval_identical_models_is_zero_width() -> None:
    truth = ["spam"] * 10 + ["ham"] * 90
    said = ["spam"] * 8 + ["ham"] * 92
    a, b, low, high = measures.paired_f1(truth, said, said, ["ham", "spam"], "spam")
    assert a == b == pytest.approx(2 * 8 / (2 * 8 + 2))
    assert low == high == 0.0


def test_paired_f1_interval_separates_a_clearly_better_model_and_not_a_close_one() -> None:
    rng = np.random.default_rng(1)
    truth = np.array(["spam"] * 60 + ["ham"] * 440)
    good = truth.copy()
    good[rng.choice(60, 3, replace=False)] = "ham"  # misses 3 spams
    bad = truth.copy()
    bad[rng.choice(60, 20, replace=False)] = "ham"  # misses 20
    a, b, low, high = measures.paired_f1(truth, good, bad, ["ham", "spam"], "spam")
    assert a > b and 0 < low < a - b < high
    close = good.copy()
    close[np.flatnonzero(good == "spam")[0]] = "ham"  # one spam more missed than `good`
    _, _, low, high = measures.paired_f1(truth, close, good, ["ham", "spam"], "spam")
    assert low < 0 <= high
    again = measures.paired_f1(truth, good, bad, ["ham", "spam"], "spam")
    assert again == measures.paired_f1(truth, good, bad, ["ham", "spam"], "spam")  # seeded


def test_paired_f1_of_several_classes_is_macro() -> None:
    truth = ["a", "b", "c", "c"]
    _, champion, _, _ = measures.paired_f1(
        truth, truth, ["a", "b", "c", "a"], ["a", "b", "c"], "spam", resamples=10
    )
    assert champion == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)


def test_shared_rows_leave_out_what_the_champion_saw() -> None:
    scored = pd.DataFrame({"text": ["a", "b", "c"], "label": ["ham", "spam", "ham"]})
    rows, excluded = gate.shared_rows(scored, {"b", "z"})
    assert rows["text"].tolist() == ["a", "c"] and excluded == 1


@pytest.mark.parametrize(
    ("mode", "persisted"), [("full", "true"), ("checkpoint", "true"), ("reference", "false")]
)
def test_version_tags(mode: str, persisted: str) -> None:
    tags = register.version_tags(
        CLASSIFICATION,
        mode,
        {"base_model": "b", "data_digest": "d", "base_model_revision": ""},
        {"test_f1": 0.91234567, "test_accuracy": 0.95, "val_f1": 0.2},
        {"prepare": "p1", "evaluate": "e1"},
        gate.Gate(True, "fine", comparison(0.93, 0.9, 0.01, 0.05)),
    )
    assert tags == {
        "task": "text-classification",
        "save_mode": mode,
        "persisted": persisted,
        "gate": "passed",
        "gate_reason": "fine",
        "gate_compared_version": "3",
        "gate_rows": "500",
        "gate_rows_excluded": "7",
        "gate_metric": "f1",
        "gate_candidate": "0.930000",
        "gate_champion": "0.900000",
        "gate_diff_low": "0.010000",
        "gate_diff_high": "0.050000",
        "gate_candidate_f1": "0.930000",
        "gate_champion_f1": "0.900000",
        "gate_f1_diff_low": "0.010000",
        "gate_f1_diff_high": "0.050000",
        "base_model": "b",
        "data_digest": "d",
        "test_f1": "0.912346",
        "test_accuracy": "0.950000",
        "run.prepare": "p1",
        "run.evaluate": "e1",
    }


def test_version_tags_without_a_champion_carry_the_candidates_own_figures() -> None:
    tags = gate.comparison_tags(gate.Gate(True, "no champion yet"), 0.912, 516)
    assert tags["gate_compared_version"] == "" and tags["gate_champion_f1"] == ""
    assert (tags["gate_rows"], tags["gate_candidate_f1"]) == ("516", "0.912000")


def test_only_self_contained_modes_can_be_champion_before_persist() -> None:
    assert register.is_self_contained("full") and register.is_self_contained("checkpoint")
    assert not register.is_self_contained("reference")


@pytest.mark.parametrize(
    ("versions", "keep", "aliases", "expected"),
    [
        ([1, 2, 3, 4, 5, 6], 3, {}, [1, 2, 3]),
        ([1, 2, 3, 4, 5, 6], 3, {"champion": 2}, [1, 3]),
        (["1", "2", "9", "10", "11"], 2, {"champion": "9"}, [1, 2]),  # as ints: 10 > 9
        ([1, 2], 5, {}, []),
        ([3, 1, 2], 1, {"champion": "1", "challenger": 3}, [2]),
    ],
)
def test_versions_to_delete(versions, keep: int, aliases, expected: list[int]) -> None:
    assert version_cleanup.versions_to_delete(versions, keep, aliases) == expected


def test_versions_to_delete_refuses_keep_last_below_one() -> None:
    with pytest.raises(ValueError, match="keep_last"):
        version_cleanup.versions_to_delete([1, 2], 0, {})


def test_reference_mode_is_refused_for_a_full_fine_tune() -> None:
    with pytest.raises(UserError, match="use save_mode full or checkpoint"):
        check_save_mode("reference", adapter=False)
    check_save_mode("reference", adapter=True)
    check_save_mode("checkpoint", adapter=False)


def test_input_example_shows_every_label_first() -> None:
    predictions = pd.DataFrame(
        {
            "text": ["a", "b", "c", "d"],
            "label": ["ham", "ham", "ham", "spam"],
            "prediction": ["ham", "spam", "ham", "spam"],
        }
    )
    example = tc_task.input_example(predictions, size=3)
    assert example["text"].tolist() == ["a", "d", "b"]
    assert example["prediction"].tolist() == ["ham", "spam", "spam"]


def test_pip_requirements_drop_local_build_tags() -> None:
    assert save_modes.pip_requirements({"torch": "2.13.0+cpu", "mlflow": "3.17.2"}) == [
        "mlflow==3.17.2",
        "torch==2.13.0",
    ]


def test_persist_copies_weights_config_and_tokenizer_only() -> None:
    plan = persist.files_to_copy(
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.txt",
            "README.md",
            "modules.json",
            "1_Pooling/config.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ]
    )
    assert plan == {
        "config.json": "model/config.json",
        "model.safetensors": "model/model.safetensors",
        "tokenizer.json": "components/tokenizer/tokenizer.json",
        "vocab.txt": "components/tokenizer/vocab.txt",
        "tokenizer_config.json": "components/tokenizer/tokenizer_config.json",
        "special_tokens_map.json": "components/tokenizer/special_tokens_map.json",
    }


def test_reference_only_flavor_detection() -> None:
    assert persist.is_reference_only({"source_model_revision": "abc"})
    assert not persist.is_reference_only({"model_binary": "model"})


def test_content_sha1_is_a_40_hex_digest_of_the_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    first = hub.content_sha1(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", first)
    assert hub.content_sha1(tmp_path) == first
    (tmp_path / "a.txt").write_text("two")
    assert hub.content_sha1(tmp_path) != first


def test_bundled_model_is_placed_in_the_hub_cache_by_link_and_loads_offline(tmp_path: Path) -> None:
    from transformers import AutoConfig

    ref = hub.materialize_bundled(tmp_path)
    again = hub.materialize_bundled(tmp_path)  # idempotent
    assert ref == again and ref.repo_id == hub.BUNDLED_REPO_ID and ref.revision_source == "content-sha1"
    snapshot = hub.snapshot_dir(ref.repo_id, ref.revision, tmp_path)
    weights = snapshot / "model.safetensors"
    assert weights.is_symlink() and weights.stat().st_size > 50_000_000
    assert not (tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "refs").exists()
    config = AutoConfig.from_pretrained(ref.repo_id, revision=ref.revision, cache_dir=tmp_path)
    assert config._commit_hash == ref.revision  # what the model itself reports as loaded


def test_reference_for_a_local_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no hub address"):
        hub.reference_for(str(tmp_path), "whatever")
    with pytest.raises(UserError, match="not a hub commit"):
        hub.reference_for("org/model", "content-hash")
    assert hub.reference_for("org/model", "a" * 40) == hub.HubReference("org/model", "a" * 40, "hub-commit")


def test_no_hub_request_is_tried_inside_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as if unset
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # a retry would sleep first
    from huggingface_hub.errors import LocalEntryNotFoundError

    with compat.hub_offline(), pytest.raises(LocalEntryNotFoundError):  # at once: cache only
        huggingface_hub.ModelCard.load("sentence-transformers/all-MiniLM-L6-v2")
    assert slept == []
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored afterwards


def test_logging_the_baseline_by_reference_never_waits_for_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no network and HF_HUB_OFFLINE unset, MLflow's card/license lookups retried for minutes."""
    import time

    import huggingface_hub.constants
    import mlflow

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    slept: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: slept.append(s) if s >= 1 else real_sleep(s))
    ref = hub.materialize_bundled()
    with mlflow.start_run():
        info = save_modes.log_reference(CLASSIFICATION, ref, "baseline", 2)
    assert slept == [], f"waited for the hub: {slept}"
    flavor = mlflow.models.Model.load(info.model_uri).flavors["transformers"]
    assert flavor["source_model_revision"] == ref.revision
    location = mlflow.MlflowClient().get_logged_model(info.model_id).artifact_location
    card = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/model_card.md")
    assert "all-MiniLM-L6-v2" in Path(card).read_text()  # the cached README, kept with the model


def test_the_quick_peft_check_gives_mlflows_answer_without_importing_peft(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys
    import types

    import mlflow.transformers
    from mlflow.transformers import flavor_config, model_io

    class PeftModel:  # what peft.PeftModel is, for isinstance
        pass

    with compat.quick_save_checks():
        checks = [mlflow.transformers.is_peft_model, flavor_config.is_peft_model, model_io.is_peft_model]
        monkeypatch.setitem(sys.modules, "peft", None)  # not imported: importing it now would fail
        assert [check(object()) for check in checks] == [False] * 3
        monkeypatch.setitem(sys.modules, "peft", types.SimpleNamespace(PeftModel=PeftModel))
        assert [check(PeftModel()) for check in checks] == [True] * 3
        assert [check(object()) for check in checks] == [False] * 3
    from mlflow.transformers import peft as mlflow_peft

    assert mlflow.transformers.is_peft_model is mlflow_peft.is_peft_model  # restored afterwards


def test_mlflows_hub_lookups_answer_nothing_at_once_while_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model card and license-file lookups: no request inside ``hub.offline`` (where one could
    only fail), MLflow's own lookup otherwise."""
    import huggingface_hub.constants
    import mlflow.transformers

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as on a machine online
    asked: list[str] = []
    for lookup in ("_fetch_model_card", "_extract_license_file_from_repository"):
        answer = lambda repo, name=lookup: asked.append(name) or "found"  # noqa: E731
        monkeypatch.setattr(mlflow.transformers, lookup, answer)
    with compat.quick_save_checks():
        with compat.hub_offline():
            assert mlflow.transformers._fetch_model_card("org/model") is None
            assert mlflow.transformers._extract_license_file_from_repository("org/model") is None
        assert asked == []
        assert mlflow.transformers._fetch_model_card("org/model") == "found"
        assert mlflow.transformers._extract_license_file_from_repository("org/model") == "found"
    assert asked == ["_fetch_model_card", "_extract_license_file_from_repository"]


def test_a_text_classification_pipeline_is_servable_without_mlflows_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow.transformers

    ref = hub.materialize_bundled()
    pipeline = save_modes.reference_pipeline(CLASSIFICATION, ref, 2)
    assert mlflow.transformers._should_add_pyfunc_to_model(pipeline) is True  # MLflow's own answer
    asked: list[Any] = []
    monkeypatch.setattr(mlflow.transformers, "_should_add_pyfunc_to_model", asked.append)
    with compat.quick_save_checks():
        assert mlflow.transformers._should_add_pyfunc_to_model(pipeline) is True
        assert asked == []
        other = types.SimpleNamespace(task="image-segmentation")
        mlflow.transformers._should_add_pyfunc_to_model(other)  # any other task: MLflow decides
        assert asked == [other]


def test_the_reference_skeleton_is_shallow_uninitialised_and_mlflow_records_the_same_as_for_the_whole_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch
    import transformers
    from mlflow.transformers.flavor_config import build_flavor_config

    ref = hub.materialize_bundled()
    config = transformers.AutoConfig.from_pretrained(ref.repo_id, revision=ref.revision, num_labels=2)
    assert config.num_hidden_layers == 6
    inits: list[Any] = []
    normal = torch.nn.init.normal_  # what an embedding's reset_parameters calls

    def counted(*args: Any, **kwargs: Any) -> Any:
        inits.append(args)
        return normal(*args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", counted)
    shallow = save_modes.reference_pipeline(CLASSIFICATION, ref, 2)
    assert inits == []  # meta tensors hold nothing to initialise
    assert torch.nn.init.normal_ is counted  # and the init functions are put back
    assert len(shallow.model.bert.encoder.layer) == 1
    assert shallow.model.device.type == "meta"
    assert config.num_hidden_layers == 6  # the config read is left as it was
    with torch.device("meta"):
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    whole = transformers.pipeline(
        CLASSIFICATION.pipeline_task, model=model, tokenizer=shallow.tokenizer, device=torch.device("meta")
    )
    with compat.hub_offline(), compat.recorded_revision(ref.revision):
        recorded = [build_flavor_config(p, save_pretrained=False) for p in (shallow, whole)]
    assert recorded[0] == recorded[1]
    assert recorded[0]["source_model_name"] == ref.repo_id


def test_the_reference_tokenizer_is_empty_and_mlflow_records_the_same_as_for_the_whole_one() -> None:
    import torch
    import transformers
    from mlflow.transformers.flavor_config import build_flavor_config
    from transformers import tokenization_utils_base

    base = tokenization_utils_base.PreTrainedTokenizerBase
    reader = base.__dict__["_from_pretrained"]
    ref = hub.materialize_bundled()
    empty = save_modes.reference_pipeline(CLASSIFICATION, ref, 2)
    whole = transformers.AutoTokenizer.from_pretrained(ref.repo_id, revision=ref.revision)
    assert type(empty.tokenizer) is type(whole)  # the class AutoTokenizer picks
    assert empty.tokenizer.name_or_path == whole.name_or_path == ref.repo_id
    assert len(whole) == 30522 and len(empty.tokenizer) < 10  # no vocabulary read
    assert base.__dict__["_from_pretrained"] is reader  # tokenizers load whole again afterwards
    read = transformers.pipeline(
        CLASSIFICATION.pipeline_task, model=empty.model, tokenizer=whole, device=torch.device("meta")
    )
    with compat.hub_offline(), compat.recorded_revision(ref.revision):
        recorded = [build_flavor_config(p, save_pretrained=False) for p in (empty, read)]
    assert recorded[0] == recorded[1]
    assert recorded[0]["tokenizer_type"] == type(whole).__name__
    assert recorded[0]["tokenizer_revision"] == ref.revision


def test_a_tokenizer_class_that_cannot_be_built_empty_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    ref = hub.materialize_bundled()
    cls = type(transformers.AutoTokenizer.from_pretrained(ref.repo_id, revision=ref.revision))
    init = cls.__init__

    def needs_its_files(self: Any, *args: Any, **kwargs: Any) -> None:
        if not args and set(kwargs) == {"name_or_path"}:  # as a class that requires a vocabulary
            raise TypeError("vocab_file is required")
        init(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", needs_its_files)
    tokenizer = save_modes.empty_tokenizer(ref)
    assert type(tokenizer) is cls and len(tokenizer) == 30522


def test_a_config_that_refuses_one_layer_gets_its_whole_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64
    )
    real = transformers.AutoModelForSequenceClassification.from_config

    def strict(cfg: Any) -> Any:  # as a model whose per-layer settings must match the count
        if cfg.num_hidden_layers != 3:
            raise ValueError("layer_types has 3 entries, num_hidden_layers is 1")
        return real(cfg)

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_config", strict)
    assert len(save_modes.meta_skeleton(CLASSIFICATION, config).bert.encoder.layer) == 3
