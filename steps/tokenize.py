"""tokenize: the prepare splits -> token ids with the base model's own tokenizer.

Reads: ``--prepare_run_id``; that run's ``splits/*.parquet``.
Writes:
- artifacts ``tokenized/{train,validation,test}.parquet`` (``text``, ``label``, ``label_id``,
  ``input_ids``, ``attention_mask``), and ``tokenized/label_map.json`` (``label2id``);
- tags ``base_model``, ``base_model_revision`` (hub commit, or the sha1 of a local folder's files)
  and ``base_model_revision_source`` (``hub-commit`` or ``content-sha1``),
  ``data_digest`` (carried from prepare);
- metrics per split: mean tokens per text and the share truncated at ``max_length``, and the
  rows left out (``<split>_rows_dropped``: text-generation drops a row whose completion and EOS
  alone do not fit ``max_length``; a long prompt is cut from its start instead, never the
  completion).

Text-generation: ``tokenized/*.parquet`` hold ``prompt``, ``completion`` (as it follows the
prompt), ``prompt_text`` (``prompt_template`` applied), ``input_ids`` (formatted prompt, with the
tokenizer's special tokens, then the completion and EOS), ``attention_mask``, ``completion_start``
and ``completion_bytes``; the tokenizer gets an EOS (a BERT tokenizer's ``[SEP]``) and a pad
token where it has none; tag ``prompt_template``, carried down to the registered version.

No padding here: finetune pads each batch to its own longest text, which is far cheaper than
padding every text to ``max_length``.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from hf_finetune import artifacts, chain, cli, hub, tracking
from hf_finetune.chain import LABEL_MAP_FILE, SPLITS, SPLITS_DIR, TOKENIZED_DIR
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.tags import BASE_MODEL_TAG, BASE_REVISION_SOURCE_TAG, BASE_REVISION_TAG, DATA_DIGEST_TAG
from hf_finetune.tasks import registry
from hf_finetune.tasks.base import Task

STEP = chain.TOKENIZE
UPSTREAM = chain.upstream_param(STEP)


# ----------------------------------------------------------------------------- pure functions
def length_metrics(name: str, tokenized: pd.DataFrame, max_length: int) -> dict[str, float]:
    lengths = tokenized["input_ids"].map(len)
    return {
        f"{name}_mean_tokens": round(float(lengths.mean()), 3),
        f"{name}_truncated_share": round(float((lengths >= max_length).mean()), 6),
    }


# ----------------------------------------------------------------------------- MLflow
def load_tokenizer(base_model: str, task: Task) -> tuple[Any, str, tuple[str, str]]:
    """The tokenizer (as the task uses it), the resolved location, and the revision actually
    loaded with its source."""
    from transformers import AutoConfig, AutoTokenizer

    resolved = hub.resolve_base_model(base_model)
    try:
        tokenizer = task.prepare_tokenizer(AutoTokenizer.from_pretrained(resolved))
        config = AutoConfig.from_pretrained(resolved)
    except OSError as exc:
        raise hub.load_model_error(base_model, exc) from None
    return tokenizer, resolved, hub.base_model_revision(resolved, config)


def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    import mlflow

    task = registry.task_of(cfg)
    upstream = tracking.get_upstream(upstream_run_id, chain.PREPARE, UPSTREAM, cfg.task)
    tokenizer, _, (revision, revision_source) = load_tokenizer(cfg.base_model, task)

    with tracking.step_run(STEP, profile, cfg, upstream.info.run_id) as (run_id, tmp):
        splits_dir = artifacts.download(upstream.info.run_id, SPLITS_DIR, tmp / "in")
        frames = {name: pd.read_parquet(splits_dir / f"{name}.parquet") for name in SPLITS}
        label2id = task.label_mapping(frames)
        out = tmp / TOKENIZED_DIR
        out.mkdir()
        for name, frame in frames.items():
            tokenized = task.encode(frame, tokenizer, cfg, label2id)
            if tokenized.empty:
                raise UserError(f"no {name} row fits max_length {cfg.max_length} tokens: raise --max_length")
            tokenized.to_parquet(out / f"{name}.parquet", index=False)
            mlflow.log_metrics(length_metrics(name, tokenized, cfg.max_length))
            mlflow.log_metric(f"{name}_rows_dropped", float(len(frame) - len(tokenized)))
        (out / LABEL_MAP_FILE).write_text(json.dumps(label2id, indent=2))
        mlflow.log_artifacts(str(out), TOKENIZED_DIR)
        mlflow.set_tags(
            {
                BASE_MODEL_TAG: cfg.base_model,
                BASE_REVISION_TAG: revision,
                BASE_REVISION_SOURCE_TAG: revision_source,
                DATA_DIGEST_TAG: upstream.data.tags.get(DATA_DIGEST_TAG, ""),
                **task.lineage(cfg),
            }
        )
        mlflow.log_param("label2id", json.dumps(label2id))
        return run_id


def main(argv: list[str] | None = None) -> int:
    return cli.step_main(STEP, __doc__, UPSTREAM, run, argv)


if __name__ == "__main__":
    cli.exit_quickly(main())
