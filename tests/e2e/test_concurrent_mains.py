"""Two whole ``main`` pipelines at once on one SQLite store: both versions registered, the gate held.

(tests/e2e/test_server_pipelines.py races two pipelines through a tracking server on PostgreSQL.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import PROJECT_DIR, isolated_env
from tests.recorded import assert_both_registered_and_the_gate_held

pytestmark = pytest.mark.slow


def start_main(root: Path, tracking_uri: str, *args: str) -> subprocess.Popen[str]:
    env = (
        os.environ
        | isolated_env(root)
        | {"PYTHONPATH": str(PROJECT_DIR), "MLFLOW_TRACKING_URI": tracking_uri}
    )
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return subprocess.Popen(
        [sys.executable, "-m", "steps.main", "--profile", "smoke", "--registered_model", "race-spam", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_mains_at_once_register_both_and_the_gate_holds(
    monkeypatch: pytest.MonkeyPatch, smoke_main_run: tuple[Path, str]
) -> None:
    """On the session's SQLite smoke store, in use: one main reuses its steps, the other trains.
    (tests/e2e/test_server_pipelines.py races two mains through a tracking server on PostgreSQL.)"""
    root = smoke_main_run[0]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # two configurations (so two fine-tunes): each version is judged against the champion of its
    # moment, as if they had run one after the other
    mains = [start_main(root, uri), start_main(root, uri, "--learning_rate", "1e-3")]
    outputs = [p.communicate(timeout=900)[0] for p in mains]
    for process, output in zip(mains, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
    main_ids = [re.findall(r"^main: finished run (\w+)$", out, re.MULTILINE)[-1] for out in outputs]
    assert_both_registered_and_the_gate_held(mlflow.MlflowClient(), "race-spam", main_ids)
