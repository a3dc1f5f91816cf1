"""Training on several processes (DDP): this process's place, and the relaunch under ``torchrun``.

With ``nproc_per_node`` > 1 ``finetune`` starts itself again under ``torchrun``, one process per
device; only rank 0 has an MLflow run and writes artifacts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from hf_finetune import chain, logs, tracking
from hf_finetune.config import Config

log = logs.logger(chain.FINETUNE)
SHARED_DIR_ENV = "PIPELINE_FINETUNE_SHARED_DIR"  # set by the relaunch: the ranks' common folder


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env(env: Mapping[str, str]) -> World:
    """What ``torchrun`` told this process (``RANK``, ``WORLD_SIZE``); nothing means one process."""
    return World(rank=int(env.get("RANK", "0")), size=int(env.get("WORLD_SIZE", "1")))


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """This step again, under torchrun on this machine, with the same arguments."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "steps.finetune",
        *argv,
    ]


def shared_output_dir(env: Mapping[str, str], upstream_run_id: str) -> Path:
    """The Trainer's output folder, the same for every rank of one launch.

    Rank 0 writes the epoch checkpoints and every rank reads the best one back at the end
    (``load_best_model_at_end``), so the ranks must agree on the folder without talking first.
    """
    if env.get(SHARED_DIR_ENV):
        return Path(env[SHARED_DIR_ENV])
    launch = f"{env.get('TORCHELASTIC_RUN_ID', 'none')}-{env.get('MASTER_PORT', '0')}"
    return Path(tempfile.gettempdir()) / f"finetune-{upstream_run_id}-{launch}"


@contextlib.contextmanager
def rank_run(
    world: World, profile: str, cfg: Config, upstream_run_id: str
) -> Iterator[tuple[str | None, Path]]:
    """Rank 0: the step's MLflow run. Other ranks: no run at all, only a scratch folder."""
    if world.is_main:
        interval = cfg.system_metrics_interval_s if cfg.system_metrics else None
        with tracking.step_run(chain.FINETUNE, profile, cfg, upstream_run_id, interval) as (run_id, tmp):
            yield run_id, tmp
        return
    os.environ.pop("MLFLOW_RUN_ID", None)  # rank 0's run: only rank 0 writes to it
    with tempfile.TemporaryDirectory(prefix=f"{chain.FINETUNE}-rank{world.rank}-") as tmp:
        yield None, Path(tmp)


def relaunch(nproc: int, argv: list[str]) -> int:
    """Start this step under torchrun with ``nproc`` processes; their exit status is ours."""
    with tempfile.TemporaryDirectory(prefix=f"{chain.FINETUNE}-ddp-") as shared:
        env = {**os.environ, SHARED_DIR_ENV: shared}
        log.info(f"starting {nproc} training processes (torchrun, DDP)")
        return subprocess.run(torchrun_command(nproc, argv), env=env, check=False).returncode
