"""The text-classification task as the steps see it (``tasks.base.Task``), with its own settings.

Everything particular to classifying texts is reached from here: how
rows become model inputs (token ids and a label id), the model class (a sequence classifier with a
new head), loss and collator, the validation and test metrics (F1 of ``positive_label`` for two
classes, macro F1 otherwise), the baselines (the untrained head and the classical TF-IDF + linear
SVM model, ``classical``), the pipeline task and signature ``log_model`` uses, the paired
F1 comparison of the gate, and the ``label`` / ``score`` columns ``predict`` writes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from hf_finetune import corpus
from hf_finetune.chain import FINETUNE, PERSIST, REGISTER
from hf_finetune.corpus import CleanStats
from hf_finetune.errors import UserError
from hf_finetune.lora import with_lora
from hf_finetune.settings import EVERYWHERE, Settings, setting
from hf_finetune.tasks.base import Evaluated, Evaluation, Example, Scorer, Task, TrainingParts
from hf_finetune.tasks.text_classification import evaluation
from hf_finetune.tasks.text_classification.classifier import (
    by_length,
    label_mapping,
    load_classifier,
    merge_verified,
    to_features,
    tokenize_frame,
)
from hf_finetune.tasks.text_classification.measures import (
    class_weights,
    paired_f1,
    validation_metrics,
    weighted_loss,
)

NAME = "text-classification"
CLASS_WEIGHTS = ("none", "balanced")


OUTPUT_COLUMNS = ("label", "score")


def positive_scores(labels: pd.Series, scores: pd.Series, positive: str | None) -> pd.Series:
    """The probability of ``positive`` from (predicted label, its probability) of a two-class
    model; the predicted label's own probability when ``positive`` is None."""
    if positive is None:
        return scores.astype(float)
    return scores.astype(float).where(labels == positive, 1.0 - scores.astype(float))


def two_class_positive(labels: list[str] | None, positive_label: str) -> str | None:
    """``positive_label`` where the model's classes are two and include it, else None."""
    return positive_label if labels is not None and len(labels) == 2 and positive_label in labels else None


def input_example(predictions: pd.DataFrame, size: int) -> pd.DataFrame:
    """A few test texts, each label represented first, with what evaluate predicted for them."""
    firsts = predictions.groupby("label", sort=True).head(1)
    rest = predictions.drop(firsts.index)
    chosen = pd.concat([firsts, rest]).head(max(size, len(firsts)))
    return chosen[["text", "prediction"]].reset_index(drop=True)


def model_config(max_length: int) -> dict[str, Any]:
    """Pipeline call settings saved with the model: long texts are truncated, never an error."""
    return {"truncation": True, "max_length": max_length}


# ----------------------------------------------------------------------------- the task's settings
@dataclasses.dataclass(frozen=True)
class ClassificationSettings:
    """The settings of text classification alone (``config.Config`` has them beside the shared)."""

    class_weight: str = setting(
        "none",
        "balanced: weigh the loss of each class by n_rows / (n_classes * n_rows_of_class)",
        (FINETUNE,),
        EVERYWHERE,
        after="best_model_metric",
    )
    min_test_f1: float = setting(
        0.9,
        "the gate: a champion needs at least this test F1",
        (REGISTER, PERSIST),
        EVERYWHERE,
        after="registered_model",
    )

    def __post_init__(self) -> None:
        if self.class_weight not in CLASS_WEIGHTS:
            raise UserError(
                f"unknown class_weight {self.class_weight!r}: use one of {', '.join(CLASS_WEIGHTS)}"
            )
        if not 0 <= self.min_test_f1 <= 1:
            raise UserError("min_test_f1 and champion_tolerance must be between 0 and 1")


def own(cfg: Settings) -> ClassificationSettings:
    """``cfg``'s text-classification settings (``config.Config`` has every task's)."""
    if not isinstance(cfg, ClassificationSettings):
        raise TypeError(f"{type(cfg).__name__} has no text-classification settings")
    return cfg


# ----------------------------------------------------------------------------- the task
class TextClassification(Task):
    name = NAME
    pipeline_task = "text-classification"
    mlflow_task = "text-classification"
    settings = ClassificationSettings
    registered_model = "sms-spam-classifier"
    row_key = "text"
    target = "label"
    floor_name = "min_test_f1"
    gate_metric = "f1"
    validation_metric = "f1"
    version_metrics = ("test_accuracy", "test_precision", "test_recall", "test_f1")
    headline_metrics = ("test_f1", "classical_f1", "baseline_f1", "probe_f1")
    metric_names = ("accuracy", "precision", "recall", "f1")
    baselines: ClassVar[dict[str, str]] = {
        "test": "this model",
        "classical": "TF-IDF + linear SVM (classical baseline)",
        "baseline": "base model, untrained head",
    }
    quality_curves = ("val_f1", "val_average_precision")
    figures: ClassVar[dict[str, str]] = {
        "confusion_matrix": "Confusion matrix",
        "pr_curve": "Precision-recall",
        "roc_curve": "ROC",
    }
    describes = "A text classifier"  # the model card's first words
    # the card's call of the loaded model
    usage = 'model.predict(["Your parcel is held: pay the fee at the link"])  # a table: label, score'
    lora_task_type = "SEQ_CLS"  # PEFT keeps the new classifier head trainable beside the adapter

    def clean(self, df: pd.DataFrame, cfg: Settings) -> tuple[pd.DataFrame, CleanStats]:
        """``text`` and ``label`` (trimmed, lower-case strings) from ``text_column`` and
        ``label_column``; rows without a label or text dropped, duplicate texts too."""
        return corpus.clean(df, cfg.text_column, cfg.label_column)

    def digest_columns(self) -> tuple[str, str]:
        return ("label", "text")

    def label_mapping(self, frames: dict[str, pd.DataFrame]) -> dict[str, int]:
        return label_mapping(pd.concat(frames.values())["label"])

    def encode(
        self, frame: pd.DataFrame, tokenizer: Any, cfg: Settings, label2id: dict[str, int]
    ) -> pd.DataFrame:
        return tokenize_frame(frame, tokenizer, cfg.max_length, label2id)

    def model_for_training(self, resolved: str, label2id: dict[str, int], cfg: Settings) -> Any:
        """The base model with a new head for these labels (initialised from ``cfg.seed``), with a
        LoRA adapter when ``peft`` asks for one."""
        from transformers import AutoModelForSequenceClassification, set_seed

        id2label = {i: label for label, i in label2id.items()}
        set_seed(cfg.seed)  # the new classification head is initialised from this seed
        model = AutoModelForSequenceClassification.from_pretrained(
            resolved, num_labels=len(label2id), id2label=id2label, label2id=label2id
        )
        return with_lora(model, cfg, self.lora_task_type) if cfg.peft == "lora" else model

    def training_parts(
        self, frames: dict[str, pd.DataFrame], label2id: dict[str, int], tokenizer: Any, cfg: Settings
    ) -> TrainingParts:
        """Batches padded to their longest text; per-epoch accuracy, precision, recall, F1 and
        average precision; the loss weighed by class when ``class_weight`` asks."""
        from transformers import DataCollatorWithPadding

        labels = sorted(label2id, key=label2id.__getitem__)
        positive_label = cfg.positive_label
        weights = class_weights(frames["train"]["label_id"], len(label2id), own(cfg).class_weight)

        def compute_metrics(prediction: Any) -> dict[str, float]:
            logits, label_ids = prediction
            return validation_metrics(np.asarray(logits), np.asarray(label_ids), labels, positive_label)

        return TrainingParts(
            train=to_features(frames["train"]),
            # sorted by length: each evaluation batch pads to similar lengths (order is irrelevant)
            validation=to_features(by_length(frames["validation"])),
            collator=DataCollatorWithPadding(tokenizer),  # pad per batch, not to max_length
            compute_metrics=compute_metrics,
            loss=weighted_loss(weights) if weights else None,
            params={"class_weights": json.dumps([round(w, 6) for w in weights])} if weights else {},
        )

    def evaluate(self, job: Evaluation, cfg: Settings) -> Evaluated:
        return evaluation.evaluate(job, cfg, cfg.positive_label)

    def load_trained(
        self, folder: Path, base_model: str, id2label: dict[int, str], revision: str | None = None
    ) -> Any:
        return load_classifier(folder, base_model, id2label, revision)

    def model_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def example(
        self, predictions: pd.DataFrame, cfg: Settings, max_length: int, size: int, lineage: dict[str, str]
    ) -> Example:
        """A few test texts, each label first, and a signature that declares ``batch_size``."""
        from mlflow.models import infer_signature

        chosen = input_example(predictions, size)
        texts = chosen["text"].tolist()
        params = {"batch_size": 8}
        signature = infer_signature(
            texts,
            pd.DataFrame({"label": chosen["prediction"], "score": [0.5] * len(chosen)}),
            params=params,
        )
        return Example(texts, chosen["prediction"].tolist(), signature, model_config(max_length), params)

    def merge_verified(
        self,
        adapter: Path,
        base: Path,
        id2label: dict[int, str],
        inputs: list[str],
        out: Path,
        cfg: Settings,
        tags: dict[str, str],
    ) -> Path:
        return merge_verified(adapter, base, id2label, inputs, out)

    def served_outputs(self, model: Any, inputs: list[str]) -> list[str]:
        predicted = model.predict(inputs)
        if "label" not in getattr(predicted, "columns", []):
            raise RuntimeError(f"the model predicted no 'label' column: {predicted!r}")
        return [str(label) for label in pd.DataFrame(predicted)["label"]]

    def gate_floor(self, cfg: Settings, metrics: dict[str, float]) -> float:
        return own(cfg).min_test_f1

    def compare(
        self, rows: pd.DataFrame, champion: list[str], cfg: Settings
    ) -> tuple[float, float, float, float]:
        labels = sorted(set(rows["label"]) | set(rows["prediction"]))
        return paired_f1(rows["label"], rows["prediction"], champion, labels, cfg.positive_label)

    def scorer(self, model: Any, cfg: Settings) -> Scorer:
        try:
            labels = [str(v) for v in model.get_raw_model().model.config.id2label.values()]
        except (AttributeError, NotImplementedError):
            labels = None
        return LabelScorer(two_class_positive(labels, cfg.positive_label))


class LabelScorer(Scorer):
    """``label`` (the predicted class) and ``score``: for a two-class model the probability of
    ``positive_label``, otherwise the predicted class's."""

    outputs = OUTPUT_COLUMNS
    counted = "label"

    def __init__(self, positive: str | None) -> None:
        self.positive = positive

    def columns(self, predicted: pd.DataFrame) -> dict[str, Any]:
        return {
            "label": predicted["label"].astype(str).to_numpy(),
            "score": positive_scores(predicted["label"], predicted["score"], self.positive).to_numpy(),
        }

    def spark_columns(self, prediction: Any) -> list[Any]:
        from pyspark.sql import functions as F

        label, score = F.col(f"{prediction}.label"), F.col(f"{prediction}.score").cast("double")
        if self.positive is not None:
            score = F.when(label == self.positive, score).otherwise(1.0 - score)
        return [label.alias("label"), score.alias("score")]


# ----------------------------------------------------------------------------- evaluation
