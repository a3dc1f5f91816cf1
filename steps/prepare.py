"""prepare: raw data -> cleaned, stratified train/validation/test parquet splits.

Reads: ``data`` (a csv, tsv, json, jsonl or parquet file, or a Hugging Face hub dataset id),
with the ``text_column`` and ``label_column`` it names (``task`` text-generation: the
``prompt_column`` and ``completion_column``; it checks ``prompt_template``). A csv or tsv file
without a header row is read with ``data_columns`` as its column names (the bundled UCI file:
``label,text``). A tsv file has no quoting (the format has none): a ``"`` is part of the text.
Writes:
- artifacts ``splits/{train,validation,test}.parquet`` (columns ``text``, ``label``; labels are
  strings; text-generation: ``prompt``, ``completion``, split at random unless the completions are
  a few labels, each on 20 rows or more) and ``splits/stats.json``;
- one ``mlflow.log_input`` per split (context = split name, with MLflow's dataset digest);
- metrics: rows read and dropped (empty, duplicate, missing label), rows per split, class share
  per split; tag ``data_digest`` (sha256 of the cleaned rows, independent of the file format),
  ``data_source`` (``data`` as given, any password in a URI masked) and, where the data file has a
  ``dataset.yaml`` beside it, ``pipeline.data_card`` (its name, source, licence, period, limits:
  the model card shows them).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from pathlib import Path

from hf_finetune import chain, cli, logs, tracking, uris
from hf_finetune.chain import SPLITS_DIR, STATS_FILE
from hf_finetune.config import Config
from hf_finetune.corpus import data_digest, prepared, split_metrics, stratified_by
from hf_finetune.sources import dataset_card
from hf_finetune.tags import DATA_CARD_TAG, DATA_DIGEST_TAG, DATA_SOURCE_TAG
from hf_finetune.tasks import registry

STEP = chain.PREPARE
log = logs.logger(STEP)


# ----------------------------------------------------------------------------- MLflow
def run(cfg: Config, profile: str) -> str:
    import mlflow

    task = registry.task_of(cfg)
    cleaned, stats, splits = prepared(cfg, task)
    digest = data_digest(cleaned, task.digest_columns())
    stratified = stratified_by(cleaned)

    with tracking.step_run(STEP, profile, cfg) as (run_id, tmp):
        mlflow.set_tag(DATA_DIGEST_TAG, digest)
        mlflow.set_tag(DATA_SOURCE_TAG, uris.redact(cfg.data))
        described = dataset_card(cfg.data)
        if described:
            mlflow.set_tag(DATA_CARD_TAG, json.dumps(described))
        mlflow.log_metrics({k: float(v) for k, v in dataclasses.asdict(stats).items()})
        mlflow.log_metrics(split_metrics(splits, stratified))
        out = tmp / SPLITS_DIR
        out.mkdir()
        for name, part in splits.items():
            part.to_parquet(out / f"{name}.parquet", index=False)
            with warnings.catch_warnings():  # "source can be interpreted in multiple ways"
                warnings.simplefilter("ignore", UserWarning)
                dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]
                    part, source=cfg.data, targets=task.target, name=f"{Path(cfg.data).stem}-{name}"
                )
            tracking.retry_lost_insert_race(functools.partial(mlflow.log_input, dataset, context=name))
        summary = {
            "data_digest": digest,
            "labels": sorted(cleaned[stratified].unique()) if stratified else [],
            "cleaning": dataclasses.asdict(stats),
            **split_metrics(splits, stratified),
        }
        (out / STATS_FILE).write_text(json.dumps(summary, indent=2))
        mlflow.log_artifacts(str(out), SPLITS_DIR)
        log.info(
            f"{stats.rows_read} rows read, {stats.dropped_empty} empty and "
            f"{stats.dropped_duplicate} duplicate {task.row_key}s dropped, "
            + ", ".join(f"{n} {len(p)}" for n, p in splits.items())
        )
        return run_id


def main(argv: list[str] | None = None) -> int:
    parser = cli.step_parser(__doc__, step=STEP)
    args = cli.parse_step_args(parser, argv)
    return cli.cli(STEP, lambda: run(cli.config_for(args), args.profile))


if __name__ == "__main__":
    cli.exit_quickly(main())
