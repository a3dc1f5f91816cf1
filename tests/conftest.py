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
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One store shared by a module's tests, for an expensive run that many tests read."""
    import mlflow

    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in isolated_env(root).items():
            mp.setenv(key, value)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.chdir(root)
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        yield root
