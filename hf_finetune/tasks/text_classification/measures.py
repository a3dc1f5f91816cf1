"""The numbers of text classification: metrics, the paired F1 of the gate, curves, class weights.

Pure functions of labels, predictions and scores (no model, no MLflow). F1 is of
``positive_label`` for two classes and macro F1 otherwise, everywhere: in validation, on the
test split, and in the gate's paired comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hf_finetune import paired
from hf_finetune.errors import UserError


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], positive_label: str
) -> dict[str, float]:
    """Accuracy, precision, recall and F1: of ``positive_label`` for two classes, else macro."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    binary = len(labels) == 2 and positive_label in labels
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true,
        y_pred,
        labels=list(labels),
        average="binary" if binary else "macro",
        pos_label=positive_label if binary else 1,
        zero_division=0,
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def validation_metrics(
    logits: np.ndarray, label_ids: np.ndarray, labels: list[str], positive_label: str
) -> dict[str, float]:
    """The Trainer's per-epoch validation figures: accuracy, precision, recall, F1 and, for two
    classes, the average precision of ``positive_label``'s probability (smoother than F1)."""
    from sklearn.metrics import average_precision_score

    truth = [labels[int(i)] for i in label_ids]
    metrics = classification_metrics(
        truth, [labels[int(i)] for i in logits.argmax(-1)], labels, positive_label
    )
    if len(labels) == 2 and positive_label in labels:
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        score = shifted[:, labels.index(positive_label)] / shifted.sum(-1)
        positive = np.asarray(truth) == positive_label
        metrics["average_precision"] = (
            float(average_precision_score(positive, score)) if positive.any() else 0.0
        )
    return metrics


def class_weights(label_ids: Any, num_labels: int, how: str) -> list[float] | None:
    """Loss weights per class id: ``balanced`` gives each class ``n / (k * n_class)``, so every
    class adds the same total weight; ``none`` gives None (the plain loss)."""
    if how == "none":
        return None
    counts = np.bincount(np.asarray(label_ids, dtype=int), minlength=num_labels)
    if (counts == 0).any():
        raise UserError(f"class_weight {how}: a class has no train rows (counts {counts.tolist()})")
    return [float(len(label_ids) / (num_labels * c)) for c in counts]


def weighted_loss(weights: list[float]) -> Any:
    """A ``compute_loss_func`` for the Trainer: cross-entropy with class weights."""
    import torch

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        weight = torch.tensor(weights, dtype=logits.dtype, device=logits.device)
        return torch.nn.functional.cross_entropy(
            logits.view(-1, len(weights)), labels.view(-1), weight=weight
        )

    return loss


METRIC_NAMES = ("accuracy", "precision", "recall", "f1")


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{name}": round(value, 6) for name, value in metrics.items()}


def confusion_figure(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from sklearn.metrics import ConfusionMatrixDisplay

    display = ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(labels), cmap="Blues", colorbar=False
    )
    display.ax_.set_title("test split")
    display.figure_.tight_layout()
    return display.figure_


def ranking_metrics(y_true: Sequence[str], score: np.ndarray, positive_label: str) -> dict[str, float]:
    """ROC AUC and average precision of ``score``, the positive class's probability."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    positive = np.asarray(y_true) == positive_label
    return {
        "roc_auc": float(roc_auc_score(positive, score)),
        "average_precision": float(average_precision_score(positive, score)),
    }


def save_curves(y_true: Sequence[str], score: np.ndarray, positive_label: str, out: Path) -> None:
    """The positive class's precision-recall and ROC curves: scikit-learn's own displays as
    ``pr_curve.png`` / ``roc_curve.png``, and the points they draw as ``.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay, precision_recall_curve, roc_curve

    positive = np.asarray(y_true) == positive_label
    precision, recall, thresholds = precision_recall_curve(positive, score)
    pd.DataFrame(
        {"threshold": np.append(thresholds, np.nan), "precision": precision, "recall": recall}
    ).to_csv(out / "pr_curve.csv", index=False)
    fpr, tpr, roc_thresholds = roc_curve(positive, score)
    pd.DataFrame({"threshold": roc_thresholds, "fpr": fpr, "tpr": tpr}).to_csv(
        out / "roc_curve.csv", index=False
    )
    for name, display in (
        ("pr_curve", PrecisionRecallDisplay.from_predictions(positive, score, name=positive_label)),
        ("roc_curve", RocCurveDisplay.from_predictions(positive, score, name=positive_label)),
    ):
        display.ax_.set_title(f"test split, {positive_label} vs rest")
        display.figure_.tight_layout()
        display.figure_.savefig(out / f"{name}.png", dpi=120)
        plt.close(display.figure_)


def f1_counts(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str], positive_label: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class scored: (2·TP indicator, FP+FN indicator) per row, so that with row weights
    ``w`` a class's F1 is ``w @ tp2 / (w @ tp2 + w @ err)``. One class (``positive_label``)
    for two classes, every class (macro F1) otherwise, as ``classification_metrics``."""
    scored = [positive_label] if len(labels) == 2 and positive_label in labels else list(labels)
    out = []
    for label in scored:
        truth, said = y_true == label, y_pred == label
        out.append(((2 * (truth & said)).astype(float), (truth ^ said).astype(float)))
    return out


def weighted_f1(counts: list[tuple[np.ndarray, np.ndarray]], weights: np.ndarray) -> np.ndarray:
    """F1 under each row-weight vector (a row of ``weights``); 0 where a class is absent."""
    scores = []
    for tp2, err in counts:
        num, den = weights @ tp2, weights @ (tp2 + err)
        scores.append(np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0))
    return np.mean(scores, axis=0)


def paired_f1(
    y_true: Sequence[str],
    candidate: Sequence[str],
    champion: Sequence[str],
    labels: Sequence[str],
    positive_label: str,
    resamples: int = paired.RESAMPLES,
    seed: int = paired.SEED,
) -> tuple[float, float, float, float]:
    """(candidate F1, champion F1, low, high): the F1s on all rows and the central ``CONFIDENCE``
    interval of their difference (``paired``) over a seeded bootstrap of the rows (the same resamples for
    both models: the difference is paired)."""
    truth = np.asarray(y_true, dtype=object)
    a = f1_counts(truth, np.asarray(candidate, dtype=object), labels, positive_label)
    b = f1_counts(truth, np.asarray(champion, dtype=object), labels, positive_label)
    whole = np.ones((1, len(truth)))
    weights = paired.row_weights(len(truth), resamples, seed)
    low, high = paired.central_interval(weighted_f1(a, weights) - weighted_f1(b, weights))
    return float(weighted_f1(a, whole)[0]), float(weighted_f1(b, whole)[0]), low, high
