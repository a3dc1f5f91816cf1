"""The registered model a run writes into: whether it exists, and which task its versions are.

A registered model holds one task's models (its tag ``task``; one created before tasks were
tagged holds text classifiers). ``register`` checks it before its run starts and again under the
lock; ``main`` checks it before any training, so that a generator is never trained for hours to be
refused a classifier's name at the end.
"""

from __future__ import annotations

from typing import Any

from hf_finetune.errors import UserError
from hf_finetune.tags import TASK_TAG
from hf_finetune.tasks.base import Task

UNTAGGED = "text-classification"  # what a registered model without a task tag holds


def check_registered_model(client: Any, name: str, task: Task) -> bool:
    """True if ``name`` exists. A model of another task under that name is an error."""
    from mlflow.exceptions import MlflowException

    try:
        existing = client.get_registered_model(name)
    except MlflowException:
        return False
    held = existing.tags.get(TASK_TAG) or UNTAGGED
    if held != task.name:
        raise UserError(
            f"registered model {name!r} holds {held} models, not {task.name}: "
            "choose another --registered_model (or leave it out: each task has its own default)"
        )
    return True
