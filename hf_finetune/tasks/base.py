"""The task seam: what every step asks of a kind of model, and nothing the steps decide themselves.

A task owns everything that differs between kinds of model (after transformers' own
``pipelines/``: one module per task behind one interface, a registry from name to task): how
rows become model inputs, the model class, collator and loss, the metrics and which one the gate
compares, the baselines, the pipeline task and signature ``log_model`` gives MLflow, the
comparison on the same rows, and the columns ``predict`` writes. Steps get the task of their
config from ``tasks.registry.task_of`` and call these methods; no step names a task.

A new task is one module: a subclass of ``Task`` with its own settings dataclass (declared with
``settings.setting``), listed in ``tasks.registry.TASKS`` and among ``config.Config``'s bases.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from hf_finetune.settings import Settings


@dataclasses.dataclass(frozen=True)
class TrainingParts:
    """What the Trainer needs from a task, besides the model: features, collator, metrics, loss."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    collator: Any
    compute_metrics: Callable[[Any], dict[str, float]]
    loss: Callable[..., Any] | None = None
    params: dict[str, str] = dataclasses.field(default_factory=dict)  # logged on the finetune run


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation: the model evaluate loaded, the data it is judged on, where figures go."""

    checkpoint: Path  # a model folder, or a LoRA adapter folder
    base_model: str  # resolved: where ``from_pretrained`` loads the base model from
    frames: dict[str, pd.DataFrame]  # tokenize's splits
    label2id: dict[str, int]
    max_length: int  # tokenize's
    device: str
    out: Path  # figures and tables for ``evaluation/``; the predictions go to ``PREDICTIONS``


@dataclasses.dataclass(frozen=True)
class Evaluated:
    """What evaluate logs: metrics, params, and the per-row predictions (``PREDICTIONS_FILE``)."""

    metrics: dict[str, float]
    params: dict[str, str]
    predictions: pd.DataFrame  # one row per test row: ``text``, ``label``, ``prediction``, ...


@dataclasses.dataclass(frozen=True)
class Example:
    """What ``log_model`` gives MLflow beside the model, and what persist later checks against."""

    inputs: list[str]
    outputs: list[str]  # what evaluate's model said of ``inputs``
    signature: Any
    model_config: dict[str, Any]
    params: dict[str, Any]


class Task(abc.ABC):
    """A kind of model, as every step sees it."""

    name: ClassVar[str]
    pipeline_task: ClassVar[str]  # the transformers pipeline task, and MLflow's ``task=``
    settings: ClassVar[type]  # the dataclass of the task's own settings
    gate_metric: ClassVar[str]  # evaluate's ``test_<gate_metric>``: what the gate compares
    higher_is_better: ClassVar[bool] = True  # the gate metric's direction
    version_metrics: ClassVar[tuple[str, ...]]  # evaluate's metrics a registered version carries
    headline_metrics: ClassVar[tuple[str, ...]]  # main's summary of one pipeline run
    # how the model card and the pipeline report show the task's figures
    metric_names: ClassVar[tuple[str, ...]]  # evaluate's ``<row>_<name>`` columns of the metrics table
    baselines: ClassVar[dict[str, str]]  # evaluate's metric prefixes -> their rows' captions
    quality_curves: ClassVar[tuple[str, ...]]  # per-epoch validation metrics drawn beside the losses
    figures: ClassVar[dict[str, str]]  # evaluate's ``evaluation/<stem>.png`` -> caption

    # -- tokenize
    @abc.abstractmethod
    def label_mapping(self, frames: dict[str, pd.DataFrame]) -> dict[str, int]:
        """The model's output names and ids, the same whatever order the rows came in."""

    @abc.abstractmethod
    def encode(
        self, frame: pd.DataFrame, tokenizer: Any, max_length: int, label2id: dict[str, int]
    ) -> pd.DataFrame:
        """One split as model inputs (token ids, not padded), beside the columns it came from."""

    # -- finetune
    @abc.abstractmethod
    def model_for_training(self, resolved: str, label2id: dict[str, int], cfg: Settings) -> Any:
        """The base model at ``resolved`` as this task trains it (a new head where it needs one)."""

    @abc.abstractmethod
    def training_parts(
        self, frames: dict[str, pd.DataFrame], label2id: dict[str, int], tokenizer: Any, cfg: Settings
    ) -> TrainingParts:
        """Features, collator, per-epoch validation metrics and loss for the Trainer."""

    lora_task_type: ClassVar[str]  # PEFT's ``TaskType`` name for this task's adapters

    # -- evaluate
    @abc.abstractmethod
    def evaluate(self, job: Evaluation, cfg: Settings) -> Evaluated:
        """Metrics (``test_*`` and every baseline on the same rows), params and the per-row
        predictions; figures and tables are written into ``job.out``."""

    # -- log_model, persist
    @abc.abstractmethod
    def load_trained(
        self, folder: Path, base_model: str, id2label: dict[int, str], revision: str | None = None
    ) -> Any:
        """A fine-tuned model from ``folder``: a whole model, or an adapter on ``base_model``."""

    @abc.abstractmethod
    def model_class(self) -> Any:
        """The ``AutoModelFor...`` class of this task's models."""

    @abc.abstractmethod
    def example(self, predictions: pd.DataFrame, max_length: int, size: int) -> Example:
        """The input example, signature and call settings ``log_model`` saves with the model."""

    @abc.abstractmethod
    def merge_verified(
        self, adapter: Path, base: Path, id2label: dict[int, str], inputs: list[str], out: Path
    ) -> Path:
        """Fold ``adapter`` into ``base`` at ``out``; fail unless the merge predicts the same."""

    @abc.abstractmethod
    def served_outputs(self, model: Any, inputs: list[str]) -> list[str]:
        """What a model loaded as a user loads it (pyfunc) says of ``inputs``."""

    # -- register (the gate)
    @abc.abstractmethod
    def gate_floor(self, cfg: Settings) -> float:
        """The least ``test_<gate_metric>`` a champion needs."""

    @abc.abstractmethod
    def compare(
        self, rows: pd.DataFrame, champion: list[str], cfg: Settings
    ) -> tuple[float, float, float, float]:
        """Candidate and champion on the same rows: (candidate, champion, low, high) of the gate
        metric, with the interval of their difference."""

    # -- predict
    @abc.abstractmethod
    def scorer(self, model: Any, cfg: Settings) -> Scorer:
        """How predict turns what the loaded pyfunc ``model`` answers into its output columns."""


class Scorer(abc.ABC):
    """Predict's side of a task, for one loaded model: pandas for engine local, Spark for spark."""

    outputs: ClassVar[tuple[str, ...]]  # the columns predict adds (an input column of that name is kept
    # as ``input_<name>``)
    counted: ClassVar[str]  # the output column whose values predict counts (``rows_labelled_<value>``)

    @abc.abstractmethod
    def columns(self, predicted: pd.DataFrame) -> dict[str, Any]:
        """``output_columns`` from what the pyfunc model returned for a chunk."""

    @abc.abstractmethod
    def spark_columns(self, prediction: Any) -> list[Any]:
        """``output_columns`` as Spark columns, from the UDF's struct column ``prediction``."""
