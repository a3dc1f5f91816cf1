"""Task name -> task: the one list of the kinds of model the pipeline fine-tunes."""

from __future__ import annotations

from typing import Any

from hf_finetune.settings import Settings
from hf_finetune.tasks.base import Task
from hf_finetune.tasks.text_classification.task import TextClassification
from hf_finetune.tasks.text_generation.task import TextGeneration

TASKS: dict[str, Task] = {task.name: task for task in (TextClassification(), TextGeneration())}


def task_of(cfg: Settings) -> Task:
    """The task ``cfg`` names (``task``; ``config.Config`` refuses an unknown one in one line)."""
    return TASKS[cfg.task]


def task_of_model(model: Any, default: Task) -> Task:
    """The task of a loaded pyfunc model, from the pipeline task MLflow recorded with it
    (``default`` for a model that is not a transformers pipeline of a task here)."""
    flavor = (getattr(getattr(model, "metadata", None), "flavors", None) or {}).get("transformers", {})
    for task in TASKS.values():
        if flavor.get("task") == task.pipeline_task:
            return task
    return default
