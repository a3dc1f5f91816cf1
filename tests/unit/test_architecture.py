"""The shape of the code: steps/ holds the entry points, hf_finetune/ the rest, one seam per task.

These read the source as text (and ask ``cache`` how it follows imports); they train nothing.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from hf_finetune import cache, chain, cli, config
from hf_finetune.errors import UserError
from hf_finetune.profiles import load_config
from hf_finetune.settings import PROJECT_DIR
from hf_finetune.tasks import registry
from hf_finetune.tasks.text_classification.task import ClassificationSettings, TextClassification

ENTRY_POINTS = {*chain.STEPS, *chain.BESIDE, "main"}
READERS = {"lineage", "history"}  # the user commands the README names, beside the entry points
MAX_LINES = 400


def project_modules() -> dict[str, Path]:
    """Every module of ``steps`` and ``hf_finetune``, by its dotted name."""
    found = {}
    for package in cache.PACKAGES:
        for path in sorted((PROJECT_DIR / package).rglob("*.py")):
            parts = path.relative_to(PROJECT_DIR).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name: str) -> set[str]:
    """The project modules ``name`` imports, at the top or inside a function."""
    return cache.imported_project_modules(project_modules()[name].read_text(encoding="utf-8"))


def test_steps_holds_the_entry_points_and_the_readers_only() -> None:
    names = {path.stem for path in (PROJECT_DIR / "steps").iterdir() if path.suffix == ".py"}
    assert names == ENTRY_POINTS | READERS | {"__init__"}
    assert not [
        path.name
        for path in (PROJECT_DIR / "steps").iterdir()
        if path.is_dir() and path.name != "__pycache__"
    ]


def test_every_entry_point_of_mlproject_is_a_step_module() -> None:
    from hf_finetune import compat

    project = compat.load_project(str(PROJECT_DIR))
    for name, entry_point in project._entry_points.items():
        assert entry_point.command.startswith(f"python -m steps.{name} "), name
        assert name in ENTRY_POINTS


@pytest.mark.parametrize("name", sorted(project_modules()))
def test_no_module_is_longer_than_the_limit(name: str) -> None:
    lines = len(project_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def test_no_module_is_named_for_nothing_in_particular() -> None:
    vague = {"common", "utils", "helpers", "misc", "util"}
    assert not [name for name in project_modules() if name.rsplit(".", 1)[-1] in vague]


def test_every_library_module_says_what_it_owns() -> None:
    for name, path in project_modules().items():
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert docstring and len(docstring) > 20, f"{name} has no docstring saying what it owns"


def test_there_is_no_import_circle_counting_imports_inside_functions() -> None:
    modules = project_modules()
    graph = {name: imports_of(name) & set(modules) - {name} for name in modules}
    # a package's __init__ is imported before any module in it: an edge, but never a way back
    # (every __init__ here imports nothing), which the search below checks too
    on_path: list[str] = []
    done: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        if node in on_path:
            circles.append([*on_path[on_path.index(node) :], node])
            return
        if node in done:
            return
        on_path.append(node)
        for other in sorted(graph[node]):
            visit(other)
        on_path.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)
    assert circles == []


def test_the_circle_check_sees_an_import_inside_a_function() -> None:
    source = "def f():\n    from hf_finetune import tracking\n    import steps.prepare\n"
    assert {
        "hf_finetune.tracking",
        "steps.prepare",
        "hf_finetune",
        "steps",
    } <= cache.imported_project_modules(source)


def test_no_step_but_main_imports_a_step_and_the_library_imports_none() -> None:
    for name in project_modules():
        if name == "steps.main" or name == "steps":
            continue
        steps = {module for module in imports_of(name) if module.startswith("steps.")}
        assert steps == set(), f"{name} imports {steps}"


def test_no_step_names_a_task() -> None:
    """A step reaches its task through ``tasks.registry.task_of(cfg)`` only: it imports no task's
    module, writes no task's name and reads none of a task's own settings."""
    task_modules = {
        name
        for name in project_modules()
        if name.startswith("hf_finetune.tasks.")
        and name not in ("hf_finetune.tasks.registry", "hf_finetune.tasks.base")
    }
    own_settings = {
        field.name for task in registry.TASKS.values() for field in dataclasses.fields(task.settings)
    }
    assert own_settings >= {"class_weight", "min_test_f1", "prompt_column", "prompt_template"}
    for name, path in project_modules().items():
        if not name.startswith("steps."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert imports_of(name) & task_modules == set(), name
        strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
        assert set(registry.TASKS) & strings == set(), f"{name} names a task"
        read = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in own_settings
        }
        assert read == set(), f"{name} reads a task's own settings {read}"


# ----------------------------------------------------------------------------- the task seam
@dataclasses.dataclass(frozen=True)
class NoSettings:
    """The settings of a task that has none of its own."""


class OtherTask(TextClassification):
    """A second task, for the checks that need one (it classifies, as the first does)."""

    name = "other-task"
    settings = NoSettings


def test_every_task_setting_is_declared_once_with_its_task_and_placed_among_the_shared_ones() -> None:
    own = [field.name for field in dataclasses.fields(ClassificationSettings)]
    assert [config.owner_of(name) for name in own] == ["text-classification"] * len(own)
    assert config.owner_of("learning_rate") == ""
    names = list(config.FIELDS)
    for field in dataclasses.fields(ClassificationSettings):
        assert names.index(field.name) == names.index(field.metadata["after"]) + 1


def test_an_unknown_task_is_one_line() -> None:
    with pytest.raises(UserError, match="unknown task 'nope': use one of text-classification"):
        load_config("smoke", {"task": "nope"})


def test_a_setting_of_another_task_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.TASKS, OtherTask.name, OtherTask())
    assert load_config("smoke", {"task": "other-task"}).task == "other-task"  # its defaults are fine
    with pytest.raises(
        UserError,
        match=r"^min_test_f1 is a setting of the text-classification task, not of other-task: "
        r"remove it from the command line, or use task text-classification$",
    ):
        load_config("smoke", {"task": "other-task", "min_test_f1": "0.5"})
    # and from a step's command line: one line on stderr, exit status 2, before anything runs
    parser = cli.step_parser("register: test", "log_model_run_id", chain.REGISTER)
    argv = ["--log_model_run_id", "abc", "--task", "other-task", "--min_test_f1", "0.5"]
    args = cli.parse_step_args(parser, argv, "finetune_run_id")
    assert cli.cli(chain.REGISTER, lambda: str(cli.config_for(args))) == cli.EXIT_USER_ERROR


def test_a_task_is_found_by_the_name_in_the_config() -> None:
    assert registry.task_of(load_config("smoke")).name == "text-classification"
    assert registry.task_of(load_config("smoke")) is registry.TASKS["text-classification"]


# ----------------------------------------------------------------------------- the cache follows the library
def test_editing_a_library_module_a_step_uses_changes_that_steps_code_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the move most of a step's code is in hf_finetune/: an edit there must be a cache
    miss for every step that imports it (directly, through another module, or inside a function),
    and for no step that does not."""
    specs = cache.entry_point_specs()
    steps = ("tokenize", "finetune", "predict")
    before = {step: cache.code_hash(step, specs[step]) for step in steps}
    assert "hf_finetune.training" in cache.code_closure("steps.finetune")
    assert "hf_finetune.training" not in cache.code_closure("steps.tokenize")
    assert "hf_finetune.tasks.text_classification.classifier" in cache.code_closure("steps.tokenize")
    real = cache.module_source

    def edited(name: str) -> str:
        return real(name) + ("\n# an edit\n" if name in ("hf_finetune.training", "hf_finetune.spark") else "")

    monkeypatch.setattr(cache, "module_source", edited)
    after = {step: cache.code_hash(step, specs[step]) for step in steps}
    assert after["finetune"] != before["finetune"]  # finetune uses training
    assert after["predict"] != before["predict"]  # predict uses spark
    assert after["tokenize"] == before["tokenize"]  # tokenize uses neither

    def task_edited(name: str) -> str:
        return real(name) + (
            "\n# an edit\n" if name == "hf_finetune.tasks.text_classification.classifier" else ""
        )

    monkeypatch.setattr(cache, "module_source", task_edited)
    assert cache.code_hash("tokenize", specs["tokenize"]) != before["tokenize"]


def test_the_card_and_the_report_show_the_figures_of_the_task_the_run_was() -> None:
    from hf_finetune.registry import card

    assert card.task_named("") is registry.TASKS["text-classification"]  # a run from before tasks
    assert card.task_named("text-classification").baselines["classical"].startswith("TF-IDF")
    grouped = card.grouped_metrics(
        {"test_f1": 0.9, "classical_f1": 0.8, "probe_f1": 0.7, "rows_read": 5.0}, card.task_named("")
    )
    assert grouped == {"test": {"f1": 0.9}, "classical": {"f1": 0.8}, "probe": {"f1": 0.7}}
