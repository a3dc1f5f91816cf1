"""The Hugging Face ``Trainer`` as finetune uses it: its arguments, the Trainer, what it records.

The task gives what differs between kinds of model (features, collator, metrics, loss); the rest
is here, the same for every task.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hf_finetune import artifacts, lora
from hf_finetune.chain import ADAPTER_DIR, CHECKPOINT_DIR
from hf_finetune.distributed import World
from hf_finetune.settings import Settings
from hf_finetune.tasks.base import TrainingParts

# What a Trainer checkpoint holds beyond the model: needed to resume, not to predict.
TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", "trainer_state.json")


def training_arguments(
    cfg: Settings, device: str, output_dir: str, world: World | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``TrainingArguments`` (transformers 5 names); one process by default."""
    world = world or World()
    early_stopping = cfg.early_stopping_patience > 0
    distributed: dict[str, Any] = {}
    if world.size > 1:
        # gloo is the backend that works on CPU; on CUDA the Trainer picks NCCL itself
        backend = "gloo" if device == "cpu" else None
        distributed = {
            "ddp_backend": backend,
            "ddp_find_unused_parameters": False,
            # One label per text: DDP's mean over ranks is already right. With this on,
            # transformers 5 multiplies the (already averaged) classification loss by the
            # number of processes: loss and gradients twice as large on 2 processes.
            "average_tokens_across_devices": False,
        }
    return distributed | {
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
        # the epoch kept: the best by validation loss (or F1, average precision), or the last
        "load_best_model_at_end": cfg.best_model_metric != "last",
        "metric_for_best_model": None if cfg.best_model_metric == "last" else cfg.best_model_metric,
        "greater_is_better": cfg.best_model_metric != "loss",
        "save_total_limit": 2 if early_stopping else 1,
        "save_only_model": False,  # optimizer, scheduler and RNG state too: needed to resume
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "report_to": "none",  # our own callback logs to the step's run; see MlflowEpochMetrics
        "disable_tqdm": True,
    }


def epoch_number(epoch: float | None) -> int:
    """The epoch a checkpoint closes, counted from 1 (a partial last epoch counts as one)."""
    return max(1, math.ceil((epoch or 0.0) - 1e-6))


def model_files(checkpoint: Path) -> list[Path]:
    """The files of a Trainer checkpoint that make up the model (weights or adapter, config,
    tokenizer): what inference needs, without the optimizer and RNG state."""
    return sorted(
        p
        for p in checkpoint.iterdir()
        if p.is_file() and p.name not in TRAINER_STATE_FILES and not p.name.startswith("rng_state")
    )


def kept_epoch_metrics(log_history: list[dict[str, Any]], epoch: int) -> dict[str, float]:
    """``best_val_<name>``: the validation figures of the epoch finetune keeps."""
    for entry in reversed(log_history):
        if "eval_loss" in entry and epoch_number(entry.get("epoch")) == epoch:
            return {
                f"best_val_{key[len('eval_') :]}": float(entry[key])
                for key in ("eval_f1", "eval_loss", "eval_average_precision")
                if key in entry
            }
    return {}


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


def make_trainer(
    cfg: Settings,
    model: Any,
    tokenizer: Any,
    parts: TrainingParts,
    callbacks: list[Any],
    args: dict[str, Any],
) -> Any:
    """The Trainer: the task's features, collator, validation metrics every epoch and loss, and
    early stopping when patience is set."""
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    if cfg.early_stopping_patience > 0:
        callbacks = [
            *callbacks,
            EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_min_delta),
        ]
    return Trainer(
        model=model,
        args=TrainingArguments(**(args | parts.arguments)),
        train_dataset=parts.train,
        eval_dataset=parts.validation,
        processing_class=tokenizer,
        data_collator=parts.collator,
        compute_metrics=parts.compute_metrics,
        compute_loss_func=parts.loss,
        callbacks=callbacks,
    )


def training_metrics(
    cfg: Settings, trainer: Any, result: Any, best_epoch: int, resumed_step: int
) -> dict[str, float]:
    """What the run records about the training: the kept epoch's validation metrics, where it
    stopped and why, throughput, and how much of it ran in this run (after a resume)."""
    state = trainer.state
    planned_epochs = cfg.num_train_epochs if cfg.max_steps <= 0 else state.num_train_epochs
    return {
        **kept_epoch_metrics(state.log_history, best_epoch),
        "epochs_completed": float(state.epoch or 0.0),
        "best_epoch": float(best_epoch),
        "stopped_epoch": float(epoch_number(state.epoch)),  # early stopping or the plan
        "stopped_early": float(cfg.max_steps <= 0 and (state.epoch or 0) + 1e-6 < planned_epochs),
        "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)),
        "train_samples_per_second": float(result.metrics.get("train_samples_per_second", 0.0)),
        "train_rows": float(len(trainer.train_dataset)),
        "resumed_from_step": float(resumed_step),
        "steps_trained_here": float(state.global_step - resumed_step),
    }


def save_kept_model(cfg: Settings, trainer: Any, tokenizer: Any, tmp: Path) -> None:
    """Log the kept epoch's model as ``checkpoint/`` (always a whole model) and, for LoRA, the
    adapter itself as ``adapter/``."""
    checkpoint = tmp / CHECKPOINT_DIR
    if cfg.peft == "lora":
        adapter = tmp / ADAPTER_DIR
        trainer.save_model(str(adapter))  # a PEFT model saves its adapter (and head) only
        tokenizer.save_pretrained(str(adapter))
        artifacts.log_artifacts_linked(adapter, ADAPTER_DIR)
        lora.save_merged(trainer.model, checkpoint)  # the adapter folded into the base weights
    else:
        trainer.save_model(str(checkpoint))  # the kept epoch's weights (load_best_model_at_end)
    tokenizer.save_pretrained(str(checkpoint))
    artifacts.log_artifacts_linked(checkpoint, CHECKPOINT_DIR)


def gpu_memory_metrics() -> dict[str, float]:
    """Peak GPU memory of this process's device since training started, in MiB."""
    import torch

    mib = 2**20
    return {
        "peak_gpu_memory_allocated_mb": torch.cuda.max_memory_allocated() / mib,
        "peak_gpu_memory_reserved_mb": torch.cuda.max_memory_reserved() / mib,
    }
