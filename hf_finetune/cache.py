"""The step cache of ``main``: a finished step run is reused when nothing it depends on changed.

A step's cache key is the sha256 of:
- its entry point;
- the settings it reads, as ``Config`` declares them (``config.fields_of``), with their types
  normalised, as the step itself would merge them (profile, then the parameters main passes it);
- a hash of its code: the step's module and every project module (``steps``, ``hf_finetune``) it
  imports, transitively, imports inside functions included, and its entry point in ``MLproject``;
- the run IDs of the steps above it (a rerun upstream means new inputs);
- for ``prepare``, the sha256 of the input data file.

The key and its parts are run tags (``pipeline.cache_key``, ``pipeline.cache_inputs``), found
with ``search_runs``, so the cache works against a remote tracking server as well as a local store.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.util
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hf_finetune.config import Config, fields_of
from hf_finetune.settings import PROJECT_DIR

PACKAGES = ("steps", "hf_finetune")  # the code a step runs, as far as its cache key is concerned


# ----------------------------------------------------------------------------- pure functions
def fields_read(source: str) -> set[str]:
    """Every ``cfg.<name>`` a source reads, and every ``own(cfg).<name>`` (a task's own settings)."""

    def is_cfg(node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id == "cfg"

    def reads(node: ast.AST) -> bool:
        if not isinstance(node, ast.Attribute):
            return False
        value = node.value
        own = (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "own"
            and len(value.args) == 1
            and is_cfg(value.args[0])
        )
        return is_cfg(value) or own

    return {node.attr for node in ast.walk(ast.parse(source)) if reads(node)}  # type: ignore[attr-defined]


def imported_project_modules(source: str) -> set[str]:
    """The project's modules a module imports: ``steps.*`` and ``hf_finetune.*``, named as
    ``from package import module``, ``from package.module import name`` or ``import package.module``,
    at the top or inside a function, with every package above them (its ``__init__`` runs too)."""
    named = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in PACKAGES:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    named.add(submodule if is_module(submodule) else node.module)
        elif isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES}
    found = set()
    for name in named:
        parts = name.split(".")
        found |= {".".join(parts[: i + 1]) for i in range(len(parts))}
    return found


def is_module(name: str) -> bool:
    """Whether ``name`` is a module (``from package import name`` may also import a function)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, AttributeError, ValueError):  # the parent is a module, not a package
        return False


def key_inputs(
    step: str, cfg: Config, fields: set[str], code: str, upstream_run_id: str | None, data_digest: str | None
) -> dict[str, Any]:
    """What the key covers, as a JSON-ready dict (also stored, to explain a miss)."""
    values = dataclasses.asdict(cfg)
    inputs: dict[str, Any] = {
        "entry_point": step,
        "config": {name: values[name] for name in sorted(fields) if name in values},  # not methods
        "code": code,
        "upstream": upstream_run_id,
    }
    if data_digest is not None:
        inputs["data"] = data_digest
    return inputs


def cache_key(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The settings and parts in which two cache inputs differ."""
    changed = [
        name for name in new.get("config", {}) if old.get("config", {}).get(name) != new["config"][name]
    ]
    for part, label in (("code", "code"), ("upstream", "upstream run"), ("data", "data")):
        if old.get(part) != new.get(part):
            changed.append(label)
    return changed


def what_changed(earlier: Iterable[Mapping[str, Any]], new: Mapping[str, Any]) -> str:
    """Why a step reruns, in a few words, against the closest earlier run of it.

    The closest is the one that differs in the fewest parts: after a changed setting upstream,
    a step reruns because its upstream run changed, whatever else other runs of it did.
    """
    candidates = [differences(old, new) for old in earlier]
    if not candidates:
        return "no earlier run"
    changed = min(candidates, key=len)
    if not changed:
        return "key changed"
    return ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "") + " changed"


# ----------------------------------------------------------------------------- code and data
def module_source(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:  # pragma: no cover - steps modules always exist
        raise ModuleNotFoundError(name)
    return Path(spec.origin).read_text(encoding="utf-8")


@functools.cache
def code_closure(module: str) -> tuple[str, ...]:
    """``module`` and every project module it imports, transitively, sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported_project_modules(module_source(name)) - seen)
    return tuple(sorted(seen))


def code_hash(step: str, entry_point_spec: str) -> str:
    """sha256 over the source of the step's module closure and its MLproject entry point."""
    digest = hashlib.sha256(entry_point_spec.encode())
    for name in code_closure(f"steps.{step}"):
        digest.update(name.encode() + b"\0" + module_source(name).encode())
    return digest.hexdigest()


def step_fields(step: str) -> set[str]:
    """The settings ``step`` reads, as ``Config`` declares them."""
    return set(fields_of(step))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def entry_point_specs() -> dict[str, str]:
    """Entry point -> its command and parameters as MLflow parsed them from ``MLproject``."""
    from hf_finetune import compat

    project = compat.load_project(str(PROJECT_DIR))
    return {
        name: json.dumps({"command": ep.command, "parameters": sorted(ep.parameters)}, sort_keys=True)
        for name, ep in project._entry_points.items()
    }
