"""Where a labelled corpus comes from: a csv, tsv, json, jsonl or parquet file, or a hub dataset.

Reading only: each kind of file with its own options (a tsv has no quoting; a file without a header
row gets ``data_columns``), in one piece or in chunks for batch scoring, its errors as one line,
and the ``dataset.yaml`` that may describe it. Cleaning and splitting are ``corpus``'s.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from hf_finetune.errors import UserError
from hf_finetune.settings import PROJECT_DIR, Settings

FILE_READERS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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


def read_hub(dataset_id: str, split_name: str) -> pd.DataFrame:
    """Load a hub dataset split; ClassLabel columns become their names (0 -> "ham"): a label
    column, or a completion column of labels."""
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
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.ClassLabel):
            df[name] = [feature.int2str(int(v)) for v in df[name]]
    return df


def load(data: str, cfg: Settings) -> pd.DataFrame:
    path = resolve_data_path(data)
    return read_file(path, cfg.data_columns) if path else read_hub(data, cfg.hub_split)
