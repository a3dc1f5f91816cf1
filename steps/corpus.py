"""A labelled text corpus: read from a file or the hub, checked, cleaned, deduplicated and split.

The ``prepare`` step logs what this produces; ``evaluate`` reads its probe set with it, and
``main`` checks a data file with it before any run starts.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from steps.config import PROJECT_DIR, Config
from steps.errors import UserError

FILE_READERS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclasses.dataclass(frozen=True)
class CleanStats:
    rows_read: int
    dropped_missing_label: int
    dropped_empty: int
    dropped_duplicate: int
    conflicting_duplicates: int
    rows_clean: int


# ----------------------------------------------------------------------------- pure functions
def normalise_label(value: object) -> str:
    """Labels become trimmed, lower-case strings; 1.0 (an int column with gaps) becomes "1"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().lower()


def clean(df: pd.DataFrame, text_column: str, label_column: str) -> tuple[pd.DataFrame, CleanStats]:
    """Select and normalise the two columns; drop missing labels, empty texts and duplicate texts."""
    for column in (text_column, label_column):
        if column not in df.columns:
            raise UserError(
                f"column {column!r} not found; the data has columns "
                f"{', '.join(map(str, df.columns))}: set --text_column / --label_column"
            )
    rows_read = len(df)
    check_value_types(df, text_column, label_column)
    out = pd.DataFrame({"text": df[text_column], "label": df[label_column]})
    missing_label = out["label"].isna() | (out["label"].astype(str).str.strip() == "")
    out = out[~missing_label]
    text = out["text"].where(out["text"].notna(), "").astype(str).str.strip()
    empty = text == ""
    out = pd.DataFrame({"text": text[~empty], "label": out["label"][~empty].map(normalise_label)})
    duplicated = out["text"].duplicated(keep="first")
    conflicts = int((out.groupby("text")["label"].nunique() > 1).sum())
    out = out[~duplicated].reset_index(drop=True)
    stats = CleanStats(
        rows_read=rows_read,
        dropped_missing_label=int(missing_label.sum()),
        dropped_empty=int(empty.sum()),
        dropped_duplicate=int(duplicated.sum()),
        conflicting_duplicates=conflicts,
        rows_clean=len(out),
    )
    if out.empty:
        raise UserError(
            f"no usable rows: all {rows_read} texts in column {text_column!r} are empty "
            f"or unlabelled; check --text_column / --label_column"
        )
    classes = sorted(out["label"].unique())
    if len(classes) < 2:
        raise UserError(
            f"only one class ({classes[0]!r}) in column {label_column!r}: a classifier "
            "needs at least two; check --label_column or the data"
        )
    return out, stats


def check_value_types(df: pd.DataFrame, text_column: str, label_column: str) -> None:
    """Texts must be strings and labels scalars (missing values aside): a column of numbers, bytes
    or lists is the wrong column or a broken file, not something to turn into text silently."""
    for column, allowed, what in (
        (text_column, (str,), "text (strings)"),
        (label_column, (str, int, float, bool), "labels (strings or numbers)"),
    ):
        values = df[column]
        wrong = values[values.notna() & ~values.map(lambda v, ok=allowed: isinstance(v, ok))]
        if len(wrong):
            first = wrong.iloc[0]
            raise UserError(
                f"column {column!r} should hold {what} but row {wrong.index[0]} holds "
                f"{type(first).__name__} {str(first)[:40]} ({len(wrong)} such rows): fix the "
                f"file's types or point --{'text' if column == text_column else 'label'}_column "
                "at the right column"
            )


def data_digest(df: pd.DataFrame) -> str:
    """sha256 over the cleaned (text, label) rows in order: the same data in any format, same digest.

    Each row is hashed as a JSON pair, so a text holding a tab or a newline cannot make two
    different row lists hash alike.
    """
    digest = hashlib.sha256()
    for text, label in zip(df["text"], df["label"], strict=True):
        digest.update(json.dumps([label, text], ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def split(
    df: pd.DataFrame, validation_fraction: float, test_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """A seeded, stratified train/validation/test split."""
    from sklearn.model_selection import train_test_split

    counts = df["label"].value_counts()
    smallest = int(counts.min())
    needed = max(3, int(1 / min(validation_fraction, test_fraction)) + 1)
    if smallest < needed:
        rare = [str(label) for label, n in counts.items() if n < needed]
        common_labels = [str(label) for label, n in counts.items() if n >= needed]
        if common_labels and len(rare) <= 3 and counts[rare].sum() <= 3:
            raise UserError(rare_label_message(df, rare, common_labels))
        raise UserError(
            f"class {counts.idxmin()!r} has only {smallest} rows; a stratified split with "
            f"these fractions needs at least {needed} per class: add data or raise "
            "--validation_fraction / --test_fraction"
        )
    rest, test = train_test_split(df, test_size=test_fraction, stratify=df["label"], random_state=seed)
    train, validation = train_test_split(
        rest, test_size=validation_fraction / (1 - test_fraction), stratify=rest["label"], random_state=seed
    )
    return {
        name: part.reset_index(drop=True)
        for name, part in (("train", train), ("validation", validation), ("test", test))
    }


def rare_label_message(df: pd.DataFrame, rare: list[str], common_labels: list[str]) -> str:
    """Why a label that only one or two rows carry is there: most likely a header row read as
    data (the first row's label is one of them), or a typo in the labels."""
    first = df.iloc[0]
    if str(first["label"]) in rare:
        return (
            f"the first row ({first['label']!r}, {str(first['text'])[:40]!r}) looks like a header "
            "read as data: the file has a header row, so set --data_columns '' (or remove the row)"
        )
    where = "; ".join(
        f"{label!r} (on {str(df.loc[df['label'] == label, 'text'].iloc[0])[:30]!r})" for label in rare
    )
    return (
        f"label {where} is not one of the data's classes ({', '.join(common_labels)}) and too rare "
        "to learn: fix those rows (a typo?) or remove them"
    )


def subsample(df: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most ``max_rows`` rows, stratified (``0`` keeps all): for quick runs on big data."""
    if max_rows <= 0 or len(df) <= max_rows:
        return df
    from sklearn.model_selection import train_test_split

    kept, _ = train_test_split(df, train_size=max_rows, stratify=df["label"], random_state=seed)
    return kept.sort_index().reset_index(drop=True)


def split_metrics(splits: dict[str, pd.DataFrame]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, part in splits.items():
        metrics[f"rows_{name}"] = len(part)
        for label, share in part["label"].value_counts(normalize=True).sort_index().items():
            safe = re.sub(r"[^\w.-]", "_", str(label))
            metrics[f"{name}_share_{safe}"] = round(float(share), 6)
    return metrics


# ----------------------------------------------------------------------------- reading
DATASET_CARD_FILE = "dataset.yaml"  # beside a data file: what the model card says of its corpus
DATASET_CARD_KEYS = ("name", "source", "license", "citation", "period", "limits")
DATASET_CARD_MAX_CHARS = 6000  # MLflow keeps 8,000 characters of a tag's value


def dataset_card_file(data: str) -> Path | None:
    """``dataset.yaml`` beside a local data file, if there is one."""
    path = resolve_data_path(data)
    card_file = path.parent / DATASET_CARD_FILE if path is not None and path.is_file() else None
    return card_file if card_file is not None and card_file.is_file() else None


def dataset_card(data: str) -> dict[str, Any]:
    """What ``dataset.yaml`` beside a local data file says of its corpus (name, source, licence,
    citation, period, limits), as text; empty for a hub dataset or a file without one."""
    import yaml

    card_file = dataset_card_file(data)
    if card_file is None:
        return {}
    try:
        loaded = yaml.safe_load(card_file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{card_file} is not valid YAML ({str(exc).splitlines()[0]}): fix or remove it"
        ) from None
    if not isinstance(loaded, dict):
        raise UserError(f"{card_file} is not a mapping of {', '.join(DATASET_CARD_KEYS)}: fix or remove it")
    card: dict[str, Any] = {}
    for key in DATASET_CARD_KEYS:
        value = loaded.get(key)
        if value in (None, "", []):
            continue
        if key == "limits":
            card[key] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        else:
            card[key] = str(value)
    if len(json.dumps(card)) > DATASET_CARD_MAX_CHARS:
        raise UserError(
            f"{card_file} says more than {DATASET_CARD_MAX_CHARS} characters (the run records it as a "
            "tag): shorten it"
        )
    return card


def resolve_data_path(data: str) -> Path | None:
    """The file ``data`` names (relative to cwd, then to the project), or None for a hub id."""
    path = Path(data).expanduser()
    candidates = [path] if path.is_absolute() else [path, PROJECT_DIR / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
        if candidate.is_symlink():  # a link whose target is missing, or a loop of links
            try:
                os.stat(candidate)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UserError(
                        f"data {data!r} is a loop of symbolic links: point --data at the real file"
                    ) from None
            raise UserError(
                f"data {data!r} is a symbolic link to {os.readlink(candidate)!r}, which does not "
                "exist: point --data at the real file"
            )
    if path.suffix.lower() in FILE_READERS or not HUB_ID.match(data):
        raise UserError(
            f"data file {data!r} does not exist: pass --data with a csv, tsv, json, "
            "jsonl or parquet file, or a hub dataset id"
        )
    return None


def column_names(data_columns: str) -> list[str] | None:
    """``"label,text"`` -> ``["label", "text"]``; ``""`` -> None (the file's first row names them)."""
    names = [name.strip() for name in data_columns.split(",") if name.strip()]
    return names or None


def file_kind(path: Path, data_columns: str) -> tuple[str, list[str] | None]:
    """The reader a file needs (csv, tsv, json, jsonl or parquet) and its columns' names if
    ``data_columns`` gives them; a ``UserError`` for a file no reader takes."""
    kind = FILE_READERS.get(path.suffix.lower())
    if path.is_dir():
        raise UserError(f"data {str(path)!r} is a directory: pass a file")
    if kind is None:
        raise UserError(f"cannot read {path.name!r}: use a .csv, .tsv, .json, .jsonl or .parquet file")
    names = column_names(data_columns)
    if names and kind not in ("csv", "tsv"):
        raise UserError(
            f"data_columns {data_columns!r} is for csv/tsv files without a header row; "
            f"a {kind} file names its columns itself: set --data_columns ''"
        )
    return kind, names


def csv_options(kind: str, names: list[str] | None) -> dict[str, Any]:
    """``pandas.read_csv`` arguments for a csv or tsv file: every value a string, "" missing."""
    return {
        "sep": "," if kind == "csv" else "\t",
        "quoting": csv.QUOTE_MINIMAL if kind == "csv" else csv.QUOTE_NONE,
        "header": None if names else "infer",
        "names": names,
        "encoding": "utf-8-sig",
        "dtype": str,
        "keep_default_na": False,
        "na_values": [""],
    }


def check_no_header(frame: pd.DataFrame, names: list[str] | None, path: Path) -> None:
    """With ``data_columns`` set, a first row that repeats the names is a header read as data."""
    if names and [str(v).strip().lower() for v in frame.iloc[:1].to_numpy().ravel()] == [
        n.lower() for n in names
    ]:
        raise UserError(
            f"{path.name}'s first row is {', '.join(names)}: a header row, read as data "
            f"because --data_columns is set; set --data_columns '' to use it as the header"
        )


def read_file(path: Path, data_columns: str = "") -> pd.DataFrame:
    kind, names = file_kind(path, data_columns)
    with read_errors(path, kind, names, data_columns):
        if kind in ("csv", "tsv"):
            frame = pd.read_csv(path, **csv_options(kind, names))
            check_no_header(frame, names, path)
            return frame
        if kind in ("json", "jsonl"):  # dtype=False: a text "0123" stays a string
            return pd.read_json(path, lines=kind == "jsonl" or _looks_like_jsonl(path), dtype=False)
        return pd.read_parquet(path)


def read_chunks(path: Path, data_columns: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The rows of a file, or of a folder of parquet files (in name order), ``chunk_rows`` at a
    time: memory stays flat whatever the file's size, except for a JSON array, read whole."""
    if path.is_dir():
        parts = parquet_parts(path)
        if not parts:
            raise UserError(
                f"data folder {str(path)!r} holds no .parquet files: pass a file or such a folder"
            )
        for part in parts:
            yield from read_chunks(part, "", chunk_rows)
        return
    kind, names = file_kind(path, data_columns)
    with read_errors(path, kind, names, data_columns):
        if kind == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas(types_mapper=pd.ArrowDtype)  # nullable ints stay ints
            return
        if kind == "json" and not _looks_like_jsonl(path):
            whole = pd.read_json(path, dtype=False)
            for start in range(0, len(whole), chunk_rows):
                yield whole.iloc[start : start + chunk_rows].reset_index(drop=True)
            return
        if kind in ("json", "jsonl"):
            with pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows) as reader:
                yield from reader
            return
        with pd.read_csv(path, chunksize=chunk_rows, **csv_options(kind, names)) as reader:
            for number, chunk in enumerate(reader):
                if number == 0:
                    check_no_header(chunk, names, path)
                yield chunk


def parquet_parts(folder: Path) -> list[Path]:
    """The parquet files of a folder and its subfolders (as Spark writes them), in name order."""
    return sorted(p for p in folder.rglob("*.parquet") if p.is_file() and not p.name.startswith((".", "_")))


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's parquet files (each file's name and bytes)."""
    digest = hashlib.sha256()
    files = parquet_parts(path) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def read_errors(path: Path, kind: str, names: list[str] | None, data_columns: str) -> Iterator[None]:
    """A reader's failure as one ``UserError`` line that says what to fix."""
    try:
        yield
    except UserError:
        raise
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{kind} file {str(path)!r} is not UTF-8 (byte 0x{exc.object[exc.start]:02x} cannot be "
            "decoded): re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None
    except pd.errors.ParserError as exc:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if found is None:
            raise UserError(f"cannot read {kind} file {str(path)!r} ({str(exc).strip()[:160]})") from None
        expected, line, saw = found.groups()
        layout = f"the {expected} of --data_columns {data_columns!r}" if names else f"the header's {expected}"
        raise UserError(
            f"line {line} of {path.name} has {saw} {kind} fields, not {layout}: "
            f"fix that line (a stray {'tab' if kind == 'tsv' else 'comma or quote'}?)"
        ) from None
    except (pd.errors.EmptyDataError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot read {kind} file {str(path)!r} ({first[:160]}): check the file "
            "is complete and in that format"
        ) from None


def _looks_like_jsonl(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(1).strip() != b"["


def read_hub(dataset_id: str, split_name: str, label_column: str) -> pd.DataFrame:
    """Load a hub dataset split; ClassLabel columns become their names (0 -> "ham")."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise UserError("reading a hub dataset needs the `datasets` package") from None
    try:
        ds = datasets.load_dataset(dataset_id, split=split_name)
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; all mean "not loadable"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot load hub dataset {dataset_id!r} split {split_name!r} ({first}); "
            "offline, pass a local file with --data instead"
        ) from None
    df = ds.to_pandas()
    feature = ds.features.get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        df[label_column] = [feature.int2str(int(v)) for v in df[label_column]]
    return df


def load(data: str, cfg: Config) -> pd.DataFrame:
    path = resolve_data_path(data)
    return read_file(path, cfg.data_columns) if path else read_hub(data, cfg.hub_split, cfg.label_column)


def prepared(cfg: Config) -> tuple[pd.DataFrame, CleanStats, dict[str, pd.DataFrame]]:
    """The cleaned rows, what cleaning dropped, and the splits; a ``UserError`` for unusable data."""
    cleaned, stats = clean(load(cfg.data, cfg), cfg.text_column, cfg.label_column)
    cleaned = subsample(cleaned, cfg.max_rows, cfg.seed)
    return cleaned, stats, split(cleaned, cfg.validation_fraction, cfg.test_fraction, cfg.seed)
