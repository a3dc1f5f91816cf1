"""evaluate: the fine-tuned model on the held-out test split, beside two baselines.

Reads: ``--finetune_run_id``; that run's ``checkpoint/`` (the best model), or with
``--checkpoint_epoch N`` the model it logged for epoch N (a LoRA epoch: its adapter, loaded onto
the base model), and through its upstream tag the tokenize run's ``tokenized/test.parquet``.
Writes:
- metrics ``test_accuracy``, ``test_precision``, ``test_recall``, ``test_f1`` (precision/recall/F1
  of ``positive_label`` for two classes, macro otherwise), and for two classes
  ``test_roc_auc`` and ``test_average_precision`` (of ``positive_label``'s probability);
- the same four on ``probe_data`` (``probe_*``), hand-written modern messages unlike the
  2010-2012 corpus: a shift check; skipped when the probe's labels are not the model's;
- the same four for the classical model a user would build instead (``classical_*``: TF-IDF
  word and character n-grams and a linear SVM, ``C`` chosen on the validation split, param
  ``classical_c``; ``steps/classical.py``), trained on the same train split and scored on the
  same test rows, and for the base model with its new, untrained head (``baseline_*``, same seed
  as finetune): what fine-tuning gains over both is visible in one run;
- artifacts ``evaluation/confusion_matrix.png``, ``evaluation/classification_report.json``,
  ``evaluation/predictions.parquet`` (text, label, prediction, class probabilities),
  ``evaluation/misclassified.csv`` and, for two classes, the precision-recall and ROC curves
  (``evaluation/{pr,roc}_curve.png`` and their points in ``.csv``);
- tags ``base_model``, ``base_model_revision``, ``data_digest`` (carried from upstream), and
  ``pipeline.checkpoint_path``: the finetune artifact evaluated (log_model logs that model).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steps import artifacts, chain, classical, common, corpus, modeling
from steps.chain import EVAL_DIR
from steps.config import Config
from steps.errors import UserError
from steps.tags import BASE_MODEL_TAG, CHECKPOINT_PATH_TAG, UPSTREAM_TAG

STEP = chain.EVALUATE
log = common.logger(STEP)
UPSTREAM = chain.upstream_param(STEP)
METRIC_NAMES = ("accuracy", "precision", "recall", "f1")


# ----------------------------------------------------------------------------- pure functions
def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{name}": round(value, 6) for name, value in metrics.items()}


def predictions_frame(test: pd.DataFrame, probs: np.ndarray, id2label: dict[int, str]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "text": test["text"].to_numpy(),
            "label": test["label"].to_numpy(),
            "prediction": [id2label[int(i)] for i in probs.argmax(-1)],
        }
    )
    for i, label in sorted(id2label.items()):
        frame[f"p_{label}"] = probs[:, i]
    return frame


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


def load_probe(probe_data: str, labels: Sequence[str]) -> pd.DataFrame | None:
    """The probe set, cleaned like training data; None when unset or its labels are not ours."""
    if not probe_data:
        return None
    path = corpus.resolve_data_path(probe_data)
    if path is None:
        raise UserError(f"probe_data {probe_data!r} must be a local file (or '' to skip)")
    probe, _ = corpus.clean(corpus.read_file(path, ""), "text", "label")
    if not set(probe["label"]) <= set(labels):
        log.info(f"probe {probe_data} skipped: its labels are not the model's {list(labels)}")
        return None
    return probe


# ----------------------------------------------------------------------------- MLflow
def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    import mlflow
    from sklearn.metrics import classification_report
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    upstream = common.get_upstream(upstream_run_id, chain.FINETUNE, UPSTREAM)
    tokenize_run_id = upstream.data.tags[UPSTREAM_TAG]
    client = mlflow.MlflowClient()
    device = modeling.available_device(cfg.device)

    # an epoch that was not logged fails here, before a run starts
    path = artifacts.checkpoint_path(upstream.data.tags, upstream.info.run_id, cfg.checkpoint_epoch)

    with common.step_run(STEP, profile, cfg, upstream.info.run_id) as (run_id, tmp):
        frames, label2id = artifacts.read_tokenized(tokenize_run_id, tmp / "data")
        test = frames["test"]
        id2label = {i: label for label, i in label2id.items()}
        labels = [id2label[i] for i in range(len(id2label))]
        checkpoint = artifacts.download_checkpoint(upstream.info.run_id, tmp / "model", path)
        base_model = common.resolve_base_model(upstream.data.tags[BASE_MODEL_TAG])
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = modeling.load_classifier(checkpoint, base_model, id2label)  # a model or an adapter
        mlflow.set_tag(CHECKPOINT_PATH_TAG, path)
        probs = modeling.predict_proba(model, tokenizer, test, cfg.eval_batch_size, device)
        scored = predictions_frame(test, probs, id2label)
        metrics = prefixed(
            "test",
            modeling.classification_metrics(
                scored["label"], scored["prediction"], labels, cfg.positive_label
            ),
        )

        # The same model before fine-tuning: base weights and a head initialised as finetune did.
        set_seed(cfg.seed)
        base = AutoModelForSequenceClassification.from_pretrained(
            base_model,
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
        )
        base_pred = predictions_frame(
            test, modeling.predict_proba(base, tokenizer, test, cfg.eval_batch_size, device), id2label
        )["prediction"]
        metrics |= prefixed(
            "baseline",
            modeling.classification_metrics(scored["label"], base_pred, labels, cfg.positive_label),
        )
        # The classical model, on the same train split and the same test rows.
        svm, svm_c = classical.fit(
            frames["train"]["text"].tolist(),
            frames["train"]["label"].tolist(),
            frames["validation"]["text"].tolist(),
            frames["validation"]["label"].tolist(),
            cfg.positive_label,
        )
        metrics |= prefixed(
            "classical",
            modeling.classification_metrics(
                scored["label"], svm.predict(test["text"].tolist()), labels, cfg.positive_label
            ),
        )
        mlflow.log_param("classical_c", svm_c)
        out = tmp / EVAL_DIR
        out.mkdir()
        if len(labels) == 2 and cfg.positive_label in labels:
            score = scored[f"p_{cfg.positive_label}"].to_numpy()
            metrics |= prefixed("test", ranking_metrics(scored["label"], score, cfg.positive_label))
            save_curves(scored["label"], score, cfg.positive_label, out)
        probe = load_probe(cfg.probe_data, labels)
        if probe is not None:
            max_length = int(client.get_run(tokenize_run_id).data.params["config.max_length"])
            probe_tokens = modeling.tokenize_frame(probe, tokenizer, max_length, label2id)
            probe_probs = modeling.predict_proba(model, tokenizer, probe_tokens, cfg.eval_batch_size, device)
            probe_scored = predictions_frame(probe_tokens, probe_probs, id2label)
            metrics |= prefixed(
                "probe",
                modeling.classification_metrics(
                    probe_scored["label"], probe_scored["prediction"], labels, cfg.positive_label
                ),
            )
            probe_scored.to_csv(out / "probe_predictions.csv", index=False)
        mlflow.log_metrics(metrics)
        mlflow.log_metric("test_rows", float(len(test)))

        report = classification_report(
            scored["label"], scored["prediction"], labels=labels, output_dict=True, zero_division=0
        )
        (out / "classification_report.json").write_text(json.dumps(report, indent=2))
        scored.to_parquet(out / "predictions.parquet", index=False)
        scored[scored["label"] != scored["prediction"]].to_csv(out / "misclassified.csv", index=False)
        figure = confusion_figure(scored["label"], scored["prediction"], labels)
        figure.savefig(out / "confusion_matrix.png", dpi=120)
        import matplotlib.pyplot as plt

        plt.close(figure)
        mlflow.log_artifacts(str(out), EVAL_DIR)
        mlflow.set_tags(common.lineage_tags(upstream))
        log.info(", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith("_f1")))
        return run_id


def main(argv: list[str] | None = None) -> int:
    return common.step_main(STEP, __doc__, UPSTREAM, run, argv)


if __name__ == "__main__":
    common.exit_quickly(main())
