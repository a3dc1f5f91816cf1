"""Each test gets its own tracking store, artifact root and Hugging Face caches, all offline.

Nothing touches the user's ``mlflow.db``, ``mlruns/`` or ``~/.cache/huggingface``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent


def isolated_env(root: Path) -> dict[str, str]:
    """Environment variables that point MLflow and Hugging Face into ``root`` and offline."""
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
        "HF_DATASETS_CACHE": str(root / "hf" / "datasets"),
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    }


def point_hub_cache(root: Path, mp: pytest.MonkeyPatch) -> None:
    """huggingface_hub reads ``HF_HOME`` once, at import: point its cache at ``root`` as the
    environment now says, as a fresh process would (in-process steps of another store would
    otherwise look in the hub cache of whichever test imported it first)."""
    import huggingface_hub.constants as hub_constants

    mp.setattr(hub_constants, "HF_HOME", str(root / "hf"))
    mp.setattr(hub_constants, "HF_HUB_CACHE", str(root / "hf" / "hub"))
    mp.setattr(hub_constants, "HUGGINGFACE_HUB_CACHE", str(root / "hf" / "hub"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``cuda`` / ``mps`` tests where torch sees no such device (CI has neither)."""
    import torch

    present = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    for item in items:
        for name, here in present.items():
            if item.get_closest_marker(name) and not here:
                item.add_marker(pytest.mark.skip(reason=f"needs a {name} device; torch sees none"))


@pytest.fixture(autouse=True)
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh store per test; ``./mlruns`` (the artifact root) lands in the test's tmp dir."""
    import mlflow

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
