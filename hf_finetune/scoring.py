"""Batch scoring (``predict``): the model a job uses, and the local engine that streams a file.

The local engine reads, scores and writes ``chunk_rows`` rows at a time; within a chunk it scores
texts in order of length (less padding) and puts the results back in the input's order. The
columns it writes are the task's.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from hf_finetune import chain, sources, tracking, uris
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.tasks.base import Scorer


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


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (a JVM's can be a page long)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def renamed_inputs(columns: Iterable[str], outputs: Iterable[str]) -> dict[str, str]:
    """Input columns whose names the output's own columns take, and the names they keep."""
    taken = set(outputs)
    return {c: f"input_{c}" for c in columns if c in taken}


def metric_name(label: str) -> str:
    """``rows_labelled_<label>``, with what MLflow does not allow in a metric name replaced by ``_``."""
    return "rows_labelled_" + re.sub(r"[^\w\-. /]", "_", label)


def in_order_of_length(texts: list[str]) -> list[int]:
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


def resolve_model(cfg: Config) -> Model:
    """The registered version a ``models:/`` URI names now, or a ``UserError`` saying what is there."""
    import mlflow
    from mlflow.exceptions import MlflowException

    given = cfg.model_uri or f"models:/{cfg.registered_model}@{chain.CHAMPION}"
    parsed = uris.parse_registry_uri(given)
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


def load_model(model: Model) -> Any:
    """The pyfunc model, or a ``UserError`` that names the URI."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        loaded = mlflow.pyfunc.load_model(model.load_uri)
    except (MlflowException, OSError, ValueError, ImportError) as exc:  # name the URI, keep one line
        raise UserError(
            f"model {model.given!r} could not be loaded ({first_line(exc)}): check -P model_uri"
        ) from None
    return loaded


def predict_chunk(model: Any, texts: list[str], batch_size: int, scorer: Scorer) -> pd.DataFrame:
    """What the model says of ``texts``, in their order; scored shortest first (less padding)."""
    order = in_order_of_length(texts)
    out = scorer.predict(model, [texts[i] for i in order], batch_size)
    out.index = order
    return out.sort_index()


def scored_chunks(
    chunks: Iterable[pd.DataFrame], model: Any, cfg: Config, scorer: Scorer
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
        predicted = predict_chunk(model, texts, cfg.batch_size, scorer)
        out = chunk.rename(columns=renamed_inputs(chunk.columns, scorer.outputs)).reset_index(drop=True)
        for name, values in scorer.columns(predicted).items():
            out[name] = values
        yield out


def write_parquet(
    frames: Iterable[pd.DataFrame], dst: Path, progress: Any, chunk_rows: int, counted: str | None
) -> Counter[str]:
    """Write ``frames`` to one parquet file; the counts of the values of column ``counted`` (for
    None, every row under the key "")."""
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
            if counted is None:
                counts[""] += len(frame)
            else:
                counts.update(frame[counted])
            progress.update(len(frame))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise UserError("the input has no rows to score")
    return counts


def score_local(cfg: Config, path: Path, model: Any, scorer: Scorer, dst: Path) -> Counter[str]:
    from tqdm.auto import tqdm

    chunks = sources.read_chunks(path, cfg.data_columns, cfg.chunk_rows)  # rows: checked by run()
    with tqdm(unit=" rows", desc=chain.PREDICT, disable=not sys.stderr.isatty()) as progress:
        scored = scored_chunks(chunks, model, cfg, scorer)
        return write_parquet(scored, dst, progress, cfg.chunk_rows, scorer.counted)


def first_chunk_columns(cfg: Config, path: Path) -> list[str]:
    first = next(sources.read_chunks(path, cfg.data_columns, 1), None)
    if first is None or first.empty:
        raise UserError(f"{path.name} has no rows to score")
    return [str(c) for c in first.columns]


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
    tracking.retry_lost_insert_race(lambda: mlflow.log_input(dataset, context="scoring"))
