"""Artifact storage: downloading a run's artifacts, logging folders by hard link, and each step's
way in to the outputs of the steps above it, read through the MLflow API.

No step reads another's local files, and no step imports another step: what one step needs of
another's output is here. Into and out of a local artifact store files are hard-linked, not
copied, wherever the reader only reads them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from hf_finetune import artifacts
from hf_finetune.chain import CHECKPOINT_DIR, LABEL_MAP_FILE, SPLITS, TOKENIZED_DIR
from hf_finetune.errors import UserError
from hf_finetune.files import link_or_copy, link_tree
from hf_finetune.tags import EPOCH_CHECKPOINTS_TAG


def download(run_id: str, artifact_path: str, dst: Path, link: bool = False) -> Path:
    """Download one artifact (file or folder) of ``run_id`` into ``dst`` and return its path.

    ``link``: from a local artifact store, hard-link the files instead of copying them (no bytes
    written). Only for a caller that reads them and never writes into them: a link is the same
    file as the stored artifact.
    """
    import mlflow

    dst.mkdir(parents=True, exist_ok=True)
    stored = local_artifact_dir(mlflow.MlflowClient().get_run(run_id).info.artifact_uri) if link else None
    if stored is not None and (stored / artifact_path).exists():
        source, target = stored / artifact_path, dst / Path(artifact_path).name
        if source.is_dir():
            link_tree(str(source), str(target))
        else:
            link_or_copy(str(source), str(target))
        return target
    return Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst))
    )


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The folder behind ``artifact_uri`` when it is in a local artifact store, else None."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    repo = get_artifact_repository(artifact_uri)
    return Path(repo.artifact_dir) if isinstance(repo, LocalArtifactRepository) else None


def log_artifacts_linked(local_dir: Path, artifact_path: str) -> None:
    """``mlflow.log_artifacts`` for files that are never changed in place after this (checkpoints
    the Trainer or ``save_pretrained`` just wrote): into a local artifact store they are
    hard-linked, not copied (hundreds of MB per epoch, measured: ~3 % of a CPU epoch)."""
    import mlflow

    from hf_finetune import compat

    with compat.uploads_linked():
        mlflow.log_artifacts(str(local_dir), artifact_path)


def read_tokenized(run_id: str, dst: Path) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Downstream steps' way in: the tokenized splits and the label mapping of a tokenize run."""
    folder = artifacts.download(run_id, TOKENIZED_DIR, dst)
    frames = {name: pd.read_parquet(folder / f"{name}.parquet") for name in SPLITS}
    return frames, json.loads((folder / LABEL_MAP_FILE).read_text())


def id2label_of(run: Any) -> dict[int, str]:
    """A tokenize run's label ids -> labels, from its ``label2id`` param (no download)."""
    return {i: label for label, i in json.loads(run.data.params["label2id"]).items()}


def download_checkpoint(run_id: str, dst: Path, path: str = CHECKPOINT_DIR) -> Path:
    """Downstream steps' way in: a model folder of a finetune run (by default the best model).

    Hard links from a local store: every caller only reads the folder (evaluate loads it,
    log_model logs or merges it into another folder), and 1 GB is not copied to be read."""
    return artifacts.download(run_id, path, dst, link=True)


def checkpoint_path(tags: Mapping[str, str], run_id: str, epoch: int) -> str:
    """Where epoch ``epoch``'s model is in the finetune run's artifacts (0: the best model)."""
    if epoch == 0:
        return CHECKPOINT_DIR
    logged = {int(k): v for k, v in json.loads(tags.get(EPOCH_CHECKPOINTS_TAG, "{}")).items()}
    if epoch not in logged:
        have = ", ".join(map(str, sorted(logged))) or "none"
        raise UserError(
            f"checkpoint_epoch={epoch} was not logged by finetune run {run_id} (logged epochs: "
            f"{have}): pick one of those, or fine-tune with epoch_checkpoints all"
        )
    return logged[epoch]
