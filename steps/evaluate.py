"""evaluate: the fine-tuned model on the held-out test split, beside two baselines.

Reads: ``--finetune_run_id``; that run's ``checkpoint/`` (the best model), or with
``--checkpoint_epoch N`` the model it logged for epoch N (a LoRA epoch: its adapter, loaded onto
the base model), and through its upstream tag the tokenize run's ``tokenized/test.parquet``.
Writes:
- metrics ``test_accuracy``, ``test_precision``, ``test_recall``, ``test_f1`` (precision/recall/F1
  of ``positive_label`` for two classes, macro otherwise);
- the same on ``probe_data`` (``probe_*``), hand-written messages in styles the bundled
  generator never produces: a check that the model learned meaning, not the generator; skipped
  when the probe's labels are not the model's;
- the same for the base model with its new, untrained head (``baseline_*``, same seed as
  finetune), and for ham/spam data for a keyword rule (``keyword_*``): the gain from fine-tuning
  and from reading meaning instead of words is visible in one run;
- artifacts ``evaluation/confusion_matrix.png``, ``evaluation/classification_report.json``,
  ``evaluation/predictions.parquet`` (text, label, prediction, class probabilities) and
  ``evaluation/misclassified.csv``;
- tags ``base_model``, ``base_model_revision``, ``data_digest`` (carried from upstream), and
  ``pipeline.checkpoint_path``: the finetune artifact evaluated (log_model logs that model).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from steps import common, finetune, modeling, prepare, tokenize
from steps.config import Config
from steps.errors import UserError

STEP = "evaluate"
UPSTREAM = "finetune_run_id"
EVAL_DIR = "evaluation"
CHECKPOINT_PATH_TAG = "pipeline.checkpoint_path"  # which of finetune's models was evaluated
METRIC_NAMES = ("accuracy", "precision", "recall", "f1")
# What a filter of the 2010s looks for. The bundled data is built so that this is not enough.
SPAM_KEYWORDS = re.compile(
    r"\b(free|win|won|winner|prize|claim|urgent|offer|reply|txt|cash|call now|congratulations"
    r"|selected|reward|voucher|click)\b",
    re.IGNORECASE,
)


# ----------------------------------------------------------------------------- pure functions
def keyword_rule(texts: Sequence[str]) -> list[str]:
    """``spam`` when a text has one of the classic spam words, else ``ham``."""
    return ["spam" if SPAM_KEYWORDS.search(text) else "ham" for text in texts]


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


def load_probe(probe_data: str, labels: Sequence[str]) -> pd.DataFrame | None:
    """The probe set, cleaned like training data; None when unset or its labels are not ours."""
    if not probe_data:
        return None
    path = prepare.resolve_data_path(probe_data)
    if path is None:
        raise UserError(f"probe_data {probe_data!r} must be a local file (or '' to skip)")
    probe, _ = prepare.clean(prepare.read_file(path), "text", "label")
    if not set(probe["label"]) <= set(labels):
        print(f"{STEP}: probe {probe_data} skipped: its labels are not the model's {list(labels)}")
        return None
    return probe


# ----------------------------------------------------------------------------- MLflow
def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    import mlflow
    from sklearn.metrics import classification_report
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    upstream = common.get_upstream(upstream_run_id, finetune.STEP, UPSTREAM)
    tokenize_run_id = upstream.data.tags[common.UPSTREAM_TAG]
    client = mlflow.MlflowClient()
    device = modeling.available_device(cfg.device)

    # an epoch that was not logged fails here, before a run starts
    path = finetune.checkpoint_path(upstream.data.tags, upstream.info.run_id, cfg.checkpoint_epoch)

    with common.step_run(STEP, profile, cfg, upstream.info.run_id) as (run_id, tmp):
        frames, label2id = tokenize.read_tokenized(tokenize_run_id, tmp / "data")
        test = frames["test"]
        id2label = {i: label for label, i in label2id.items()}
        labels = [id2label[i] for i in range(len(id2label))]
        checkpoint = finetune.download_checkpoint(upstream.info.run_id, tmp / "model", path)
        base_model = common.resolve_base_model(upstream.data.tags[common.BASE_MODEL_TAG])
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
        if set(labels) == {"ham", "spam"}:
            metrics |= prefixed(
                "keyword",
                modeling.classification_metrics(
                    scored["label"], keyword_rule(scored["text"]), labels, cfg.positive_label
                ),
            )
        out = tmp / EVAL_DIR
        out.mkdir()
        probe = load_probe(cfg.probe_data, labels)
        if probe is not None:
            max_length = int(client.get_run(tokenize_run_id).data.params["config.max_length"])
            probe_tokens = tokenize.tokenize_frame(probe, tokenizer, max_length, label2id)
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
        mlflow.log_artifacts(str(out), EVAL_DIR)
        mlflow.set_tags(common.lineage_tags(upstream))
        print(f"{STEP}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith("_f1")))
        return run_id


def main(argv: list[str] | None = None) -> int:
    return common.step_main(STEP, __doc__, UPSTREAM, run, argv)


if __name__ == "__main__":
    common.exit_quickly(main())
