"""Finetune's checkpoints in MLflow: each epoch's, the resumable Trainer state, and a resume.

Each epoch's full Trainer state is logged as it is saved (replacing the one before), so that a
killed run can be resumed by a new one; each epoch's model files too, with ``epoch_checkpoints:
all``. Once the run has finished, the Trainer state goes (unless ``keep_trainer_state``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hf_finetune import artifacts, chain, files, tracking
from hf_finetune.chain import EPOCHS_DIR, RESUME_DIR
from hf_finetune.errors import UserError
from hf_finetune.tags import LAST_CHECKPOINT_TAG, STEP_TAG
from hf_finetune.training import epoch_number, mlflow_metric_names, model_files


def _callbacks(run_id: str) -> list[Any]:
    from transformers import TrainerCallback

    class MlflowEpochMetrics(TrainerCallback):
        """Log the Trainer's per-epoch losses and validation metrics to the active run."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            import mlflow

            metrics = mlflow_metric_names(logs or {})
            if metrics and state.is_world_process_zero:
                mlflow.log_metrics(metrics, step=state.global_step)

    class MlflowResumableCheckpoints(TrainerCallback):
        """Log each epoch's full Trainer checkpoint to the run, replacing the one before it.

        If the process dies (killed, out of memory, machine lost), ``main`` finds this run and a
        new finetune resumes from the last checkpoint here instead of starting over.
        """

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            import mlflow

            if not state.is_world_process_zero:
                return
            name = f"checkpoint-{state.global_step}"
            artifacts.log_artifacts_linked(Path(args.output_dir) / name, f"{RESUME_DIR}/{name}")
            mlflow.set_tag(LAST_CHECKPOINT_TAG, name)  # only once every file is up
            tracking.kill_point("finetune.checkpoint_logged")
            best = Path(state.best_model_checkpoint or name).name  # early stopping needs it too
            _delete_older_checkpoints(run_id, keep={name, best})

    return [MlflowEpochMetrics(), MlflowResumableCheckpoints()]


class EpochCheckpoints:
    """Which epoch each Trainer checkpoint closes; with ``log_each``, each epoch's model files
    are logged to ``epochs/epoch-<n>/`` of the run as the epoch ends (model files only: no
    optimizer state, so an epoch costs the model's size)."""

    def __init__(self, log_each: bool) -> None:
        self.log_each = log_each
        self.epoch_of_step: dict[int, int] = {}
        self.logged: dict[int, str] = {}

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class MlflowEpochCheckpoints(TrainerCallback):
            def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if state.is_world_process_zero:
                    outer.saved(Path(args.output_dir) / f"checkpoint-{state.global_step}", state)

        return MlflowEpochCheckpoints()

    def saved(self, folder: Path, state: Any) -> None:
        epoch = epoch_number(state.epoch)
        self.epoch_of_step[state.global_step] = epoch
        if self.log_each:
            path = f"{EPOCHS_DIR}/epoch-{epoch}"
            with tempfile.TemporaryDirectory(prefix="epoch-") as staging:
                for file in model_files(folder):
                    files.link_or_copy(str(file), str(Path(staging) / file.name))
                artifacts.log_artifacts_linked(Path(staging), path)
            self.logged[epoch] = path

    def best_epoch(self, state: Any) -> int:
        """The epoch of the checkpoint the Trainer kept as best (the last one, without eval)."""
        name = state.best_model_checkpoint
        step = int(Path(name).name.split("-")[1]) if name else state.global_step
        return self.epoch_of_step.get(step, epoch_number(state.epoch))


def _delete_older_checkpoints(run_id: str, keep: set[str]) -> None:
    """Free the store of superseded checkpoints, where the artifact store can delete."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(mlflow.get_run(run_id).info.artifact_uri)
    for info in repo.list_artifacts(RESUME_DIR):
        if info.is_dir and info.path.rsplit("/", 1)[-1] not in keep:
            try:
                repo.delete_artifacts(info.path)
            except (NotImplementedError, AttributeError):
                return  # this store keeps them all; they cost disk, not correctness


def drop_trainer_state(run_id: str) -> bool:
    """Delete a finished run's resumable Trainer state (the tag that points at it first, so no
    reader is sent to files that are going); False where the store cannot delete."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    if LAST_CHECKPOINT_TAG in run.data.tags:  # a resumed run with no step left saved nothing
        client.delete_tag(run_id, LAST_CHECKPOINT_TAG)
    repo = get_artifact_repository(run.info.artifact_uri)
    try:
        if not repo.list_artifacts(RESUME_DIR):
            return True
        repo.delete_artifacts(RESUME_DIR)
    except (NotImplementedError, AttributeError):
        return False
    return True


def prepare_resume(resume_run_id: str, work_dir: Path, copy_history: bool = True) -> tuple[Path, int]:
    """Download the checkpoints a killed finetune run logged, and copy its metric history.

    They land in ``work_dir/trainer_checkpoints``, this run's Trainer output folder, and the
    last one's record of the best checkpoint is pointed there, so early stopping and
    ``load_best_model_at_end`` carry on as if the run had never stopped.

    The copied history (up to the checkpoint's step) and the resumed training, which carries on
    counting steps from the checkpoint, make one continuous curve in this run.
    """
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    try:
        old = client.get_run(resume_run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"--resume_run_id {resume_run_id!r} does not exist") from None
    if old.data.tags.get(STEP_TAG) != chain.FINETUNE:
        raise UserError(f"--resume_run_id {resume_run_id} is not a finetune run")
    latest = old.data.tags.get(LAST_CHECKPOINT_TAG)  # set after its upload completed
    if latest is None:
        raise UserError(
            f"finetune run {resume_run_id} logged no checkpoint to resume from: "
            "run finetune without --resume_run_id"
        )
    step = int(latest.split("-")[1])
    folder = artifacts.download(resume_run_id, RESUME_DIR, work_dir) / latest
    state_file = folder / "trainer_state.json"
    state = json.loads(state_file.read_text())
    if state.get("best_model_checkpoint"):
        state["best_model_checkpoint"] = str(folder.parent / Path(state["best_model_checkpoint"]).name)
        state_file.write_text(json.dumps(state))
    if not copy_history:  # a rank other than 0: the checkpoint, not the record
        return folder, step
    history = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in old.data.metrics
        for m in client.get_metric_history(resume_run_id, key)
        if m.step <= step
    ]
    active = mlflow.active_run()
    assert active is not None
    for start in range(0, len(history), 500):
        client.log_batch(active.info.run_id, metrics=history[start : start + 500])
    return folder, step
