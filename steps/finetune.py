"""finetune: tokenized splits -> a fine-tuned sequence classifier (Hugging Face ``Trainer``).

Reads: ``--tokenize_run_id``; that run's ``tokenized/`` splits and label map, and its
``base_model`` tag (the model is the one the tokens were made for, whatever the profile says).
Writes:
- per-epoch metrics ``val_accuracy``, ``val_precision``, ``val_recall``, ``val_f1``, ``val_loss``
  and ``train_loss`` / ``learning_rate`` (step = optimizer step);
- metrics ``best_val_f1``, ``best_epoch``, ``epochs_completed``, ``stopped_epoch``,
  ``stopped_early`` (1/0; early stopping on ``best_model_metric`` with
  ``early_stopping_patience`` and ``early_stopping_min_delta``), ``train_runtime_s``,
  ``train_samples_per_second``, ``best_val_loss``, ``best_val_average_precision`` (the kept
  epoch's figures: ``best_model_metric`` picks the epoch kept, or ``last`` keeps the final one),
  ``trainable_params``, ``trainable_fraction``; param ``resolved_device`` (what ``auto`` became);
  on CUDA also ``peak_gpu_memory_allocated_mb`` / ``peak_gpu_memory_reserved_mb`` (rank 0's
  device, PyTorch's allocator: tensors, and tensors plus its cache);
- artifact ``checkpoint/``: the best model and its tokenizer (safetensors), ready for
  ``from_pretrained`` and for ``mlflow.transformers.log_model`` by path. With ``peft: lora`` only
  LoRA adapters on ``lora_target_modules`` and the classifier head train; ``checkpoint/`` is then
  the adapter merged into the base weights, and ``adapter/`` the adapter itself (tag
  ``pipeline.peft``);
- with ``epoch_checkpoints: all``, ``epochs/epoch-<n>/``: each epoch's model files (weights or
  adapter, config, tokenizer), logged as the epoch ends; tags ``pipeline.best_epoch`` and
  ``pipeline.epoch_checkpoints`` (JSON: epoch -> artifact path; ``evaluate --checkpoint_epoch``);
- with ``system_metrics: true``, MLflow's ``system/*`` metrics every ``system_metrics_interval_s``;
- artifact ``trainer_checkpoints/checkpoint-<step>/`` while the run trains: the last epoch's full
  Trainer state (weights, optimizer, scheduler, RNG), replaced each epoch, so that a killed run can
  be resumed: ``--resume_run_id <killed run>`` downloads it, copies that run's metric history, and
  trains only the steps that are left (metrics ``resumed_from_step``, ``steps_trained_here``; tag
  ``pipeline.resumed_from``). Into a local artifact store checkpoints are hard-linked, not copied.
  A finished run cannot be resumed, so once ``checkpoint/`` is logged the Trainer state is
  deleted (several times the model's size), unless ``keep_trainer_state: true`` (tag
  ``pipeline.trainer_state``: ``kept`` or ``dropped``);
- with ``class_weight: balanced``, the training loss weighs each class by
  ``rows / (classes * rows of the class)`` of the train split (param ``class_weights``);
- tags ``base_model``, ``base_model_revision``, ``data_digest`` (carried from upstream).

Several processes (DDP): with ``nproc_per_node`` > 1 the step starts itself again under
``torchrun`` (``python -m torch.distributed.run --standalone``), one process per device; you may
also start it that way yourself: ``torchrun --nproc_per_node 2 -m steps.finetune ...``. The
Trainer does the distributed work (gloo on CPU, NCCL on CUDA). Only rank 0 logs to MLflow and
writes artifacts; the others train and stay silent. Param ``world_size`` records how many.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from steps import artifacts, chain, common, modeling
from steps.chain import ADAPTER_DIR, CHECKPOINT_DIR, EPOCHS_DIR, RESUME_DIR, RESUME_PARAM
from steps.config import Config, module_names
from steps.errors import UserError
from steps.tags import (
    BASE_MODEL_TAG,
    BEST_EPOCH_TAG,
    EPOCH_CHECKPOINTS_TAG,
    LAST_CHECKPOINT_TAG,
    PEFT_TAG,
    RESUMED_FROM_TAG,
    STEP_TAG,
    TRAINER_STATE_TAG,
)

STEP = chain.FINETUNE
log = common.logger(STEP)
UPSTREAM = chain.upstream_param(STEP)
SHARED_DIR_ENV = "PIPELINE_FINETUNE_SHARED_DIR"  # set by the relaunch: the ranks' common folder
# What a Trainer checkpoint holds beyond the model: needed to resume, not to predict.
TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", "trainer_state.json")


# ----------------------------------------------------------------------------- pure functions
@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env(env: Mapping[str, str]) -> World:
    """What ``torchrun`` told this process (``RANK``, ``WORLD_SIZE``); nothing means one process."""
    return World(rank=int(env.get("RANK", "0")), size=int(env.get("WORLD_SIZE", "1")))


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """This step again, under torchrun on this machine, with the same arguments."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "steps.finetune",
        *argv,
    ]


def shared_output_dir(env: Mapping[str, str], upstream_run_id: str) -> Path:
    """The Trainer's output folder, the same for every rank of one launch.

    Rank 0 writes the epoch checkpoints and every rank reads the best one back at the end
    (``load_best_model_at_end``), so the ranks must agree on the folder without talking first.
    """
    if env.get(SHARED_DIR_ENV):
        return Path(env[SHARED_DIR_ENV])
    launch = f"{env.get('TORCHELASTIC_RUN_ID', 'none')}-{env.get('MASTER_PORT', '0')}"
    return Path(tempfile.gettempdir()) / f"finetune-{upstream_run_id}-{launch}"


def training_arguments(cfg: Config, device: str, output_dir: str, world: World = World()) -> dict[str, Any]:
    """Keyword arguments for ``TrainingArguments`` (transformers 5 names)."""
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


def validation_metrics(
    logits: np.ndarray, label_ids: np.ndarray, labels: list[str], positive_label: str
) -> dict[str, float]:
    """The Trainer's per-epoch validation figures: accuracy, precision, recall, F1 and, for two
    classes, the average precision of ``positive_label``'s probability (smoother than F1)."""
    from sklearn.metrics import average_precision_score

    truth = [labels[int(i)] for i in label_ids]
    metrics = modeling.classification_metrics(
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


def check_target_modules(wanted: list[str], available: list[str]) -> None:
    """LoRA adapts modules by name: each wanted name must be one the model has."""
    missing = [name for name in wanted if name not in available]
    if missing:
        raise UserError(
            f"lora_target_modules {', '.join(missing)} not found in the base model: "
            f"its linear layers are {', '.join(available)}"
        )


def by_length(frame: Any) -> Any:
    """A tokenized frame's rows, shortest first (a stable sort: equal lengths keep their order)."""
    order = np.argsort(frame["input_ids"].map(len).to_numpy(), kind="stable")
    return frame.iloc[order].reset_index(drop=True)


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


# ----------------------------------------------------------------------------- MLflow
def _callbacks(run_id: str) -> list[Any]:
    from transformers import TrainerCallback

    class MlflowEpochMetrics(TrainerCallback):
        """Log the Trainer's per-epoch losses and validation metrics to the active run."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            import mlflow

            metrics = mlflow_metric_names(logs or {})
            if metrics and state.is_world_process_zero:
                mlflow.log_metrics(metrics, step=state.global_step)

    class MlflowResumableCheckpoints(TrainerCallback):
        """Log each epoch's full Trainer checkpoint to the run, replacing the one before it.

        If the process dies (killed, out of memory, machine lost), ``main`` finds this run and a
        new finetune resumes from the last checkpoint here instead of starting over.
        """

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            import mlflow

            if not state.is_world_process_zero:
                return
            name = f"checkpoint-{state.global_step}"
            common.log_artifacts_linked(Path(args.output_dir) / name, f"{RESUME_DIR}/{name}")
            mlflow.set_tag(LAST_CHECKPOINT_TAG, name)  # only once every file is up
            common.kill_point("finetune.checkpoint_logged")
            best = Path(state.best_model_checkpoint or name).name  # early stopping needs it too
            _delete_older_checkpoints(run_id, keep={name, best})

    return [MlflowEpochMetrics(), MlflowResumableCheckpoints()]


class EpochCheckpoints:
    """Which epoch each Trainer checkpoint closes; with ``log_each``, each epoch's model files
    are logged to ``epochs/epoch-<n>/`` of the run as the epoch ends (model files only: no
    optimizer state, so an epoch costs the model's size)."""

    def __init__(self, log_each: bool) -> None:
        self.log_each = log_each
        self.epoch_of_step: dict[int, int] = {}
        self.logged: dict[int, str] = {}

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class MlflowEpochCheckpoints(TrainerCallback):
            def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if state.is_world_process_zero:
                    outer.saved(Path(args.output_dir) / f"checkpoint-{state.global_step}", state)

        return MlflowEpochCheckpoints()

    def saved(self, folder: Path, state: Any) -> None:
        epoch = epoch_number(state.epoch)
        self.epoch_of_step[state.global_step] = epoch
        if self.log_each:
            path = f"{EPOCHS_DIR}/epoch-{epoch}"
            with tempfile.TemporaryDirectory(prefix="epoch-") as staging:
                for file in model_files(folder):
                    common.link_or_copy(str(file), str(Path(staging) / file.name))
                common.log_artifacts_linked(Path(staging), path)
            self.logged[epoch] = path

    def best_epoch(self, state: Any) -> int:
        """The epoch of the checkpoint the Trainer kept as best (the last one, without eval)."""
        name = state.best_model_checkpoint
        step = int(Path(name).name.split("-")[1]) if name else state.global_step
        return self.epoch_of_step.get(step, epoch_number(state.epoch))


def _delete_older_checkpoints(run_id: str, keep: set[str]) -> None:
    """Free the store of superseded checkpoints, where the artifact store can delete."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(mlflow.get_run(run_id).info.artifact_uri)
    for info in repo.list_artifacts(RESUME_DIR):
        if info.is_dir and info.path.rsplit("/", 1)[-1] not in keep:
            try:
                repo.delete_artifacts(info.path)
            except (NotImplementedError, AttributeError):
                return  # this store keeps them all; they cost disk, not correctness


def drop_trainer_state(run_id: str) -> bool:
    """Delete a finished run's resumable Trainer state (the tag that points at it first, so no
    reader is sent to files that are going); False where the store cannot delete."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    if LAST_CHECKPOINT_TAG in run.data.tags:  # a resumed run with no step left saved nothing
        client.delete_tag(run_id, LAST_CHECKPOINT_TAG)
    repo = get_artifact_repository(run.info.artifact_uri)
    try:
        if not repo.list_artifacts(RESUME_DIR):
            return True
        repo.delete_artifacts(RESUME_DIR)
    except (NotImplementedError, AttributeError):
        return False
    return True


def prepare_resume(resume_run_id: str, work_dir: Path, copy_history: bool = True) -> tuple[Path, int]:
    """Download the checkpoints a killed finetune run logged, and copy its metric history.

    They land in ``work_dir/trainer_checkpoints``, this run's Trainer output folder, and the
    last one's record of the best checkpoint is pointed there, so early stopping and
    ``load_best_model_at_end`` carry on as if the run had never stopped.

    The copied history (up to the checkpoint's step) and the resumed training, which carries on
    counting steps from the checkpoint, make one continuous curve in this run.
    """
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    try:
        old = client.get_run(resume_run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"--resume_run_id {resume_run_id!r} does not exist") from None
    if old.data.tags.get(STEP_TAG) != STEP:
        raise UserError(f"--resume_run_id {resume_run_id} is not a finetune run")
    latest = old.data.tags.get(LAST_CHECKPOINT_TAG)  # set after its upload completed
    if latest is None:
        raise UserError(
            f"finetune run {resume_run_id} logged no checkpoint to resume from: "
            "run finetune without --resume_run_id"
        )
    step = int(latest.split("-")[1])
    folder = common.download(resume_run_id, RESUME_DIR, work_dir) / latest
    state_file = folder / "trainer_state.json"
    state = json.loads(state_file.read_text())
    if state.get("best_model_checkpoint"):
        state["best_model_checkpoint"] = str(folder.parent / Path(state["best_model_checkpoint"]).name)
        state_file.write_text(json.dumps(state))
    if not copy_history:  # a rank other than 0: the checkpoint, not the record
        return folder, step
    history = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in old.data.metrics
        for m in client.get_metric_history(resume_run_id, key)
        if m.step <= step
    ]
    active = mlflow.active_run()
    assert active is not None
    for start in range(0, len(history), 500):
        client.log_batch(active.info.run_id, metrics=history[start : start + 500])
    return folder, step


@contextlib.contextmanager
def rank_run(
    world: World, profile: str, cfg: Config, upstream_run_id: str
) -> Iterator[tuple[str | None, Path]]:
    """Rank 0: the step's MLflow run. Other ranks: no run at all, only a scratch folder."""
    if world.is_main:
        interval = cfg.system_metrics_interval_s if cfg.system_metrics else None
        with common.step_run(STEP, profile, cfg, upstream_run_id, interval) as (run_id, tmp):
            yield run_id, tmp
        return
    os.environ.pop("MLFLOW_RUN_ID", None)  # rank 0's run: only rank 0 writes to it
    with tempfile.TemporaryDirectory(prefix=f"{STEP}-rank{world.rank}-") as tmp:
        yield None, Path(tmp)


def load_for_training(cfg: Config, base_model: str, label2id: dict[str, int]) -> tuple[Any, Any]:
    """The base model with a new head for these labels (initialised from ``cfg.seed``), with a
    LoRA adapter when ``peft`` asks for one, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    id2label = {i: label for label, i in label2id.items()}
    resolved = common.resolve_base_model(base_model)
    set_seed(cfg.seed)  # the new classification head is initialised from this seed
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolved, num_labels=len(label2id), id2label=id2label, label2id=label2id
        )
    except OSError as exc:
        raise common.load_model_error(base_model, exc) from None
    if cfg.peft == "lora":
        model = with_lora(model, cfg)
    return model, AutoTokenizer.from_pretrained(resolved)


def make_trainer(
    cfg: Config,
    model: Any,
    tokenizer: Any,
    frames: dict[str, Any],
    labels: list[str],
    weights: list[float] | None,
    callbacks: list[Any],
    args: dict[str, Any],
) -> Any:
    """The Trainer: batches padded to their longest text, validation metrics every epoch, the
    loss weighed by class when ``class_weight`` asks, early stopping when patience is set."""
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits, label_ids = prediction
        return validation_metrics(np.asarray(logits), np.asarray(label_ids), labels, cfg.positive_label)

    if cfg.early_stopping_patience > 0:
        callbacks = [
            *callbacks,
            EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_min_delta),
        ]
    return Trainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=modeling.to_features(frames["train"]),
        # sorted by length: each evaluation batch pads to similar lengths (order is irrelevant)
        eval_dataset=modeling.to_features(by_length(frames["validation"])),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),  # pad per batch, not to max_length
        compute_metrics=compute_metrics,
        compute_loss_func=weighted_loss(weights) if weights else None,
        callbacks=callbacks,
    )


def training_metrics(
    cfg: Config, trainer: Any, result: Any, best_epoch: int, resumed_step: int
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


def save_kept_model(cfg: Config, trainer: Any, tokenizer: Any, tmp: Path) -> None:
    """Log the kept epoch's model as ``checkpoint/`` (always a whole model) and, for LoRA, the
    adapter itself as ``adapter/``."""
    checkpoint = tmp / CHECKPOINT_DIR
    if cfg.peft == "lora":
        adapter = tmp / ADAPTER_DIR
        trainer.save_model(str(adapter))  # a PEFT model saves its adapter (and head) only
        tokenizer.save_pretrained(str(adapter))
        common.log_artifacts_linked(adapter, ADAPTER_DIR)
        modeling.save_merged(trainer.model, checkpoint)  # the adapter folded into the base weights
    else:
        trainer.save_model(str(checkpoint))  # the kept epoch's weights (load_best_model_at_end)
    tokenizer.save_pretrained(str(checkpoint))
    common.log_artifacts_linked(checkpoint, CHECKPOINT_DIR)


def run(upstream_run_id: str | None, cfg: Config, profile: str, resume_run_id: str | None = None) -> str:
    import mlflow
    import torch

    world = world_from_env(os.environ)
    upstream = common.get_upstream(upstream_run_id, chain.TOKENIZE, UPSTREAM)
    base_model = upstream.data.tags[BASE_MODEL_TAG]  # the model the tokens were made for
    cfg = dataclasses.replace(cfg, base_model=base_model)  # so the logged config says so too
    device = modeling.available_device(cfg.device)
    modeling.check_precision(cfg.precision, device)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)

    with rank_run(world, profile, cfg, upstream.info.run_id) as (run_id, tmp):
        work_dir = shared_output_dir(os.environ, upstream.info.run_id) if world.size > 1 else tmp
        frames, label2id = artifacts.read_tokenized(upstream.info.run_id, tmp / "in")
        if cfg.max_train_samples:
            n = min(cfg.max_train_samples, len(frames["train"]))
            frames["train"] = frames["train"].sample(n=n, random_state=cfg.seed)
        model, tokenizer = load_for_training(cfg, base_model, label2id)
        labels = sorted(label2id, key=label2id.__getitem__)
        epochs = EpochCheckpoints(log_each=cfg.epoch_checkpoints == "all")
        weights = class_weights(frames["train"]["label_id"], len(label2id), cfg.class_weight)
        if run_id:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            mlflow.log_metrics(
                {"trainable_params": float(trainable), "trainable_fraction": trainable / total}
            )
            mlflow.set_tag(PEFT_TAG, cfg.peft)
            if weights:
                mlflow.log_param("class_weights", json.dumps([round(w, 6) for w in weights]))
        callbacks = [*_callbacks(run_id), epochs.callback()] if run_id else []
        args = training_arguments(cfg, device, str(work_dir / RESUME_DIR), world)
        trainer = make_trainer(cfg, model, tokenizer, frames, labels, weights, callbacks, args)
        resume_from, resumed_step = None, 0
        if resume_run_id:
            # rank 0 downloads into the shared output folder; the others into their own
            resume_from, resumed_step = prepare_resume(
                resume_run_id, work_dir if world.is_main else tmp, copy_history=world.is_main
            )
            if world.is_main:
                mlflow.set_tag(RESUMED_FROM_TAG, resume_run_id)
                log.info(f"resuming run {resume_run_id} from step {resumed_step}")
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            if world.size > 1:
                trainer.accelerator.wait_for_everyone()  # every rank has read the best checkpoint
        if run_id is None:
            return ""
        if world.size > 1 and SHARED_DIR_ENV not in os.environ:  # else the launcher removes it
            shutil.rmtree(work_dir, ignore_errors=True)
        best_epoch = epochs.best_epoch(trainer.state)
        mlflow.log_params({"resolved_device": device, "world_size": str(world.size)})
        mlflow.log_metrics(training_metrics(cfg, trainer, result, best_epoch, resumed_step))
        if device == "cuda":
            mlflow.log_metrics(gpu_memory_metrics())
        save_kept_model(cfg, trainer, tokenizer, tmp)
        logged = epochs.logged or {best_epoch: ADAPTER_DIR if cfg.peft == "lora" else CHECKPOINT_DIR}
        mlflow.set_tags(
            {
                BEST_EPOCH_TAG: str(best_epoch),
                EPOCH_CHECKPOINTS_TAG: json.dumps({str(k): v for k, v in sorted(logged.items())}),
                **common.lineage_tags(upstream),
            }
        )
        dropped = not cfg.keep_trainer_state and drop_trainer_state(run_id)
        mlflow.set_tag(TRAINER_STATE_TAG, "dropped" if dropped else "kept")
        return run_id


def gpu_memory_metrics() -> dict[str, float]:
    """Peak GPU memory of this process's device since training started, in MiB."""
    import torch

    mib = 2**20
    return {
        "peak_gpu_memory_allocated_mb": torch.cuda.max_memory_allocated() / mib,
        "peak_gpu_memory_reserved_mb": torch.cuda.max_memory_reserved() / mib,
    }


def with_lora(model: Any, cfg: Config) -> Any:
    """``model`` with LoRA adapters on ``cfg``'s target modules; only they and the classifier
    head train (PEFT's sequence-classification task keeps the new head trainable)."""
    from peft import LoraConfig, TaskType, get_peft_model

    wanted = module_names(cfg.lora_target_modules)
    check_target_modules(wanted, modeling.linear_module_names(model))
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=wanted,
    )
    return get_peft_model(model, lora)


def relaunch(nproc: int, argv: list[str]) -> int:
    """Start this step under torchrun with ``nproc`` processes; their exit status is ours."""
    with tempfile.TemporaryDirectory(prefix=f"{STEP}-ddp-") as shared:
        env = {**os.environ, SHARED_DIR_ENV: shared}
        log.info(f"starting {nproc} training processes (torchrun, DDP)")
        return subprocess.run(torchrun_command(nproc, argv), env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = common.step_parser(__doc__, UPSTREAM, STEP)
    parser.add_argument(
        f"--{RESUME_PARAM}",
        default="",
        help="a killed finetune run of the same inputs: resume from its last checkpoint",
    )
    ns, _ = parser.parse_known_args(argv)
    args = common.parse_step_args(parser, argv, UPSTREAM)

    def body() -> str | None:
        cfg = common.config_for(args)
        if cfg.nproc_per_node > 1 and "RANK" not in os.environ:
            # bad input fails here, in one line, before any training process starts
            common.get_upstream(args.upstream_run_id, chain.TOKENIZE, UPSTREAM)
            status = relaunch(cfg.nproc_per_node, argv)
            if status:
                raise SystemExit(status)
            return None  # rank 0 said which run it finished
        return run(args.upstream_run_id, cfg, args.profile, common.run_id_given(getattr(ns, RESUME_PARAM)))

    return common.cli(STEP, body)


if __name__ == "__main__":
    common.exit_quickly(main())
