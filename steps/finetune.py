"""finetune: tokenized splits -> the task's model, fine-tuned (Hugging Face ``Trainer``).

The task (``task``) gives the model, the features, collator, loss and per-epoch metrics; what is
listed below is for the text-classification task where it differs by task. For text generation
(docs/text-generation.md): a causal LM (an encoder such as the bundled MiniLM with
``is_decoder=True``), the loss on completion tokens only, per-epoch ``val_loss`` alone (no logits
kept), ``best_model_metric`` ``loss`` or ``last``; with LoRA, the weights the base checkpoint
lacked (a new LM head) train beside the adapter.

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
- the task's params (text classification, with ``class_weight: balanced``: ``class_weights``,
  the loss weighing each class by ``rows / (classes * rows of the class)`` of the train split);
- tags ``base_model``, ``base_model_revision``, ``data_digest`` (carried from upstream);
- run by a sweep's trial (``steps/sweep.py``): each epoch's validation metric reported to the
  trial, and where Optuna's pruner stops it, tag ``pipeline.pruned`` (the run still ends FINISHED,
  and is never reused from the cache).

Several processes (DDP): with ``nproc_per_node`` > 1 the step starts itself again under
``torchrun`` (``python -m torch.distributed.run --standalone``), one process per device; you may
also start it that way yourself: ``torchrun --nproc_per_node 2 -m steps.finetune ...``. The
Trainer does the distributed work (gloo on CPU, NCCL on CUDA). Only rank 0 logs to MLflow and
writes artifacts; the others train and stay silent. Param ``world_size`` records how many.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from typing import Any

from hf_finetune import artifacts, chain, cli, devices, hub, logs, sweeps, tracking
from hf_finetune.chain import ADAPTER_DIR, CHECKPOINT_DIR, RESUME_DIR, RESUME_PARAM
from hf_finetune.checkpoints import EpochCheckpoints, _callbacks, drop_trainer_state, prepare_resume
from hf_finetune.config import Config
from hf_finetune.distributed import SHARED_DIR_ENV, rank_run, relaunch, shared_output_dir, world_from_env
from hf_finetune.tags import (
    BASE_MODEL_TAG,
    BEST_EPOCH_TAG,
    EPOCH_CHECKPOINTS_TAG,
    PEFT_TAG,
    RESUMED_FROM_TAG,
    TRAINER_STATE_TAG,
)
from hf_finetune.tasks import registry
from hf_finetune.tasks.base import Task
from hf_finetune.training import (
    gpu_memory_metrics,
    make_trainer,
    save_kept_model,
    training_arguments,
    training_metrics,
)

STEP = chain.FINETUNE
log = logs.logger(STEP)
UPSTREAM = chain.upstream_param(STEP)


# ----------------------------------------------------------------------------- MLflow
def load_for_training(task: Task, cfg: Config, base_model: str, label2id: dict[str, int]) -> tuple[Any, Any]:
    """The task's model on the base model (with a LoRA adapter when ``peft`` asks), and its tokenizer."""
    from transformers import AutoTokenizer

    resolved = hub.resolve_base_model(base_model)
    try:
        model = task.model_for_training(resolved, label2id, cfg)
    except OSError as exc:
        raise hub.load_model_error(base_model, exc) from None
    return model, task.prepare_tokenizer(AutoTokenizer.from_pretrained(resolved))


def run(upstream_run_id: str | None, cfg: Config, profile: str, resume_run_id: str | None = None) -> str:
    import mlflow
    import torch

    task = registry.task_of(cfg)
    world = world_from_env(os.environ)
    upstream = tracking.get_upstream(upstream_run_id, chain.TOKENIZE, UPSTREAM, cfg.task)
    base_model = upstream.data.tags[BASE_MODEL_TAG]  # the model the tokens were made for
    cfg = dataclasses.replace(cfg, base_model=base_model)  # so the logged config says so too
    device = devices.available_device(cfg.device)
    devices.check_precision(cfg.precision, device)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)

    with rank_run(world, profile, cfg, upstream.info.run_id) as (run_id, tmp):
        work_dir = shared_output_dir(os.environ, upstream.info.run_id) if world.size > 1 else tmp
        frames, label2id = artifacts.read_tokenized(upstream.info.run_id, tmp / "in")
        if cfg.max_train_samples:
            n = min(cfg.max_train_samples, len(frames["train"]))
            frames["train"] = frames["train"].sample(n=n, random_state=cfg.seed)
        model, tokenizer = load_for_training(task, cfg, base_model, label2id)
        parts = task.training_parts(frames, label2id, tokenizer, cfg)
        epochs = EpochCheckpoints(log_each=cfg.epoch_checkpoints == "all")
        if run_id:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            mlflow.log_metrics(
                {"trainable_params": float(trainable), "trainable_fraction": trainable / total}
            )
            mlflow.set_tag(PEFT_TAG, cfg.peft)
            if parts.params:
                mlflow.log_params(parts.params)
        callbacks = [*_callbacks(run_id), epochs.callback()] if run_id else []
        if run_id and world.size == 1:  # a sweep's trial (several processes: not pruned, each must stop)
            callbacks += sweeps.pruning_callbacks(task.validation_metric)
        args = training_arguments(cfg, device, str(work_dir / RESUME_DIR), world)
        trainer = make_trainer(cfg, model, tokenizer, parts, callbacks, args)
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
                **tracking.lineage_tags(upstream),
            }
        )
        dropped = not cfg.keep_trainer_state and drop_trainer_state(run_id)
        mlflow.set_tag(TRAINER_STATE_TAG, "dropped" if dropped else "kept")
        return run_id


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = cli.step_parser(__doc__, UPSTREAM, STEP)
    parser.add_argument(
        f"--{RESUME_PARAM}",
        default="",
        help="a killed finetune run of the same inputs: resume from its last checkpoint",
    )
    ns, _ = parser.parse_known_args(argv)
    args = cli.parse_step_args(parser, argv, UPSTREAM)

    def body() -> str | None:
        cfg = cli.config_for(args)
        if cfg.nproc_per_node > 1 and "RANK" not in os.environ:
            # bad input fails here, in one line, before any training process starts
            tracking.get_upstream(args.upstream_run_id, chain.TOKENIZE, UPSTREAM, cfg.task)
            status = relaunch(cfg.nproc_per_node, argv)
            if status:
                raise SystemExit(status)
            return None  # rank 0 said which run it finished
        return run(args.upstream_run_id, cfg, args.profile, cli.run_id_given(getattr(ns, RESUME_PARAM)))

    return cli.cli(STEP, body)


if __name__ == "__main__":
    cli.exit_quickly(main())
