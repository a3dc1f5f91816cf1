"""Each test gets its own tracking store, artifact root, Hugging Face caches and temporary
folder (``TMPDIR``), all offline, all under the test's ``tmp_path``.

Nothing touches the user's ``mlflow.db``, ``mlruns/``, ``~/.cache/huggingface`` or ``/tmp``: what
a step leaves behind (a process killed on purpose keeps its temporary copies of a model; MLflow's
``mlflow run`` makes a download folder it never removes) goes with the test's folder, which pytest
deletes as soon as the test passes (``tmp_path_retention_policy = "failed"`` in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent

# pytest-xdist's workers run under a __main__ module with neither __spec__ nor __file__, which
# pyspark.sql.connect takes for a doctest run and answers with sys.exit(0) at import; MLflow
# imports it whenever pyspark is installed (mlflow.types.utils._is_spark_df). Name the module.
_main = sys.modules["__main__"]
if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = "<pytest-xdist worker>"


def isolated_env(root: Path) -> dict[str, str]:
    """Environment variables that point MLflow, Hugging Face and temporary files into ``root``,
    offline (``root / "t"``, the temporary folder, is made here)."""
    (root / "t").mkdir(parents=True, exist_ok=True)
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
        "HF_DATASETS_CACHE": str(root / "hf" / "datasets"),
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
        "TMPDIR": str(root / "t"),  # short: a Unix socket's path must fit in 108 bytes
    }


def point_hub_cache(root: Path, mp: pytest.MonkeyPatch) -> None:
    """huggingface_hub reads ``HF_HOME`` once, at import, and ``tempfile`` reads ``TMPDIR`` once,
    at first use: point both at ``root`` as the environment now says, as a fresh process would
    (in-process steps of another store would otherwise use the hub cache and temporary folder of
    whichever test came first)."""
    import huggingface_hub.constants as hub_constants

    mp.setattr(tempfile, "tempdir", str(root / "t"))
    mp.setattr(hub_constants, "HF_HOME", str(root / "hf"))
    mp.setattr(hub_constants, "HF_HUB_CACHE", str(root / "hf" / "hub"))
    mp.setattr(hub_constants, "HUGGINGFACE_HUB_CACHE", str(root / "hf" / "hub"))


# The longest test files, longest first: they start first, so that with two xdist workers (each
# takes whole files in order) no long file is left to run alone at the end of tests/unit.
LONGEST_FIRST = (
    "e2e/test_lora.py",
    "e2e/test_benchmarks.py",
    "e2e/test_driver.py",
    "e2e/test_server_pipelines.py",
    "e2e/test_lifecycle.py",
    "unit/test_server.py",
    "unit/test_concurrency.py",
    "unit/test_predict.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest files first (see ``LONGEST_FIRST``); skip ``cuda`` / ``mps`` tests where torch
    sees no such device (CI has neither)."""
    import torch

    def rank(item: pytest.Item) -> int:
        path = item.path.as_posix()
        return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith(name)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order

    present = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    for item in items:
        for name, here in present.items():
            if item.get_closest_marker(name) and not here:
                item.add_marker(pytest.mark.skip(reason=f"needs a {name} device; torch sees none"))


# The suite writes a few GB at its peak (models, checkpoints, stores) under pytest's base folder.
# On a machine whose disk others share, a failure that starts with "no space left" says more
# with the free space beside it: the header gives it at the start, the summary its lowest point.
LOWEST_FREE: dict[str, Any] = {"mb": None, "before": ""}


def free_mb(path: str | Path) -> int:
    return shutil.disk_usage(path).free // 2**20


def pytest_report_header(config: pytest.Config) -> str:
    where = tempfile.gettempdir()
    return f"free disk where the tests write ({where}): {free_mb(where)} MB"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if LOWEST_FREE["mb"] is not None:
        lowest, before = LOWEST_FREE["mb"], LOWEST_FREE["before"]
        terminalreporter.write_line(f"lowest free disk seen at a test's start: {lowest} MB (before {before})")


@pytest.fixture(autouse=True)
def tracking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """A fresh store per test; ``./mlruns`` (the artifact root) lands in the test's tmp dir."""
    import mlflow

    free = free_mb(tmp_path)
    if LOWEST_FREE["mb"] is None or free < LOWEST_FREE["mb"]:
        LOWEST_FREE.update(mb=free, before=request.node.nodeid)

    for key, value in isolated_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    point_hub_cache(tmp_path, monkeypatch)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


def main_in_store(root: Path, argv: list[str]) -> str:
    """``main`` run in-process against a fresh store under ``root``; the main run's ID."""
    import mlflow

    from steps import main as main_step

    with pytest.MonkeyPatch.context() as mp:
        for key, value in isolated_env(root).items():
            mp.setenv(key, value)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.chdir(root)
        point_hub_cache(root, mp)
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        assert main_step.main(argv) == 0
        client = mlflow.MlflowClient()
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "tags.`pipeline.step` = 'main'"
        )
    assert len(runs) == 1
    return str(runs[0].info.run_id)


def use_store(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this test at the store under ``root`` (made by ``main_in_store``)."""
    import mlflow

    for key, value in isolated_env(root).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(root)
    point_hub_cache(root, monkeypatch)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


@contextlib.contextmanager
def deleted_unless_a_test_failed(request: pytest.FixtureRequest, root: Path) -> Iterator[Path]:
    """``root``, a module's shared store, deleted when the module's tests are done, unless one
    of them failed (then kept to look at, as pytest keeps a failed test's ``tmp_path``)."""
    failed_before = request.session.testsfailed
    yield root
    if request.session.testsfailed == failed_before:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_main_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``main`` on the smoke profile, run once in-process for the whole session: (store, run ID).

    Many tests read what it recorded. Tests that change the registry use their own registered
    model names, so they never disturb what the others read.
    """
    root = tmp_path_factory.mktemp("smoke-store")
    return root, main_in_store(root, ["--profile", "smoke"])


@pytest.fixture
def pipeline(smoke_main_run: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Point this test at the session's smoke store; return the main run's ID."""
    root, run_id = smoke_main_run
    use_store(root, monkeypatch)
    return run_id
