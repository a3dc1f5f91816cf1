"""The pipeline's configuration: the shared settings and every task's own, in one frozen dataclass.

``Config`` is what a step reads (``cfg.<name>``). Its fields are declared where they belong: the
shared ones in ``settings``, a task's own in the task's module. ``FIELDS`` lists them all, a
task's own placed after the shared setting it names (``setting(after=...)``), which is the order
of the command lines and of the generated ``MLproject``. ``profiles.load_config`` merges one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hf_finetune.errors import UserError
from hf_finetune.settings import Settings
from hf_finetune.tasks import registry
from hf_finetune.tasks.text_classification.task import ClassificationSettings
from hf_finetune.tasks.text_generation.task import GenerationSettings


@dataclasses.dataclass(frozen=True)
class Config(Settings, ClassificationSettings, GenerationSettings):
    """Every setting of the pipeline: the shared ones and each task's (see ``settings.setting``)."""

    def __post_init__(self) -> None:
        Settings.__post_init__(self)
        if self.task not in registry.TASKS:
            raise UserError(f"unknown task {self.task!r}: use one of {', '.join(registry.TASKS)}")
        shared_default = next(f.default for f in dataclasses.fields(Settings) if f.name == "registered_model")
        if self.registered_model == shared_default:  # not chosen: the task's own name
            object.__setattr__(self, "registered_model", registry.TASKS[self.task].registered_model)
        validate = getattr(registry.TASKS[self.task].settings, "__post_init__", None)
        if validate is not None:  # the task's own checks of its own settings
            validate(self)


def check_task_settings(task: str, given: Mapping[str, Any], source: str) -> None:
    """A task's own setting given for another task would change nothing: one line that says so.
    (A profile may hold every task's values; what is given on the command line must fit.)"""
    for name in given:
        owner = owner_of(name)
        if owner and owner != task:
            raise UserError(
                f"{name} is a setting of the {owner} task, not of {task}: remove it from {source}, "
                f"or use task {owner}"
            )


def _ordered_fields() -> dict[str, dataclasses.Field[Any]]:
    shared = [field.name for field in dataclasses.fields(Settings)]
    own = {f.name: f for f in dataclasses.fields(Config)}
    order = list(shared)
    for task in registry.TASKS.values():
        for field in dataclasses.fields(task.settings):
            anchor = field.metadata["after"]
            order.insert(order.index(anchor) + 1 if anchor in order else len(order), field.name)
    return {name: own[name] for name in order}


FIELDS: dict[str, dataclasses.Field[Any]] = _ordered_fields()


def fields_of(step: str) -> list[str]:
    """The settings ``step`` reads, in declaration order."""
    return [name for name, field in FIELDS.items() if step in field.metadata["steps"]]


def owner_of(name: str) -> str:
    """The task whose own setting ``name`` is, or "" for a shared setting."""
    for task in registry.TASKS.values():
        if name in {field.name for field in dataclasses.fields(task.settings)}:
            return task.name
    return ""


def as_params(cfg: Config) -> dict[str, str]:
    """The config as MLflow params (strings; MLflow stores params as strings anyway)."""
    return {key: str(getattr(cfg, key)) for key in FIELDS}
