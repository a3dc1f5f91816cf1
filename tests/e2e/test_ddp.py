"""finetune under torchrun with 2 CPU processes (DDP, gloo): one MLflow run, written by rank 0."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import PROJECT_DIR
from tests.recorded import artifact_paths, child_runs

pytestmark = pytest.mark.slow


def test_two_process_cpu_ddp_finetune_logs_one_run_from_rank_zero(pipeline: str) -> None:
    tokenize_id = child_runs(pipeline)["tokenize"].info.run_id
    client = mlflow.MlflowClient()
    experiment = client.get_run(tokenize_id).info.experiment_id
    before = {r.info.run_id for r in client.search_runs([experiment], "tags.`pipeline.step` = 'finetune'")}
    bin_dir = os.path.dirname(sys.executable)
    done = subprocess.run(
        [
            *(os.path.join(bin_dir, "mlflow"), "run", str(PROJECT_DIR), "--env-manager", "local"),
            *("-e", "finetune", "--experiment-id", experiment, "-P", "profile=smoke"),
            *("-P", f"tokenize_run_id={tokenize_id}", "-P", "nproc_per_node=2", "-P", "max_steps=6"),
        ],
        capture_output=True,
        text=True,
        env=os.environ | {"PATH": bin_dir + os.pathsep + os.environ["PATH"]},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "starting 2 training processes" in done.stdout
    after = client.search_runs([experiment], "tags.`pipeline.step` = 'finetune'")
    new = [r for r in after if r.info.run_id not in before]
    assert len(new) == 1, "exactly one run: only rank 0 talks to MLflow"
    run = new[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    assert run.data.params["nproc_per_node"] == "2"
    # 6 optimizer steps of 2 x 16 rows: 192 rows seen, on 240 training rows of the smoke data
    assert run.data.metrics["steps_trained_here"] == 6
    history = client.get_metric_history(run.info.run_id, "val_f1")
    assert len(history) == 1, "one evaluation, logged once (not once per rank)"
    assert 0.0 < run.data.metrics["val_loss"] < 1.0  # a 2-class loss, not multiplied by the ranks
    assert {"checkpoint/model.safetensors", "checkpoint/config.json"} <= artifact_paths(run.info.run_id)
