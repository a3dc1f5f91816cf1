"""Batch scoring on Spark: the session, the input as a Spark frame, and the scoring UDF."""

from __future__ import annotations

import os
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from hf_finetune import chain, sources
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.filesystems import Files
from hf_finetune.scoring import Model, first_line, renamed_inputs
from hf_finetune.tasks.base import Scorer


def spark_session(cfg: Config) -> Any:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise UserError(
            "engine spark needs pyspark: pip install -e '.[spark]' (and Java 17, e.g. "
            "apt-get install openjdk-17-jre-headless), or use -P engine=local"
        ) from None
    active = SparkSession.getActiveSession()
    if active is not None or "PYSPARK_GATEWAY_PORT" in os.environ:  # Databricks, spark-submit
        return active or SparkSession.builder.getOrCreate()
    builder = SparkSession.builder.master(cfg.spark_master).appName(f"hf-finetune-pipeline {chain.PREDICT}")
    if cfg.spark_master.startswith("local"):  # workers on this machine: in this environment
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        return builder.getOrCreate()
    except (RuntimeError, OSError, ValueError) as exc:  # no Java, an old one, a master out of reach
        raise UserError(
            f"Spark could not start with master {cfg.spark_master!r} ({first_line(exc)}): Spark needs "
            "Java 17 (apt-get install openjdk-17-jre-headless, or set JAVA_HOME), or use -P engine=local"
        ) from None


def spark_frame(spark: Any, cfg: Config, data: str, files: Files) -> Any:
    where = files.for_spark(data)
    if files.is_dir(data):
        return spark.read.parquet(where)
    kind, names = sources.file_kind(Path(data.split("://", 1)[-1]), cfg.data_columns)
    if kind == "parquet":
        return spark.read.parquet(where)
    if kind in ("json", "jsonl"):
        multiline = kind == "json" and files.first_byte(data) == b"["
        return spark.read.option("multiLine", multiline).json(where)
    frame = spark.read.csv(
        where,
        sep="," if kind == "csv" else "\t",
        header=names is None,
        quote='"' if kind == "csv" else "\u0000",
        escape='"',
        multiLine=kind == "csv",
        encoding="UTF-8",
        mode="FAILFAST",  # a malformed line is an error, as in engine local, not a row of nulls
    )
    if names and len(names) != len(frame.columns):
        raise UserError(
            f"data_columns names {len(names)} columns but {Path(data).name} has {len(frame.columns)}: "
            "name every column"
        )
    return frame.toDF(*names) if names else frame


def score_spark(frame: Any, cfg: Config, model: Model, scorer: Scorer, dst: str) -> Counter[str]:
    import mlflow
    from pyspark.sql import functions as F

    udf = mlflow.pyfunc.spark_udf(
        frame.sparkSession, model.load_uri, env_manager="local", params={"batch_size": cfg.batch_size}
    )
    column = f"__prediction_{uuid.uuid4().hex[:8]}"  # the model runs once per row, read twice
    frame_scored = frame.withColumn(
        column, udf(scorer.spark_input(F.coalesce(F.col(f"`{cfg.text_column}`").cast("string"), F.lit(""))))
    )
    renames = renamed_inputs(frame.columns, scorer.outputs)
    inputs = [F.col(f"`{c}`").alias(renames.get(c, c)) for c in frame.columns]
    frame_scored.select(*inputs, *scorer.spark_columns(column)).write.parquet(dst)
    if scorer.counted is None:  # free text: every row under ""
        return Counter({"": frame.sparkSession.read.parquet(dst).count()})
    rows = frame.sparkSession.read.parquet(dst).groupBy(scorer.counted).count().collect()
    return Counter({str(r[scorer.counted]): int(r["count"]) for r in rows})
