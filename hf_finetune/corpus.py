"""A text corpus, once read (``sources``): checked, cleaned, deduplicated, digested and split.

The rows are the task's (``Task.clean``: texts and labels, or prompts and completions); cleaning
labelled texts is here, beside what every task's rows share (digest, subsample, split). The
``prepare`` step logs what this produces; the text-classification task cleans its probe set with
it, and ``main`` checks a data file with it before any run starts.
"""

from __future__ import annotations

import hashlib
import json
import re

import pandas as pd

from hf_finetune.errors import UserError
from hf_finetune.settings import Settings
from hf_finetune.sources import load
from hf_finetune.tasks.base import CleanStats, Task

__all__ = ["CleanStats"]  # declared with the task seam: every task's clean() returns one


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


def data_digest(df: pd.DataFrame, columns: tuple[str, str] = ("label", "text")) -> str:
    """sha256 over the cleaned rows in order (the pair of ``columns`` of each: a label and its
    text, or a prompt and its completion): the same data in any format, same digest.

    Each row is hashed as a JSON pair, so a text holding a tab or a newline cannot make two
    different row lists hash alike.
    """
    digest = hashlib.sha256()
    first, second = columns
    for a, b in zip(df[first], df[second], strict=True):
        digest.update(json.dumps([a, b], ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def split(
    df: pd.DataFrame,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: str | None = "label",
) -> dict[str, pd.DataFrame]:
    """A seeded train/validation/test split, stratified by the column ``stratify`` names."""
    from sklearn.model_selection import train_test_split

    if stratify is None:
        rest, test = train_test_split(df, test_size=test_fraction, random_state=seed)
        train, validation = train_test_split(
            rest, test_size=validation_fraction / (1 - test_fraction), random_state=seed
        )
        return {
            name: part.reset_index(drop=True)
            for name, part in (("train", train), ("validation", validation), ("test", test))
        }
    if stratify != "label":  # (a column of another name; the error messages below speak of labels)
        parts = split(df.rename(columns={stratify: "label"}), validation_fraction, test_fraction, seed)
        return {name: part.rename(columns={"label": stratify}) for name, part in parts.items()}
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


def subsample(df: pd.DataFrame, max_rows: int, seed: int, stratify: str | None = "label") -> pd.DataFrame:
    """At most ``max_rows`` rows, stratified (``0`` keeps all): for quick runs on big data."""
    if max_rows <= 0 or len(df) <= max_rows:
        return df
    from sklearn.model_selection import train_test_split

    by = df[stratify] if stratify else None
    kept, _ = train_test_split(df, train_size=max_rows, stratify=by, random_state=seed)
    return kept.sort_index().reset_index(drop=True)


def split_metrics(splits: dict[str, pd.DataFrame], stratify: str | None = "label") -> dict[str, float]:
    """Rows per split and, for a stratified split, the share of each value in each."""
    metrics: dict[str, float] = {}
    for name, part in splits.items():
        metrics[f"rows_{name}"] = len(part)
        if stratify is None:
            continue
        for label, share in part[stratify].value_counts(normalize=True).sort_index().items():
            safe = re.sub(r"[^\w.-]", "_", str(label))
            metrics[f"{name}_share_{safe}"] = round(float(share), 6)
    return metrics


# ----------------------------------------------------------------------------- reading


def prepared(cfg: Settings, task: Task) -> tuple[pd.DataFrame, CleanStats, dict[str, pd.DataFrame]]:
    """The task's cleaned rows, what cleaning dropped, and the splits (stratified by the column
    ``stratified_by`` names, or at random); a ``UserError`` for unusable data."""
    cleaned, stats = task.clean(load(cfg.data, cfg), cfg)
    by = task.stratify_by(cleaned)
    cleaned = subsample(cleaned, cfg.max_rows, cfg.seed, by)
    splits = split(cleaned, cfg.validation_fraction, cfg.test_fraction, cfg.seed, by)
    cleaned.attrs[STRATIFIED_BY] = by
    return cleaned, stats, splits


STRATIFIED_BY = "stratified_by"  # the cleaned rows' attribute: the column the split kept in proportion


def stratified_by(cleaned: pd.DataFrame) -> str | None:
    """The column ``prepared`` stratified its split by (None: a random split)."""
    return cleaned.attrs.get(STRATIFIED_BY)
