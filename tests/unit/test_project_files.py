"""The project's own files agree with each other: MLproject, conda.yaml, pyproject, profiles."""

from __future__ import annotations

import importlib

import pytest
import tomllib
import yaml

from hf_finetune import driver
from hf_finetune.config import FIELDS
from hf_finetune.settings import PROJECT_DIR
from steps import main as main_step

CONTRACT_MAIN_PARAMS = {
    "profile",
    "data",
    "text_column",
    "label_column",
    "base_model",
    "save_mode",
    "registered_model",
}


def test_mlproject_parses_with_mlflow_and_has_the_chain() -> None:
    declared = driver.declared_parameters()
    assert {"main", *(step for step, _ in main_step.CHAIN)} <= set(declared)
    assert declared["main"] >= CONTRACT_MAIN_PARAMS
    assert {"data", "text_column", "label_column"} <= declared["prepare"]
    for step, upstream in main_step.CHAIN:
        assert "profile" in declared[step]
        if upstream:
            assert upstream in declared[step]


def test_every_declared_parameter_is_a_setting_and_is_used_in_its_command() -> None:
    from hf_finetune import compat

    project = compat.load_project(str(PROJECT_DIR))
    for name, entry in project._entry_points.items():
        for param in entry.parameters:
            assert f"--{param} {{{param}}}" in entry.command, (name, param)
            assert (
                param in FIELDS or param in {"profile", "env_manager", "force"} or param.endswith("_run_id")
            )


def test_a_parameter_left_alone_is_recorded_as_a_word_a_reader_understands() -> None:
    """MLflow records each entry-point parameter shell-quoted: an empty default would show as a
    literal '' on the run's page. Left alone, every parameter of every entry point reads as
    what it means, and the steps take that word as "not given"."""
    from hf_finetune import cli, compat

    project = compat.load_project(str(PROJECT_DIR))
    for name, entry in project._entry_points.items():
        required = {param: "abc123" for param, spec in entry.parameters.items() if spec.default is None}
        recorded, _ = entry.compute_parameters(required, None)
        for param, value in recorded.items():
            assert value and "'" not in value, (name, param, value)
    parser = cli.step_parser("finetune", "tokenize_run_id", "finetune")
    args = cli.parse_step_args(
        parser,
        ["--tokenize_run_id", "none", "--data", "from-profile", "--seed", "from-profile"],
        "tokenize_run_id",
    )
    assert args.upstream_run_id is None and args.overrides == {}
    assert main_step.forced_steps("none") == set()
    assert driver.child_env_manager("auto", {"mlflow.project.env": "uv"}) == "uv"


def test_every_main_setting_reaches_some_step() -> None:
    declared = driver.declared_parameters()
    steps = set().union(*(declared[step] for step, _ in main_step.CHAIN))
    assert declared["main"] - steps == {"env_manager", "force"}  # main's own


def test_every_setting_a_step_reads_that_main_takes_reaches_that_step() -> None:
    """Else `main -P x=...` would change x for one step and not for another that reads it."""
    from hf_finetune import cache

    declared = driver.declared_parameters()
    for step, _ in main_step.CHAIN:
        missing = (cache.step_fields(step) & declared["main"]) - declared[step]
        assert not missing, (step, missing)


def test_conda_env_installs_what_pyproject_declares() -> None:
    pyproject = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())
    conda = yaml.safe_load((PROJECT_DIR / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(pyproject["project"]["dependencies"])


def test_every_step_program_ends_through_exit_quickly() -> None:
    """A step run as a program (``python -m steps.<step>``, what MLproject's commands run) skips
    the last garbage collection of its exit (``cli.exit_quickly``)."""
    programs = [p for p in sorted((PROJECT_DIR / "steps").glob("*.py")) if "__main__" in p.read_text()]
    assert len(programs) >= 9
    for path in programs:
        assert path.read_text().rstrip().endswith("cli.exit_quickly(main())"), path.name


def test_the_readme_is_a_front_door_and_no_source_carries_a_date() -> None:
    import re

    readme = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250, "the README is a front door: reference material goes to docs/"
    dated = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")
    sources = [PROJECT_DIR / "README.md", *(PROJECT_DIR / "steps").glob("*.py")]
    sources += (PROJECT_DIR / "benchmarks").glob("*.py")
    assert [p.name for p in sources if dated.search(p.read_text(encoding="utf-8"))] == []
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):  # every docs link of the README leads somewhere
        assert (PROJECT_DIR / link).is_file(), link


def test_the_performance_table_is_the_committed_results_rendered() -> None:
    import json
    import sys

    sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(PROJECT_DIR / "benchmarks"))
    results = json.loads((PROJECT_DIR / "benchmarks" / "results.json").read_text(encoding="utf-8"))
    doc = (PROJECT_DIR / "docs" / "PERFORMANCE.md").read_text(encoding="utf-8")
    assert run_all.render(results) in doc, "the table differs from the JSON: run_all.py --render"


def test_both_mlproject_files_are_generated_from_the_declared_settings(capsys) -> None:
    from hf_finetune import mlproject

    assert mlproject.main(["--check"]) == 0, capsys.readouterr().out


TASK_MODULE = "hf_finetune.tasks.text_classification.task"
# the code each step hands its config to: whole modules, or (module, "Class.method") for a task's
# methods, which different steps call
STEP_CODE: dict[str, list[tuple[str, str | None]]] = {
    "prepare": [("hf_finetune.corpus", None), ("hf_finetune.sources", None)],
    "tokenize": [
        (TASK_MODULE, "TextClassification.label_mapping"),
        (TASK_MODULE, "TextClassification.encode"),
    ],
    "finetune": [
        ("hf_finetune.training", None),
        ("hf_finetune.distributed", None),
        ("hf_finetune.lora", None),
        (TASK_MODULE, "TextClassification.model_for_training"),
        (TASK_MODULE, "TextClassification.training_parts"),
    ],
    "evaluate": [
        (TASK_MODULE, "TextClassification.evaluate"),
        ("hf_finetune.tasks.text_classification.evaluation", None),
    ],
    "log_model": [(TASK_MODULE, "TextClassification.example"), ("hf_finetune.save_modes", None)],
    "register": [
        ("hf_finetune.registry.gate", None),
        (TASK_MODULE, "TextClassification.gate_floor"),
        (TASK_MODULE, "TextClassification.compare"),
    ],
    "persist": [
        ("hf_finetune.registry.gate", None),
        (TASK_MODULE, "TextClassification.gate_floor"),
        (TASK_MODULE, "TextClassification.compare"),
        (TASK_MODULE, "TextClassification.merge_verified"),
    ],
    "version_cleanup": [("hf_finetune.registry.history", None)],
    "rollback": [("hf_finetune.registry.history", None)],  # gate.rolled_back takes tags, not the config
    "predict": [
        ("hf_finetune.scoring", None),
        ("hf_finetune.spark", None),
        ("hf_finetune.filesystems", None),
        (TASK_MODULE, "TextClassification.scorer"),
    ],
}


def source_of(module: str, qualified: str | None) -> str:
    """A module's source, or one function's or method's (``Class.method``)."""
    import ast

    from hf_finetune import cache

    source = cache.module_source(module)
    if qualified is None:
        return source
    nodes: list[ast.AST] = list(ast.parse(source).body)
    for part in qualified.split("."):
        found = [n for n in nodes if getattr(n, "name", None) == part]
        assert found, f"{module} has no {qualified}"
        nodes = list(getattr(found[0], "body", []))
        node = found[0]
    return ast.get_source_segment(source, node) or ""


def test_every_setting_a_steps_code_reads_is_declared_for_that_step() -> None:
    """The cache key and the command line of a step come from the declarations: a ``cfg.<name>``
    that a step's code reads without a declaration would be missing from both, and a changed
    setting would reuse a stale run. The step's own module, and the library code it hands its
    config to."""
    from hf_finetune import cache, chain

    assert set(STEP_CODE) == {*chain.STEPS, *chain.BESIDE} - {chain.SWEEP}  # a sweep, like main, reads all
    for step, parts in STEP_CODE.items():
        sources = [cache.module_source(f"steps.{step}")] + [source_of(m, q) for m, q in parts]
        read = set().union(*(cache.fields_read(source) for source in sources))
        assert read <= cache.step_fields(step), (step, read - cache.step_fields(step))


def test_settings_read_through_a_tasks_own_view_are_seen() -> None:
    from hf_finetune import cache

    assert cache.fields_read("def f(cfg):\n    return own(cfg).positive_label + cfg.seed\n") == {
        "positive_label",
        "seed",
    }


def test_every_entry_point_prints_its_help(capsys) -> None:
    """``--help`` of every entry point prints every setting it takes (argparse %-formats help text,
    so a bare ``%`` in a setting's help, as in ``champion_tolerance``'s, would crash it)."""
    declared = driver.declared_parameters()
    for name, params in declared.items():
        module = importlib.import_module(f"steps.{name}")
        with pytest.raises(SystemExit) as done:
            module.main(["--help"])
        assert done.value.code == 0, name
        shown = capsys.readouterr().out
        for param in params:
            assert f"--{param}" in shown, (name, param)
