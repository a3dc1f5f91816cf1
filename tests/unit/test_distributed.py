"""finetune under torchrun: several processes (DDP, gloo on CPU), one MLflow run written by rank 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hf_finetune import distributed, training
from hf_finetune.profiles import load_config
from tests.conftest import PROJECT_DIR


def test_one_process_when_torchrun_set_nothing() -> None:
    assert distributed.world_from_env({}) == distributed.World(rank=0, size=1)
    world = distributed.world_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.is_main) == (1, 2, False)


def test_relaunch_runs_this_step_under_torchrun_with_the_same_arguments() -> None:
    command = distributed.torchrun_command(2, ["--profile", "smoke", "--tokenize_run_id", "abc"])
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in command and "--standalone" in command
    assert command[-6:] == ["-m", "steps.finetune", "--profile", "smoke", "--tokenize_run_id", "abc"]


def test_every_rank_of_one_launch_agrees_on_the_trainer_folder(tmp_path: Path) -> None:
    launch = {"TORCHELASTIC_RUN_ID": "x1", "MASTER_PORT": "29500"}
    assert distributed.shared_output_dir(launch | {"RANK": "0"}, "run") == distributed.shared_output_dir(
        launch | {"RANK": "1"}, "run"
    )
    other_launch = distributed.shared_output_dir({"TORCHELASTIC_RUN_ID": "x2", "MASTER_PORT": "29500"}, "run")
    assert other_launch != distributed.shared_output_dir(launch, "run")
    given = {distributed.SHARED_DIR_ENV: str(tmp_path)}
    assert distributed.shared_output_dir(given, "run") == tmp_path


def test_distributed_training_arguments_use_gloo_on_cpu_and_plain_mean_loss() -> None:
    cfg = load_config("smoke")
    one = training.training_arguments(cfg, "cpu", "out")
    assert "ddp_backend" not in one
    two = training.training_arguments(cfg, "cpu", "out", distributed.World(rank=0, size=2))
    assert two["ddp_backend"] == "gloo"
    assert two["average_tokens_across_devices"] is False  # else the loss is doubled on 2 ranks
    assert training.training_arguments(cfg, "cuda", "out", distributed.World(0, 2))["ddp_backend"] is None


def test_bad_upstream_fails_in_one_line_before_any_training_process_starts() -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "steps.finetune", "--profile", "smoke", "--nproc_per_node", "2"),
            *("--tokenize_run_id", "0123456789abcdef0123456789abcdef"),
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("finetune: error: run ")
    assert "starting 2 training processes" not in done.stdout
