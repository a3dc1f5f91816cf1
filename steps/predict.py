"""predict: score a file with a registered model, in this process or on Spark; one run per job.

    mlflow run . -e predict -P data=messages.csv -P output=scored.parquet
    mlflow run . -e predict -P data=messages.csv -P output=scored -P engine=spark

Not part of ``main``'s chain: it runs alone, on whatever the registry holds.
Reads: ``data`` (a csv, tsv, json, jsonl or parquet file, or a folder of parquet files),
``text_column``, ``model_uri`` (default ``models:/<registered_model>@champion``), ``output``,
``engine``, ``batch_size``, ``chunk_rows``, ``spark_master``, ``overwrite``, ``positive_label``.
Writes: ``output``, a parquet file (engine ``local``) or folder (engine ``spark``): every input
column, then the task's columns (its ``scorer``; the task is the model's, whatever ``task``
says); for text classification ``label`` (the predicted class) and ``score`` (for a two-class
model, the probability of ``positive_label``; otherwise the predicted class's); for text
generation ``completion`` (greedy, up to ``max_new_tokens``; ``text_column`` holds the raw
prompts: the model applies its template). An input column already named like an output (``label``,
``score``, ``completion``) is kept as ``input_<name>``. ``local`` keeps the input's row order.
The output appears only when it is complete: it is written under a temporary name beside it and
renamed at the end, so a failed job leaves no half-written file.
Run: tags ``pipeline.model_uri`` (as given), ``pipeline.model_version`` (the registered version
it resolved to when the job started, so a later alias move cannot change what the run says) and
``pipeline.model_run_id`` (the run that logged that version's model); ``pipeline.input_digest``
(sha256 of a local input's bytes; of a remote input's file names, sizes and modification times,
as ``pipeline.input_digest_of`` says); the input with ``mlflow.log_input``; param ``output`` and
tag ``pipeline.output``; metrics ``rows_scored``, ``rows_per_second``, ``model_load_s`` and
``rows_labelled_<label>`` per predicted class (a classifier's). ``python -m steps.lineage <run
ID>`` prints the training chain behind it.

``local`` streams: it reads, scores and writes ``chunk_rows`` rows at a time, so its memory does
not grow with the file (a JSON array is the exception: it is read whole; use jsonl). Within a
chunk it scores texts in order of length, so that each batch pads little, and puts the results
back in the input's order. ``spark`` reads with Spark and scores with ``mlflow.pyfunc.spark_udf``
on the resolved version; it needs ``pip install -e '.[spark]'`` and Java 17. It also takes
``data`` and ``output`` as URIs of the file systems Spark reads (``hdfs://``, ``s3a://``,
``dbfs:/``), checked, renamed and deleted through Hadoop's file systems as local paths are. Under
``spark-submit`` or on Databricks the session that exists is used and ``spark_master`` is ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from pathlib import Path

from hf_finetune import chain, cli, logs, tracking
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.filesystems import (
    DIGEST_OF,
    Files,
    HadoopFiles,
    LocalFiles,
    check_text_column,
    is_uri,
    locations,
    publish,
)
from hf_finetune.scoring import (
    QuietParams,
    first_chunk_columns,
    load_model,
    log_input,
    metric_name,
    renamed_inputs,
    resolve_model,
    score_local,
)
from hf_finetune.spark import score_spark, spark_frame, spark_session
from hf_finetune.tags import MODEL_URI_TAG, MODEL_VERSION_TAG
from hf_finetune.tasks import registry

STEP = chain.PREDICT
log = logs.logger(STEP)
INPUT_DIGEST_TAG = "pipeline.input_digest"
INPUT_DIGEST_OF_TAG = "pipeline.input_digest_of"  # "bytes" of a local input; a listing of a remote one
MODEL_RUN_TAG = "pipeline.model_run_id"  # the run that logged the registered version's model
OUTPUT_TAG = "pipeline.output"  # where the predictions went, as an absolute path or a URI


# ----------------------------------------------------------------------------- the job
def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    """Score ``cfg.data`` into ``cfg.output``; the run's ID. Every check that can fail on the
    user's input is made before the run starts and before anything is written."""
    import mlflow

    del upstream_run_id  # predict has no upstream step
    logging.getLogger("mlflow.transformers").addFilter(QuietParams())
    remote = [text for text in (cfg.data, cfg.output) if is_uri(text)]
    if remote and cfg.engine == "local":
        raise UserError(
            f"{remote[0]!r} is a URI: engine local reads and writes local files; use -P engine=spark"
        )
    spark = spark_session(cfg) if cfg.engine == "spark" else None
    if spark is not None and not remote and not str(spark.sparkContext.master).startswith("local"):
        raise UserError(
            f"Spark's master is {spark.sparkContext.master}: its executors cannot see this machine's "
            "paths; pass data and output as URIs they can reach (hdfs://, s3a://, dbfs:/)"
        )
    files: Files = HadoopFiles(spark) if remote else LocalFiles()
    data, dst = locations(cfg, files)
    frame = spark_frame(spark, cfg, data, files) if spark is not None else None
    columns = list(frame.columns) if frame is not None else first_chunk_columns(cfg, Path(data))
    check_text_column(columns, cfg, data)
    model = resolve_model(cfg)
    started = time.perf_counter()
    loaded = load_model(model)
    load_s = time.perf_counter() - started
    task = registry.task_of_model(loaded, registry.task_of(cfg))  # the model says what it is
    if task.name != cfg.task:
        cfg = dataclasses.replace(cfg, task=task.name)
    scorer = task.scorer(loaded, cfg)
    digest = files.digest(data)

    with tracking.step_run(STEP, profile, cfg) as (run_id, _):
        mlflow.set_tags(
            {
                MODEL_URI_TAG: model.given,
                MODEL_VERSION_TAG: model.version,
                MODEL_RUN_TAG: model.logged_in,
                INPUT_DIGEST_TAG: digest,
                INPUT_DIGEST_OF_TAG: DIGEST_OF[type(files)],
            }
        )
        if "output" not in mlflow.get_run(run_id).data.params:  # `mlflow run` logs its own parameters
            mlflow.log_param("output", cfg.output)
        mlflow.set_tag(OUTPUT_TAG, dst)
        log_input(data, digest, bool(remote))
        version = f" ({model.name} v{model.version})" if model.version else ""
        log.info(f"scoring {data} with {model.given}{version}, engine {cfg.engine}")
        kept = renamed_inputs(columns, scorer.outputs)
        if kept:
            log.info(f"input columns kept as {', '.join(kept.values())}")
        tmp = f"{dst.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            started = time.perf_counter()
            if frame is None:
                counts = score_local(cfg, Path(data), loaded, scorer, Path(tmp))
            else:
                counts = score_spark(frame, cfg, model, scorer, files.for_spark(tmp))
            seconds = time.perf_counter() - started
            publish(files, tmp, dst)
        finally:
            files.delete(tmp)
        rows = sum(counts.values())
        mlflow.log_metrics(
            {
                "rows_scored": rows,
                "rows_per_second": rows / max(seconds, 1e-9),
                "model_load_s": load_s,
                **{metric_name(label): n for label, n in sorted(counts.items()) if label},
            }
        )
        shares = "".join(f"{label} {n}, " for label, n in sorted(counts.items()) if label)
        log.info(f"wrote {rows} rows to {dst} ({shares}{rows / max(seconds, 1e-9):.0f} rows/s)")
        return run_id


def main(argv: list[str] | None = None) -> int:
    return cli.step_main(STEP, __doc__, None, run, argv)


if __name__ == "__main__":
    cli.exit_quickly(main())
