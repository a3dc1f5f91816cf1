"""A step's way in to the artifacts of the steps above it, read through the MLflow API.

No step reads another's local files, and no step imports another step: what one step needs of
another's output is here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from steps import common
from steps.chain import CHECKPOINT_DIR, LABEL_MAP_FILE, SPLITS, TOKENIZED_DIR
from steps.errors import UserError
from steps.tags import EPOCH_CHECKPOINTS_TAG


def read_tokenized(run_id: str, dst: Path) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Downstream steps' way in: the tokenized splits and the label mapping of a tokenize run."""
    folder = common.download(run_id, TOKENIZED_DIR, dst)
    frames = {name: pd.read_parquet(folder / f"{name}.parquet") for name in SPLITS}
    return frames, json.loads((folder / LABEL_MAP_FILE).read_text())


def id2label_of(run: Any) -> dict[int, str]:
    """A tokenize run's label ids -> labels, from its ``label2id`` param (no download)."""
    return {i: label for label, i in json.loads(run.data.params["label2id"]).items()}


def download_checkpoint(run_id: str, dst: Path, path: str = CHECKPOINT_DIR) -> Path:
    """Downstream steps' way in: a model folder of a finetune run (by default the best model).

    Hard links from a local store: every caller only reads the folder (evaluate loads it,
    log_model logs or merges it into another folder), and 1 GB is not copied to be read."""
    return common.download(run_id, path, dst, link=True)


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
