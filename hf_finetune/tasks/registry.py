"""Task name -> task: the one list of the kinds of model the pipeline fine-tunes."""

from __future__ import annotations

from hf_finetune.settings import Settings
from hf_finetune.tasks.base import Task
from hf_finetune.tasks.text_classification.task import TextClassification
from hf_finetune.tasks.text_generation.task import TextGeneration

TASKS: dict[str, Task] = {task.name: task for task in (TextClassification(), TextGeneration())}


def task_of(cfg: Settings) -> Task:
    """The task ``cfg`` names (``task``; ``config.Config`` refuses an unknown one in one line)."""
    return TASKS[cfg.task]
