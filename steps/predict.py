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
Run: tags ``pipeline.model_uri`` (as given), ``pipeline.model_version`` (the registered version
it resolved to when the job started, so a later alias move cannot change what the run says) and
``pipeline.model_run_id`` (the run that logged that version's model); ``pipeline.input_digest``
(sha256 of a local input's bytes; of a remote input's file names, sizes and modification times,
as ``pipeline.input_digest_of`` says); the input with ``mlflow.log_input``; param ``output`` and
tag ``pipeline.output``; metrics ``rows_scored``, ``rows_per_second``, ``model_load_s`` and
``rows_labelled_<label>`` per predicted class. ``python -m steps.lineage <run ID>`` prints the
training chain behind it.

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
import hashlib
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
INPUT_DIGEST_TAG = "pipeline.input_digest"
INPUT_DIGEST_OF_TAG = "pipeline.input_digest_of"  # "bytes" of a local input; a listing of a remote one
MODEL_RUN_TAG = "pipeline.model_run_id"  # the run that logged the registered version's model
OUTPUT_TAG = "pipeline.output"  # where the predictions went, as an absolute path or a URI
URI = re.compile(r"^[A-Za-z][\w+.-]+:/")


@dataclasses.dataclass(frozen=True)
class Model:
    """What a job scores with: the URI as given, the URI it loads, and the registered version."""

    given: str
    load_uri: str
    name: str = ""
    version: str = ""
    logged_in: str = ""  # the run that logged the version's model (its lineage, should it be deleted)


class QuietParams(logging.Filter):
    """MLflow's transformers flavor warns, at every call given ``params``, that they override the
    settings saved with the model; ``batch_size`` is meant to, and a job makes thousands of calls."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "params provided to the `predict` method" not in record.getMessage()


# ----------------------------------------------------------------------------- pure functions
def first_line(exc: BaseException) -> str:
    """The first line of an error's message (a JVM's can be a page long)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


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
    """``rows_labelled_<label>``, with what MLflow does not allow in a metric name replaced by ``_``."""
    return "rows_labelled_" + re.sub(r"[^\w\-. /]", "_", label)


def in_order_of_length(texts: list[str]) -> list[int]:
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


# ----------------------------------------------------------------------------- where files are
def is_uri(text: str) -> bool:
    """``hdfs://…``, ``s3a://…``, ``dbfs:/…``, ``file:/…``: a place only Spark reads and writes."""
    return bool(URI.match(text))


class LocalFiles:
    """Paths on this machine."""

    def exists(self, loc: str) -> bool:
        return Path(loc).exists() or Path(loc).is_symlink()

    def is_dir(self, loc: str) -> bool:
        return Path(loc).is_dir() and not Path(loc).is_symlink()

    def names(self, loc: str) -> list[str]:
        """The files under a folder, recursively, relative to it."""
        return sorted(str(p.relative_to(loc)) for p in Path(loc).rglob("*") if p.is_file())

    def parent_exists(self, loc: str) -> bool:
        return Path(loc).parent.is_dir()

    def digest(self, loc: str) -> str:
        return corpus.file_digest(Path(loc))

    def first_byte(self, loc: str) -> bytes:
        with open(loc, "rb") as f:
            return f.read(1)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def delete(self, loc: str) -> None:
        if self.is_dir(loc):
            shutil.rmtree(loc, ignore_errors=True)
        elif self.exists(loc):
            Path(loc).unlink()

    def for_spark(self, loc: str) -> str:
        return Path(loc).as_uri()

    def canonical(self, loc: str) -> str:
        return str(Path(loc).resolve())


class HadoopFiles:
    """Places Spark reads and writes (HDFS, S3, DBFS, ...), through Hadoop's file systems in the
    session's JVM, with the cluster's own configuration."""

    def __init__(self, spark: Any) -> None:
        self.spark = spark

    def _at(self, loc: str) -> tuple[Any, Any]:
        from steps import compat

        try:
            return compat.hadoop_filesystem(self.spark, loc)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - Py4J wraps every JVM error: an unknown scheme, no access
            raise UserError(
                f"Spark cannot reach {loc!r} ({first_line(exc)}): check the URI and access"
            ) from None

    def exists(self, loc: str) -> bool:
        fs, path = self._at(loc)
        return bool(fs.exists(path))

    def is_dir(self, loc: str) -> bool:
        fs, path = self._at(loc)
        return bool(fs.exists(path) and fs.getFileStatus(path).isDirectory())

    def _files(self, loc: str) -> list[tuple[str, int, int]]:
        fs, path = self._at(loc)
        root = str(fs.makeQualified(path).toString()).rstrip("/")
        found, listing = [], fs.listFiles(path, True)
        while listing.hasNext():
            status = listing.next()
            name = str(status.getPath().toString())[len(root) :].lstrip("/")
            found.append((name, int(status.getLen()), int(status.getModificationTime())))
        return sorted(found)

    def names(self, loc: str) -> list[str]:
        return [name for name, _, _ in self._files(loc)]

    def parent_exists(self, loc: str) -> bool:
        return True  # object stores have no folders to make first; Spark makes what it needs

    def digest(self, loc: str) -> str:
        """sha256 of every file's name, size and modification time (not its bytes: the input is
        read once, by Spark)."""
        listing = "\n".join(f"{name}\t{size}\t{mtime}" for name, size, mtime in self._files(loc))
        return hashlib.sha256(listing.encode()).hexdigest()

    def first_byte(self, loc: str) -> bytes:
        fs, path = self._at(loc)
        stream = fs.open(path)
        try:
            return bytes([stream.read()]) if fs.getFileStatus(path).getLen() else b""
        finally:
            stream.close()

    def rename(self, src: str, dst: str) -> None:
        fs, path = self._at(src)
        if not fs.rename(path, self._at(dst)[1]):
            raise OSError(f"could not rename {src} to {dst}")

    def delete(self, loc: str) -> None:
        fs, path = self._at(loc)
        if fs.exists(path):
            fs.delete(path, True)

    def for_spark(self, loc: str) -> str:
        return loc

    def canonical(self, loc: str) -> str:
        fs, path = self._at(loc)
        return str(fs.makeQualified(path).toString())


Files = LocalFiles | HadoopFiles
DIGEST_OF = {LocalFiles: "bytes", HadoopFiles: "names, sizes and modification times of its files"}


# ----------------------------------------------------------------------------- checks
def locations(cfg: Config, files: Files) -> tuple[str, str]:
    """The input and the output, checked: (data, output) as ``files`` names them."""
    if not cfg.output:
        raise UserError("output is not set: pass -P output=<file.parquet> (engine spark: a folder)")
    data = cfg.data
    if isinstance(files, LocalFiles):
        candidate = Path(data).expanduser()
        if not candidate.is_absolute() and not candidate.exists() and (PROJECT_DIR / candidate).exists():
            candidate = PROJECT_DIR / candidate  # the bundled data, from anywhere
        data = str(candidate.absolute())
    output = str(Path(cfg.output).expanduser().absolute()) if isinstance(files, LocalFiles) else cfg.output
    if not files.exists(data):
        raise UserError(
            f"data {cfg.data!r} does not exist: pass -P data=<a csv, tsv, json, jsonl or parquet "
            "file, or a folder of parquet files>"
        )
    if files.exists(output):
        if not cfg.overwrite:
            raise UserError(
                f"output {output!r} exists: pass another path, or -P overwrite=true to replace it"
            )
        if files.is_dir(output) and not only_scores(files.names(output)):
            raise UserError(
                f"output {output!r} is a folder with files other than a scoring job's parquet "
                "in it: it is not replaced even with overwrite=true; pass another path"
            )
    if not files.parent_exists(output):
        raise UserError(f"output's folder {str(Path(output).parent)!r} does not exist: create it first")
    if overlapping(files.canonical(data), files.canonical(output)):
        raise UserError(f"output {output!r} and data {data!r} overlap: the output would replace the input")
    return data, output


def overlapping(a: str, b: str) -> bool:
    """Is one of two canonical paths the other, or inside it?"""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def only_scores(names: Iterable[str]) -> bool:
    """Are these a scoring job's files only (parquet parts, Spark's checksums and markers)?"""
    return all(Path(n).suffix in (".parquet", ".crc") or Path(n).name.startswith("_") for n in names)


def check_text_column(columns: Iterable[str], cfg: Config, data: str) -> None:
    columns = list(columns)
    if cfg.text_column not in columns:
        raise UserError(
            f"{Path(data).name} has no column {cfg.text_column!r}; its columns are "
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
        found = client.get_model_version(name, str(version))
    except MlflowException:
        raise UserError(
            f"registered model {name!r} has no version {version}: see its versions with "
            f"`python -m steps.lineage models:/{name}@{chain.CHAMPION}` or the MLflow UI"
        ) from None
    logged_in = found.tags.get(f"run.{chain.LOG_MODEL}") or found.run_id or ""
    return Model(given, f"models:/{name}/{version}", name, str(version), logged_in)


def load_model(model: Model) -> tuple[Any, list[str] | None]:
    """The pyfunc model and its class names (None where the model does not say)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        loaded = mlflow.pyfunc.load_model(model.load_uri)
    except (MlflowException, OSError, ValueError, ImportError) as exc:  # name the URI, keep one line
        raise UserError(
            f"model {model.given!r} could not be loaded ({first_line(exc)}): check -P model_uri"
        ) from None
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
    first_columns = None
    for number, chunk in enumerate(chunks):
        if chunk.empty:  # a csv with a header and no rows reads as one empty chunk
            continue
        columns = [str(c) for c in chunk.columns]
        first_columns = first_columns or columns
        if columns != first_columns:
            raise UserError(
                f"rows {number * cfg.chunk_rows + 1}- of the input have the columns {', '.join(columns)}, "
                f"not the first rows' {', '.join(first_columns)}: give every record the same fields"
            )
        texts = ["" if pd.isna(t) else str(t) for t in chunk[cfg.text_column]]
        predicted = predict_chunk(model, texts, cfg.batch_size)
        out = chunk.rename(columns=renamed_inputs(chunk.columns)).reset_index(drop=True)
        out["label"] = predicted["label"].astype(str).to_numpy()
        out["score"] = positive_scores(predicted["label"], predicted["score"], positive).to_numpy()
        yield out


def write_parquet(frames: Iterable[pd.DataFrame], dst: Path, progress: Any, chunk_rows: int) -> Counter[str]:
    """Write ``frames`` to one parquet file; the predicted labels' counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts: Counter[str] = Counter()
    writer = None
    try:
        for number, frame in enumerate(frames):
            if writer is None:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                # a column empty in the first chunk has no type yet: strings, as the readers give
                schema = pa.schema(
                    [f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]
                )
                writer = pq.ParquetWriter(dst, schema)
            try:
                table = pa.Table.from_pandas(frame, schema=writer.schema, preserve_index=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise UserError(
                    f"rows {number * chunk_rows + 1}- of the input have values of another type than "
                    f"the first rows' ({first_line(exc)}): make each column one type, or read it as "
                    "csv (every value a string)"
                ) from None
            writer.write_table(table)
            counts.update(frame["label"])
            progress.update(len(frame))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise UserError("the input has no rows to score")
    return counts


def score_local(cfg: Config, path: Path, model: Any, positive: str | None, dst: Path) -> Counter[str]:
    from tqdm.auto import tqdm

    chunks = corpus.read_chunks(path, cfg.data_columns, cfg.chunk_rows)  # rows: checked by run()
    with tqdm(unit=" rows", desc=STEP, disable=not sys.stderr.isatty()) as progress:
        return write_parquet(scored_chunks(chunks, model, cfg, positive), dst, progress, cfg.chunk_rows)


def first_chunk_columns(cfg: Config, path: Path) -> list[str]:
    first = next(corpus.read_chunks(path, cfg.data_columns, 1), None)
    if first is None or first.empty:
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
        raise UserError(
            f"Spark could not start with master {cfg.spark_master!r} ({first_line(exc)}): Spark needs "
            "Java 17 (apt-get install openjdk-17-jre-headless, or set JAVA_HOME), or use -P engine=local"
        ) from None


def spark_frame(spark: Any, cfg: Config, data: str, files: Files) -> Any:
    where = files.for_spark(data)
    if files.is_dir(data):
        return spark.read.parquet(where)
    kind, names = corpus.file_kind(Path(data.split("://", 1)[-1]), cfg.data_columns)
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


def score_spark(frame: Any, cfg: Config, model: Model, positive: str | None, dst: str) -> Counter[str]:
    import mlflow
    from pyspark.sql import functions as F

    udf = mlflow.pyfunc.spark_udf(
        frame.sparkSession, model.load_uri, env_manager="local", params={"batch_size": cfg.batch_size}
    )
    column = f"__prediction_{uuid.uuid4().hex[:8]}"  # the model runs once per row, read twice
    frame_scored = frame.withColumn(
        column, udf(F.coalesce(F.col(f"`{cfg.text_column}`").cast("string"), F.lit("")))
    )
    label, score = F.col(f"{column}.label"), F.col(f"{column}.score").cast("double")
    if positive is not None:
        score = F.when(label == positive, score).otherwise(1.0 - score)
    renames = renamed_inputs(frame.columns)
    inputs = [F.col(f"`{c}`").alias(renames.get(c, c)) for c in frame.columns]
    frame_scored.select(*inputs, label.alias("label"), score.alias("score")).write.parquet(dst)
    rows = frame.sparkSession.read.parquet(dst).groupBy("label").count().collect()
    return Counter({str(r["label"]): int(r["count"]) for r in rows})


# ----------------------------------------------------------------------------- the job
def publish(files: Files, tmp: str, dst: str) -> None:
    """Put the finished output in place, replacing what was there (overwrite)."""
    if files.is_dir(dst):
        old = f"{dst.rstrip('/')}.old-{uuid.uuid4().hex[:8]}"
        files.rename(dst, old)
        try:
            files.rename(tmp, dst)
        except BaseException:
            files.rename(old, dst)  # the previous output, back in place
            raise
        files.delete(old)
    else:
        files.delete(dst)
        files.rename(tmp, dst)


def log_input(data: str, digest: str, remote: bool) -> None:
    """The scored input as the run's input: where it is and its digest (not its rows: a file of
    millions of rows is never held in memory to log it)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.spark_dataset_source import SparkDatasetSource

    if remote:  # MLflow resolves no source for s3a:// or dbfs:/; this one records any path Spark read
        source: Any = SparkDatasetSource(path=data)
    else:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local one
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(data)
    name = Path(data.rstrip("/")).name
    dataset = MetaDataset(source, name=name, digest=digest[:32])  # type: ignore[abstract]
    common.retry_lost_insert_race(lambda: mlflow.log_input(dataset, context="scoring"))


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
    loaded, labels = load_model(model)
    load_s = time.perf_counter() - started
    positive = two_class_positive(labels, cfg.positive_label)
    digest = files.digest(data)

    with common.step_run(STEP, profile, cfg) as (run_id, _):
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
        if renamed_inputs(columns):
            log.info(f"input columns kept as {', '.join(renamed_inputs(columns).values())}")
        tmp = f"{dst.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            started = time.perf_counter()
            if frame is None:
                counts = score_local(cfg, Path(data), loaded, positive, Path(tmp))
            else:
                counts = score_spark(frame, cfg, model, positive, files.for_spark(tmp))
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
