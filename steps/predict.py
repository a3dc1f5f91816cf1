"""predict: score a file with a registered model, in this process or on Spark; one run per job.

    mlflow run . -e predict -P data=messages.csv -P output=scored.parquet
    mlflow run . -e predict -P data=messages.csv -P output=scored -P engine=spark

Not part of ``main``'s chain: it runs alone, on whatever the registry holds.
Reads: ``data`` (a csv, tsv, json, jsonl or parquet file, or a folder of parquet files),
``text_column``, ``model_uri`` (default ``models:/<registered_model>@champion``), ``output``,
``engine``, ``batch_size``, ``chunk_rows``, ``spark_master``, ``overwrite``, ``positive_label``.
Writes: ``output``, a parquet file (engine ``local``) or folder (engine ``spark``): every input
column, then ``label`` (the predicted class) and ``score`` (for a two-class model, the probability
of ``positive_label``; otherwise the predicted class's). An input column already named ``label``
or ``score`` is kept as ``input_label`` / ``input_score``. ``local`` keeps the input's row order.
The output appears only when it is complete: it is written under a temporary name beside it and
renamed at the end, so a failed job leaves no half-written file.
Run: tags ``pipeline.model_uri`` (as given) and ``pipeline.model_version`` (the registered version
it resolved to when the job started, so a later alias move cannot change what the run says),
``pipeline.input_sha256``; the input with ``mlflow.log_input`` (digest of its bytes); param
``output``; metrics ``rows_scored``, ``rows_per_second``, ``model_load_s`` and ``rows_<label>``
per predicted class. ``python -m steps.lineage <run ID>`` prints the training chain behind it.

``local`` streams: it reads, scores and writes ``chunk_rows`` rows at a time, so its memory does
not grow with the file (a JSON array is the exception: it is read whole; use jsonl). Within a
chunk it scores texts in order of length, so that each batch pads little, and puts the results
back in the input's order. ``spark`` reads with Spark and scores with ``mlflow.pyfunc.spark_udf``
on the resolved version; it needs ``pip install -e '.[spark]'`` and Java 17. Under
``spark-submit`` or on Databricks the session that exists is used and ``spark_master`` is ignored.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import shutil
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from steps import chain, common, corpus
from steps.config import PROJECT_DIR, Config
from steps.errors import UserError
from steps.tags import MODEL_URI_TAG, MODEL_VERSION_TAG

STEP = chain.PREDICT
log = common.logger(STEP)
OUTPUT_COLUMNS = ("label", "score")
INPUT_SHA_TAG = "pipeline.input_sha256"


@dataclasses.dataclass(frozen=True)
class Model:
    """What a job scores with: the URI as given, the URI it loads, and the registered version."""

    given: str
    load_uri: str
    name: str = ""
    version: str = ""


class QuietParams(logging.Filter):
    """MLflow's transformers flavor warns, at every call given ``params``, that they override the
    settings saved with the model; ``batch_size`` is meant to, and a job makes thousands of calls."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "params provided to the `predict` method" not in record.getMessage()


# ----------------------------------------------------------------------------- pure functions
def renamed_inputs(columns: Iterable[str]) -> dict[str, str]:
    """Input columns whose names the output's own columns take, and the names they keep."""
    return {c: f"input_{c}" for c in columns if c in OUTPUT_COLUMNS}


def positive_scores(labels: pd.Series, scores: pd.Series, positive: str | None) -> pd.Series:
    """The probability of ``positive`` from (predicted label, its probability) of a two-class
    model; the predicted label's own probability when ``positive`` is None."""
    if positive is None:
        return scores.astype(float)
    return scores.astype(float).where(labels == positive, 1.0 - scores.astype(float))


def two_class_positive(labels: list[str] | None, positive_label: str) -> str | None:
    """``positive_label`` where the model's classes are two and include it, else None."""
    return positive_label if labels is not None and len(labels) == 2 and positive_label in labels else None


def metric_name(label: str) -> str:
    """``rows_<label>``, with what MLflow does not allow in a metric name replaced by ``_``."""
    return "rows_" + re.sub(r"[^\w\-. /]", "_", label)


def in_order_of_length(texts: list[str]) -> list[int]:
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


# ----------------------------------------------------------------------------- checks
def output_path(cfg: Config) -> Path:
    if not cfg.output:
        raise UserError("output is not set: pass -P output=<file.parquet> (engine spark: a folder)")
    path = Path(cfg.output).expanduser().absolute()
    if path.exists() or path.is_symlink():
        if not cfg.overwrite:
            raise UserError(
                f"output {str(path)!r} exists: pass another path, or -P overwrite=true to replace it"
            )
        if path.is_dir() and not path.is_symlink() and not only_scores_in(path):
            raise UserError(
                f"output {str(path)!r} is a folder with files other than a scoring job's parquet "
                "in it: it is not replaced even with overwrite=true; pass another path"
            )
    if not path.parent.is_dir():
        raise UserError(f"output's folder {str(path.parent)!r} does not exist: create it first")
    return path


def only_scores_in(folder: Path) -> bool:
    """Does ``folder`` hold nothing but what a job writes (parquet parts, Spark's markers)?"""
    return all(
        p.is_dir() or p.suffix in (".parquet", ".crc") or p.name.startswith("_") for p in folder.rglob("*")
    )


def input_path(cfg: Config) -> Path:
    path = Path(cfg.data).expanduser()
    if not path.is_absolute() and not path.exists() and (PROJECT_DIR / path).exists():
        path = PROJECT_DIR / path  # the bundled data, from anywhere
    if not path.exists():
        raise UserError(
            f"data {cfg.data!r} does not exist: pass -P data=<a csv, tsv, json, jsonl or parquet "
            "file, or a folder of parquet files>"
        )
    return path.absolute()


def check_text_column(columns: Iterable[str], cfg: Config, path: Path) -> None:
    columns = list(columns)
    if cfg.text_column not in columns:
        raise UserError(
            f"{path.name} has no column {cfg.text_column!r}; its columns are "
            f"{', '.join(map(str, columns)) or 'none'}: pass -P text_column=<one of them>"
        )


def resolve_model(cfg: Config) -> Model:
    """The registered version a ``models:/`` URI names now, or a ``UserError`` saying what is there."""
    import mlflow
    from mlflow.exceptions import MlflowException

    given = cfg.model_uri or f"models:/{cfg.registered_model}@{chain.CHAMPION}"
    parsed = common.parse_registry_uri(given)
    if parsed is None:
        if given.startswith("models:/") and not given.startswith("models:/m-"):
            raise UserError(f"model_uri {given!r} is not models:/<name>@<alias> or models:/<name>/<version>")
        return Model(given=given, load_uri=given)
    name, alias, version = parsed
    client = mlflow.MlflowClient()
    where = mlflow.get_tracking_uri()
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise UserError(
            f"registered model {name!r} does not exist in {where}: run the pipeline first "
            "(mlflow run .) or pass -P model_uri / -P registered_model"
        ) from None
    if alias:
        if alias not in registered.aliases:
            have = ", ".join(f"@{a} (v{v})" for a, v in sorted(registered.aliases.items())) or "no aliases"
            raise UserError(
                f"registered model {name!r} has no alias {alias!r} (it has {have}): "
                f"pass -P model_uri=models:/{name}/<version> or an alias it has"
            )
        version = str(registered.aliases[alias])
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise UserError(
            f"registered model {name!r} has no version {version}: see its versions with "
            f"`python -m steps.lineage models:/{name}@{chain.CHAMPION}` or the MLflow UI"
        ) from None
    return Model(given=given, load_uri=f"models:/{name}/{version}", name=name, version=str(version))


def load_model(model: Model) -> tuple[Any, list[str] | None]:
    """The pyfunc model and its class names (None where the model does not say)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        loaded = mlflow.pyfunc.load_model(model.load_uri)
    except (MlflowException, OSError, ValueError, ImportError) as exc:  # name the URI, keep one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"model {model.given!r} could not be loaded ({first}): check -P model_uri") from None
    try:
        labels = [str(v) for v in loaded.get_raw_model().model.config.id2label.values()]
    except (AttributeError, NotImplementedError):
        labels = None
    return loaded, labels


# ----------------------------------------------------------------------------- engine local
def predict_chunk(model: Any, texts: list[str], batch_size: int) -> pd.DataFrame:
    """Labels and scores of ``texts``, in their order; scored shortest first (less padding)."""
    order = in_order_of_length(texts)
    out = model.predict([texts[i] for i in order], params={"batch_size": batch_size})
    out = pd.DataFrame(out).reset_index(drop=True)
    out.index = order
    return out.sort_index()


def scored_chunks(
    chunks: Iterable[pd.DataFrame], model: Any, cfg: Config, positive: str | None
) -> Iterator[pd.DataFrame]:
    for chunk in chunks:
        texts = ["" if pd.isna(t) else str(t) for t in chunk[cfg.text_column]]
        predicted = predict_chunk(model, texts, cfg.batch_size)
        out = chunk.rename(columns=renamed_inputs(chunk.columns)).reset_index(drop=True)
        out["label"] = predicted["label"].astype(str).to_numpy()
        out["score"] = positive_scores(predicted["label"], predicted["score"], positive).to_numpy()
        yield out


def write_parquet(frames: Iterable[pd.DataFrame], dst: Path, progress: Any) -> Counter[str]:
    """Write ``frames`` to one parquet file; the predicted labels' counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts: Counter[str] = Counter()
    writer = None
    try:
        for frame in frames:
            if writer is None:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                # a column empty in the first chunk has no type yet: strings, as the readers give
                schema = pa.schema(
                    [f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]
                )
                writer = pq.ParquetWriter(dst, schema)
            writer.write_table(pa.Table.from_pandas(frame, schema=writer.schema, preserve_index=False))
            counts.update(frame["label"])
            progress.update(len(frame))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise UserError(f"{dst.name.split('.tmp-')[0]}: the input has no rows to score")
    return counts


def score_local(cfg: Config, path: Path, model: Any, positive: str | None, dst: Path) -> Counter[str]:
    from tqdm.auto import tqdm

    chunks = corpus.read_chunks(path, cfg.data_columns, cfg.chunk_rows)
    first = next(chunks, None)
    if first is None:
        raise UserError(f"{path.name} has no rows to score")
    with tqdm(unit=" rows", desc=STEP, disable=not sys.stderr.isatty()) as progress:
        return write_parquet(
            scored_chunks(itertools.chain([first], chunks), model, cfg, positive), dst, progress
        )


def first_chunk_columns(cfg: Config, path: Path) -> list[str]:
    first = next(corpus.read_chunks(path, cfg.data_columns, 1), None)
    if first is None:
        raise UserError(f"{path.name} has no rows to score")
    return [str(c) for c in first.columns]


# ----------------------------------------------------------------------------- engine spark
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
    builder = SparkSession.builder.master(cfg.spark_master).appName(f"hf-finetune-pipeline {STEP}")
    if cfg.spark_master.startswith("local"):  # workers on this machine: in this environment
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        return builder.getOrCreate()
    except (RuntimeError, OSError, ValueError) as exc:  # no Java, an old one, a master out of reach
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"Spark could not start with master {cfg.spark_master!r} ({first}): Spark needs Java 17 "
            "(apt-get install openjdk-17-jre-headless, or set JAVA_HOME), or use -P engine=local"
        ) from None


def spark_frame(spark: Any, cfg: Config, path: Path) -> Any:
    if path.is_dir():
        return spark.read.parquet(str(path))
    kind, names = corpus.file_kind(path, cfg.data_columns)
    if kind == "parquet":
        return spark.read.parquet(str(path))
    if kind in ("json", "jsonl"):
        multiline = kind == "json" and first_byte(path) == b"["
        return spark.read.option("multiLine", multiline).json(str(path))
    frame = spark.read.csv(
        str(path),
        sep="," if kind == "csv" else "\t",
        header=names is None,
        quote='"' if kind == "csv" else "\u0000",
        escape='"',
        multiLine=kind == "csv",
        encoding="UTF-8",
    )
    return frame.toDF(*names) if names else frame


def first_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(1)


def score_spark(
    spark: Any, cfg: Config, path: Path, model: Model, positive: str | None, dst: Path
) -> Counter[str]:
    import mlflow
    from pyspark.sql import functions as F

    frame = spark_frame(spark, cfg, path)
    check_text_column(frame.columns, cfg, path)
    udf = mlflow.pyfunc.spark_udf(
        spark, model.load_uri, env_manager="local", params={"batch_size": cfg.batch_size}
    )
    predicted = udf(F.coalesce(F.col(f"`{cfg.text_column}`").cast("string"), F.lit("")))
    label, score = predicted.getField("label"), predicted.getField("score").cast("double")
    if positive is not None:
        score = F.when(label == positive, score).otherwise(1.0 - score)
    renames = renamed_inputs(frame.columns)
    inputs = [F.col(f"`{c}`").alias(renames.get(c, c)) for c in frame.columns]
    frame.select(*inputs, label.alias("label"), score.alias("score")).write.parquet(str(dst))
    rows = spark.read.parquet(str(dst)).groupBy("label").count().collect()
    return Counter({str(r["label"]): int(r["count"]) for r in rows})


# ----------------------------------------------------------------------------- the job
def publish(tmp: Path, dst: Path) -> None:
    """Put the finished output in place, replacing what was there (overwrite)."""
    if dst.is_dir() and not dst.is_symlink():
        old = dst.with_name(f"{dst.name}.old-{uuid.uuid4().hex[:8]}")
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dst)


def log_input(path: Path, sha256: str) -> None:
    """The scored file as the run's input: where it is and the digest of its bytes (not its rows:
    a file of millions of rows is never held in memory to log it)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local one
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(path))
    dataset = MetaDataset(source, name=path.name, digest=sha256[:32])  # type: ignore[abstract]
    common.retry_lost_insert_race(lambda: mlflow.log_input(dataset, context="scoring"))


def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    """Score ``cfg.data`` into ``cfg.output``; the run's ID. Every check that can fail on the
    user's input is made before the run starts and before anything is written."""
    import mlflow

    del upstream_run_id  # predict has no upstream step
    logging.getLogger("mlflow.transformers").addFilter(QuietParams())
    dst = output_path(cfg)
    path = input_path(cfg)
    if dst == path or path in dst.parents:
        raise UserError(f"output {str(dst)!r} would overwrite the input: pass another path")
    spark = spark_session(cfg) if cfg.engine == "spark" else None
    columns = first_chunk_columns(cfg, path) if spark is None else spark_frame(spark, cfg, path).columns
    check_text_column(columns, cfg, path)
    model = resolve_model(cfg)
    started = time.perf_counter()
    loaded, labels = load_model(model)
    load_s = time.perf_counter() - started
    positive = two_class_positive(labels, cfg.positive_label)
    sha256 = corpus.file_digest(path)

    with common.step_run(STEP, profile, cfg) as (run_id, _):
        mlflow.set_tags({MODEL_URI_TAG: model.given, MODEL_VERSION_TAG: model.version, INPUT_SHA_TAG: sha256})
        mlflow.log_param("output", cfg.output)
        log_input(path, sha256)
        version = f" ({model.name} v{model.version})" if model.version else ""
        log.info(f"scoring {path} with {model.given}{version}, engine {cfg.engine}")
        if renamed_inputs(columns):
            log.info(f"input columns kept as {', '.join(renamed_inputs(columns).values())}")
        tmp = dst.with_name(f"{dst.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            started = time.perf_counter()
            if spark is None:
                counts = score_local(cfg, path, loaded, positive, tmp)
            else:
                counts = score_spark(spark, cfg, path, model, positive, tmp)
            seconds = time.perf_counter() - started
            publish(tmp, dst)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()
        rows = sum(counts.values())
        mlflow.log_metrics(
            {
                "rows_scored": rows,
                "rows_per_second": rows / max(seconds, 1e-9),
                "model_load_s": load_s,
                **{metric_name(label): n for label, n in sorted(counts.items())},
            }
        )
        shares = ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))
        log.info(f"wrote {rows} rows to {dst} ({shares}; {rows / max(seconds, 1e-9):.0f} rows/s)")
        return run_id


def main(argv: list[str] | None = None) -> int:
    parser = common.step_parser(__doc__, step=STEP)
    args = common.parse_step_args(parser, argv)
    return common.cli(STEP, lambda: run(None, common.config_for(args), args.profile))


if __name__ == "__main__":
    common.exit_quickly(main())
