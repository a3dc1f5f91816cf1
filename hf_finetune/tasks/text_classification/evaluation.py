"""Text classification's evaluation: the fine-tuned model on the test split beside its baselines.

The baselines are judged on the same rows: the base model with its new, untrained head (seeded as
finetune seeds it) and the classical model a user would build instead (``tasks.classical``); the
probe set of hand-written modern messages is a shift check. The figures (confusion matrix,
precision-recall and ROC curves) and tables go into evaluate's ``evaluation/`` folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from hf_finetune import chain, corpus, logs, sources
from hf_finetune.errors import UserError
from hf_finetune.settings import Settings
from hf_finetune.tasks.base import Evaluated, Evaluation
from hf_finetune.tasks.text_classification import classical
from hf_finetune.tasks.text_classification.classifier import load_classifier, predict_proba, tokenize_frame
from hf_finetune.tasks.text_classification.measures import (
    classification_metrics,
    confusion_figure,
    prefixed,
    ranking_metrics,
    save_curves,
)

log = logs.logger(chain.EVALUATE)


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


def load_probe(probe_data: str, labels: Sequence[str]) -> pd.DataFrame | None:
    """The probe set, cleaned like training data; None when unset or its labels are not ours."""
    if not probe_data:
        return None
    path = sources.resolve_data_path(probe_data)
    if path is None:
        raise UserError(f"probe_data {probe_data!r} must be a local file (or '' to skip)")
    probe, _ = corpus.clean(sources.read_file(path, ""), "text", "label")
    if not set(probe["label"]) <= set(labels):
        log.info(f"probe {probe_data} skipped: its labels are not the model's {list(labels)}")
        return None
    return probe


def evaluate(job: Evaluation, cfg: Settings, positive_label: str) -> Evaluated:
    """The fine-tuned model on the test split beside the untrained head and the classical model
    on the same rows, and on the probe set; confusion matrix, curves and tables into ``job.out``."""
    from sklearn.metrics import classification_report
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    frames, test = job.frames, job.frames["test"]
    id2label = {i: label for label, i in job.label2id.items()}
    labels = [id2label[i] for i in range(len(id2label))]
    tokenizer = AutoTokenizer.from_pretrained(job.checkpoint)
    model = load_classifier(job.checkpoint, job.base_model, id2label)  # a model or an adapter
    probs = predict_proba(model, tokenizer, test, cfg.eval_batch_size, job.device)
    scored = predictions_frame(test, probs, id2label)
    metrics = prefixed(
        "test", classification_metrics(scored["label"], scored["prediction"], labels, positive_label)
    )

    # The same model before fine-tuning: base weights and a head initialised as finetune did.
    set_seed(cfg.seed)
    base = AutoModelForSequenceClassification.from_pretrained(
        job.base_model, num_labels=len(labels), id2label=id2label, label2id=job.label2id
    )
    base_pred = predictions_frame(
        test, predict_proba(base, tokenizer, test, cfg.eval_batch_size, job.device), id2label
    )["prediction"]
    metrics |= prefixed(
        "baseline", classification_metrics(scored["label"], base_pred, labels, positive_label)
    )
    # The classical model, on the same train split and the same test rows.
    svm, svm_c = classical.fit(
        frames["train"]["text"].tolist(),
        frames["train"]["label"].tolist(),
        frames["validation"]["text"].tolist(),
        frames["validation"]["label"].tolist(),
        positive_label,
    )
    metrics |= prefixed(
        "classical",
        classification_metrics(scored["label"], svm.predict(test["text"].tolist()), labels, positive_label),
    )
    out = job.out
    if len(labels) == 2 and positive_label in labels:
        score = scored[f"p_{positive_label}"].to_numpy()
        metrics |= prefixed("test", ranking_metrics(scored["label"], score, positive_label))
        save_curves(scored["label"], score, positive_label, out)
    probe = load_probe(cfg.probe_data, labels)
    if probe is not None:
        probe_tokens = tokenize_frame(probe, tokenizer, job.max_length, job.label2id)
        probe_probs = predict_proba(model, tokenizer, probe_tokens, cfg.eval_batch_size, job.device)
        probe_scored = predictions_frame(probe_tokens, probe_probs, id2label)
        metrics |= prefixed(
            "probe",
            classification_metrics(probe_scored["label"], probe_scored["prediction"], labels, positive_label),
        )
        probe_scored.to_csv(out / "probe_predictions.csv", index=False)
    report = classification_report(
        scored["label"], scored["prediction"], labels=labels, output_dict=True, zero_division=0
    )
    (out / "classification_report.json").write_text(json.dumps(report, indent=2))
    scored[scored["label"] != scored["prediction"]].to_csv(out / "misclassified.csv", index=False)
    figure = confusion_figure(scored["label"], scored["prediction"], labels)
    figure.savefig(out / "confusion_matrix.png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return Evaluated(metrics, {"classical_c": str(svm_c)}, scored)
