"""finetune: tokenized splits -> a fine-tuned sequence classifier (Hugging Face ``Trainer``).

Reads: ``--tokenize_run_id``; that run's ``tokenized/`` splits and label map, and its
``base_model`` tag (the model is the one the tokens were made for, whatever the profile says).
Writes:
- per-epoch metrics ``val_accuracy``, ``val_precision``, ``val_recall``, ``val_f1``, ``val_loss``
  and ``train_loss`` / ``learning_rate`` (step = optimizer step);
- metrics ``best_val_f1``, ``epochs_completed``, ``stopped_early`` (1/0), ``train_runtime_s``,
  ``train_samples_per_second``; param ``resolved_device`` (what ``auto`` became);
- artifact ``checkpoint/``: the best model and its tokenizer (safetensors), ready for
  ``from_pretrained`` and for ``mlflow.transformers.log_model`` by path;
- tags ``base_model``, ``base_model_revision``, ``data_digest`` (carried from upstream).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from steps import common, modeling, tokenize
from steps.config import Config

STEP = "finetune"
UPSTREAM = "tokenize_run_id"
CHECKPOINT_DIR = "checkpoint"


# ----------------------------------------------------------------------------- pure functions
def training_arguments(cfg: Config, device: str, output_dir: str) -> dict[str, Any]:
    """Keyword arguments for ``TrainingArguments`` (transformers 5 names)."""
    early_stopping = cfg.early_stopping_patience > 0
    return {
        "output_dir": output_dir,
        "use_cpu": device == "cpu",
        "bf16": cfg.precision == "bf16",
        "fp16": cfg.precision == "fp16",
        "num_train_epochs": cfg.num_train_epochs,
        "max_steps": cfg.max_steps,
        "learning_rate": cfg.learning_rate,
        "weight_decay": cfg.weight_decay,
        "warmup_steps": cfg.warmup_fraction,  # a float below 1 is a share of all steps
        "per_device_train_batch_size": cfg.train_batch_size,
        "per_device_eval_batch_size": cfg.eval_batch_size,
        # Batches of similar length waste little on padding: fewer tokens per step.
        "train_sampling_strategy": "group_by_length" if cfg.group_by_length else "random",
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "logging_strategy": "epoch",
        "load_best_model_at_end": True,
        "metric_for_best_model": "f1",
        "greater_is_better": True,
        "save_total_limit": 2 if early_stopping else 1,
        "save_only_model": True,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "report_to": "none",  # our own callback logs to the step's run; see MlflowEpochMetrics
        "disable_tqdm": True,
    }


def mlflow_metric_names(logs: dict[str, Any]) -> dict[str, float]:
    """Trainer log keys -> this project's metric names (``eval_f1`` -> ``val_f1``)."""
    renamed = {}
    for key, value in logs.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        if key.startswith("eval_"):
            name = "val_" + key[len("eval_") :]
        elif key == "loss":
            name = "train_loss"
        elif key in ("learning_rate", "grad_norm", "epoch"):
            name = key
        else:
            continue  # runtime/throughput figures are logged once, at the end
        renamed[name] = float(value)
    return renamed


# ----------------------------------------------------------------------------- MLflow
def _metrics_callback() -> Any:
    from transformers import TrainerCallback

    class MlflowEpochMetrics(TrainerCallback):
        """Log the Trainer's per-epoch losses and validation metrics to the active run."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            import mlflow

            metrics = mlflow_metric_names(logs or {})
            if metrics and state.is_world_process_zero:
                mlflow.log_metrics(metrics, step=state.global_step)

    return MlflowEpochMetrics()


def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    import mlflow
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    upstream = common.get_upstream(upstream_run_id, tokenize.STEP, UPSTREAM)
    tags = upstream.data.tags
    cfg = dataclasses.replace(cfg, base_model=tags[common.BASE_MODEL_TAG])
    device = modeling.available_device(cfg.device)
    modeling.check_precision(cfg.precision, device)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)

    with common.step_run(STEP, profile, cfg, upstream.info.run_id) as (run_id, tmp):
        frames, label2id = tokenize.read_tokenized(upstream.info.run_id, tmp / "in")
        train = frames["train"]
        if cfg.max_train_samples:
            train = train.sample(n=min(cfg.max_train_samples, len(train)), random_state=cfg.seed)
        id2label = {i: label for label, i in label2id.items()}
        resolved = common.resolve_base_model(cfg.base_model)
        set_seed(cfg.seed)  # the new classification head is initialised from this seed
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                resolved, num_labels=len(label2id), id2label=id2label, label2id=label2id
            )
        except OSError as exc:
            raise common.load_model_error(cfg.base_model, exc) from None
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        labels = [id2label[i] for i in range(len(id2label))]

        def compute_metrics(prediction: Any) -> dict[str, float]:
            logits, label_ids = prediction
            predicted = np.asarray(logits).argmax(-1)
            return modeling.classification_metrics(
                [id2label[int(i)] for i in label_ids],
                [id2label[int(i)] for i in predicted],
                labels,
                cfg.positive_label,
            )

        callbacks = [_metrics_callback()]
        if cfg.early_stopping_patience > 0:
            callbacks.append(EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_min_delta))
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**training_arguments(cfg, device, str(tmp / "trainer"))),
            train_dataset=modeling.to_features(train),
            eval_dataset=modeling.to_features(frames["validation"]),
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),  # pad per batch, not to max_length
            compute_metrics=compute_metrics,
            callbacks=callbacks,
        )
        result = trainer.train()
        state = trainer.state
        planned_epochs = cfg.num_train_epochs if cfg.max_steps <= 0 else state.num_train_epochs
        mlflow.log_param("resolved_device", device)
        mlflow.log_metrics(
            {
                "best_val_f1": float(state.best_metric if state.best_metric is not None else float("nan")),
                "epochs_completed": float(state.epoch or 0.0),
                "stopped_early": float(cfg.max_steps <= 0 and (state.epoch or 0) + 1e-6 < planned_epochs),
                "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)),
                "train_samples_per_second": float(result.metrics.get("train_samples_per_second", 0.0)),
                "train_rows": float(len(train)),
            }
        )
        checkpoint = tmp / CHECKPOINT_DIR
        trainer.save_model(str(checkpoint))  # the best epoch's weights (load_best_model_at_end)
        tokenizer.save_pretrained(str(checkpoint))
        mlflow.log_artifacts(str(checkpoint), CHECKPOINT_DIR)
        mlflow.set_tags(common.lineage_tags(upstream))
        return run_id


def download_checkpoint(run_id: str, dst: Path) -> Path:
    """Downstream steps' way in: the fine-tuned model folder of a finetune run."""
    return common.download(run_id, CHECKPOINT_DIR, dst)


def main(argv: list[str] | None = None) -> int:
    parser = common.step_parser(__doc__, UPSTREAM)
    args = common.parse_step_args(parser, argv, UPSTREAM)
    return common.cli(STEP, lambda: run(args.upstream_run_id, common.config_for(args), args.profile))


if __name__ == "__main__":
    raise SystemExit(main())
