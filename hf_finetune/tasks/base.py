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
class CleanStats:
    """What prepare's cleaning of the rows read kept and dropped (``Task.clean``)."""

    rows_read: int
    dropped_missing_label: int
    dropped_empty: int
    dropped_duplicate: int
    conflicting_duplicates: int
    rows_clean: int


@dataclasses.dataclass(frozen=True)
class TrainingParts:
    """What the Trainer needs from a task, besides the model: features, collator, metrics, loss."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    collator: Any
    compute_metrics: Callable[[Any], dict[str, float]] | None  # None: the validation loss only
    loss: Callable[..., Any] | None = None
    params: dict[str, str] = dataclasses.field(default_factory=dict)  # logged on the finetune run
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)  # ``TrainingArguments`` the task sets


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

    inputs: list[str]  # raw texts (a prompt: the message, before the prompt template)
    outputs: list[str]  # what evaluate's model said of ``inputs``
    signature: Any  # None where MLflow sets it itself (an ``llm/v1`` task)
    model_config: dict[str, Any]
    params: dict[str, Any]
    input_example: Any = None  # what MLflow stores as the input example (default: ``inputs``)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # more ``log_model`` arguments


class Task(abc.ABC):
    """A kind of model, as every step sees it."""

    name: ClassVar[str]
    pipeline_task: ClassVar[str]  # the transformers pipeline task
    mlflow_task: ClassVar[str]  # ``log_model``'s ``task=``: the pipeline task, or MLflow's ``llm/v1/...``
    settings: ClassVar[type]  # the dataclass of the task's own settings
    registered_model: ClassVar[str]  # the registered model's name unless one is given
    row_key: ClassVar[str]  # prepare's column that names a row: deduplication, the gate's shared rows
    target: ClassVar[str]  # prepare's column the model learns to give
    floor_name: ClassVar[str]  # how the gate's reasons name the floor (``gate_floor``)
    gate_metric: ClassVar[str]  # evaluate's ``test_<gate_metric>``: what the gate compares
    higher_is_better: ClassVar[bool] = True  # the gate metric's direction
    # finetune's per-epoch validation metric a sweep optimises and prunes on (``val_<name>``,
    # ``best_val_<name>``), and its direction: never the test split
    validation_metric: ClassVar[str]
    validation_higher_is_better: ClassVar[bool] = True
    version_metrics: ClassVar[tuple[str, ...]]  # evaluate's metrics a registered version carries
    headline_metrics: ClassVar[tuple[str, ...]]  # main's summary of one pipeline run
    # how the model card and the pipeline report show the task's figures
    metric_names: ClassVar[tuple[str, ...]]  # evaluate's ``<row>_<name>`` columns of the metrics table
    baselines: ClassVar[dict[str, str]]  # evaluate's metric prefixes -> their rows' captions
    quality_curves: ClassVar[tuple[str, ...]]  # per-epoch validation metrics drawn beside the losses
    figures: ClassVar[dict[str, str]]  # evaluate's ``evaluation/<stem>.png`` -> caption
    describes: ClassVar[str]  # the model card's first words: what kind of model it is
    usage: ClassVar[str]  # the model card's example call of the loaded pyfunc ``model``

    # -- prepare
    @abc.abstractmethod
    def clean(self, df: pd.DataFrame, cfg: Settings) -> tuple[pd.DataFrame, CleanStats]:
        """The rows as read -> the task's columns (``row_key``, ``target``), checked, cleaned and
        deduplicated; a ``UserError`` in one line for unusable data."""

    def stratify_by(self, frame: pd.DataFrame) -> str | None:
        """The column whose values every split keeps in proportion (None: a plain random split)."""
        return self.target

    @abc.abstractmethod
    def digest_columns(self) -> tuple[str, str]:
        """The two columns ``data_digest`` hashes, in the order it hashes them."""

    # -- tokenize
    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        """The base model's tokenizer as this task uses it (the special tokens it needs set)."""
        return tokenizer

    def lineage(self, cfg: Settings) -> dict[str, str]:
        """Tags tokenize sets for this task, carried down the chain onto the registered version
        (``tags.LINEAGE_TAGS``): what a later reader of the model needs to use it."""
        return {}

    @abc.abstractmethod
    def label_mapping(self, frames: dict[str, pd.DataFrame]) -> dict[str, int]:
        """The model's output names and ids, the same whatever order the rows came in."""

    @abc.abstractmethod
    def encode(
        self, frame: pd.DataFrame, tokenizer: Any, cfg: Settings, label2id: dict[str, int]
    ) -> pd.DataFrame:
        """One split as model inputs (token ids, not padded, at most ``max_length``), beside the
        columns it came from; rows that cannot be encoded within it are left out."""

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
    def example(
        self, predictions: pd.DataFrame, cfg: Settings, max_length: int, size: int, lineage: dict[str, str]
    ) -> Example:
        """The input example, signature and call settings ``log_model`` saves with the model
        (``lineage``: the tags the chain carried down, ``tags.LINEAGE_TAGS``)."""

    @abc.abstractmethod
    def merge_verified(
        self,
        adapter: Path,
        base: Path,
        id2label: dict[int, str],
        inputs: list[str],
        out: Path,
        cfg: Settings,
        tags: dict[str, str],
    ) -> Path:
        """Fold ``adapter`` into ``base`` at ``out``; fail unless the merge predicts the same on
        ``inputs`` (as the version with ``tags`` is called)."""

    @abc.abstractmethod
    def served_outputs(self, model: Any, inputs: list[str]) -> list[str]:
        """What a model loaded as a user loads it (pyfunc) says of ``inputs``."""

    def reference_problem(self, resolved: str) -> str:
        """Why the base model at ``resolved``, loaded as the hub has it, would not be the model this
        task trains on it ("" when it would): a reference to it could not rebuild the model."""
        return ""

    # -- register (the gate)
    @abc.abstractmethod
    def gate_floor(self, cfg: Settings, metrics: dict[str, float]) -> float:
        """The ``test_<gate_metric>`` a champion must reach (a ceiling where lower is better), of
        evaluate's (or a version's) ``metrics``."""

    def champion_scores(
        self, model_uri: str, version_tags: dict[str, str], rows: pd.DataFrame, cfg: Settings
    ) -> list[Any]:
        """What ``compare`` needs of the champion at ``model_uri`` on ``rows``: by default what it
        says of them, loaded as a user loads it (pyfunc)."""
        import mlflow

        return self.served_outputs(mlflow.pyfunc.load_model(model_uri), rows[self.row_key].tolist())

    @abc.abstractmethod
    def compare(
        self, rows: pd.DataFrame, champion: list[Any], cfg: Settings
    ) -> tuple[float, float, float, float]:
        """Candidate and champion on the same rows: (candidate, champion, low, high) of the gate
        metric, with the interval of their difference (candidate - champion)."""

    # -- predict
    @abc.abstractmethod
    def scorer(self, model: Any, cfg: Settings) -> Scorer:
        """How predict turns what the loaded pyfunc ``model`` answers into its output columns."""


class Scorer(abc.ABC):
    """Predict's side of a task, for one loaded model: pandas for engine local, Spark for spark."""

    outputs: ClassVar[tuple[str, ...]]  # the columns predict adds (an input column of that name is kept
    # as ``input_<name>``)
    counted: ClassVar[str | None]  # the output column whose values predict counts
    # (``rows_labelled_<value>``); None: nothing counted (free text)

    def predict(self, model: Any, texts: list[str], batch_size: int) -> pd.DataFrame:
        """What the pyfunc ``model`` answers for ``texts``, one row each, in their order."""
        return pd.DataFrame(model.predict(texts, params={"batch_size": batch_size})).reset_index(drop=True)

    @abc.abstractmethod
    def columns(self, predicted: pd.DataFrame) -> dict[str, Any]:
        """``output_columns`` from what the pyfunc model returned for a chunk."""

    def spark_input(self, text: Any) -> Any:
        """What the Spark UDF of the model is called with, from the text column ``text``."""
        return text

    @abc.abstractmethod
    def spark_columns(self, prediction: Any) -> list[Any]:
        """``output_columns`` as Spark columns, from the UDF's struct column ``prediction``."""
