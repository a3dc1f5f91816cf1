"""Profiles: ``profiles/<name>.yaml``, and the one helper that merges a config from its layers.

Precedence: ``Config``'s defaults < the task's own defaults (its registered model's name) <
``profiles/<profile>.yaml`` < the profile's section for the task (a mapping under the task's
name: the hyperparameters that task needs) < values given on the command line.
An empty string on the command line means "take it from the profile" (that is how ``mlflow run``
passes a parameter the user left out). Unknown keys and values of the wrong type are errors that
name the key and where it came from.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from hf_finetune.config import FIELDS, Config, check_task_settings
from hf_finetune.errors import UserError
from hf_finetune.settings import PROJECT_DIR
from hf_finetune.tasks import registry

PROFILES_DIR = PROJECT_DIR / "profiles"


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


def read_profile(profile: str, task: str | None = None) -> dict[str, Any]:
    """Load ``profiles/<profile>.yaml`` as typed values: its settings, and over them its section
    for ``task`` (the profile's own ``task``, or the default, when None)."""
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
    sections = {key: raw.pop(key) for key in list(raw) if key in registry.TASKS}
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise UserError(f"{name} in profile {path} must be a mapping of setting: value (for that task)")
    values = {key: coerce(key, value, str(path)) for key, value in raw.items()}
    task = task or values.get("task", FIELDS["task"].default)
    section = sections.get(task, {})
    return values | {key: coerce(key, value, f"{path} ({task})") for key, value in section.items()}


def load_config(profile: str, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults < the task's < profile < its task section < overrides (the module's docstring).
    ``None`` and ``""`` overrides mean "not given".

    ``data_columns`` belongs to the file it was declared with: where a later layer names another
    ``data`` without ``data_columns``, that file is read with its own header row.
    """
    given = {
        key: coerce(key, value, "the command line")
        for key, value in (overrides or {}).items()
        if value is not None and value != ""
    }
    from_profile = read_profile(profile, given.get("task"))
    task = given.get("task", from_profile.get("task", FIELDS["task"].default))
    if task not in registry.TASKS:
        raise UserError(f"unknown task {task!r}: use one of {', '.join(registry.TASKS)}")
    layers: list[dict[str, Any]] = [
        {"data": FIELDS["data"].default, "data_columns": FIELDS["data_columns"].default},
        from_profile,
        given,
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
    values.setdefault("registered_model", registry.TASKS[task].registered_model)  # the task's default
    check_task_settings(task, given, "the command line")
    return Config(**values)
