"""prepare's pure functions and readers: cleaning, splitting, digests, file formats."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from hf_finetune import corpus, sources
from hf_finetune.config import Config
from hf_finetune.errors import UserError


def frame(n_ham: int = 30, n_spam: int = 20) -> pd.DataFrame:
    rows = [(f"see you at {i}", "ham") for i in range(n_ham)]
    rows += [(f"claim prize {i} at example.top", "spam") for i in range(n_spam)]
    return pd.DataFrame(rows, columns=["sms", "kind"])


def test_clean_selects_renames_and_normalises_labels() -> None:
    df = pd.DataFrame({"sms": ["  hi there ", "WIN now"], "kind": [" Ham", "SPAM "], "x": [1, 2]})
    out, stats = corpus.clean(df, "sms", "kind")
    assert list(out.columns) == ["text", "label"]
    assert out.to_dict("records") == [
        {"text": "hi there", "label": "ham"},
        {"text": "WIN now", "label": "spam"},
    ]
    assert stats.rows_read == 2 and stats.rows_clean == 2


def test_clean_drops_and_counts_empty_missing_and_duplicate() -> None:
    df = pd.DataFrame(
        {
            "text": ["a", "  ", None, "a", "b", "c", "d"],
            "label": ["ham", "ham", "spam", "spam", None, "spam", ""],
        }
    )
    out, stats = corpus.clean(df, "text", "label")
    assert list(out["text"]) == ["a", "c"]
    assert (stats.dropped_missing_label, stats.dropped_empty, stats.dropped_duplicate) == (2, 2, 1)
    assert stats.conflicting_duplicates == 1  # "a" was both ham and spam; the first label is kept


def test_integer_labels_become_strings() -> None:
    df = pd.DataFrame({"text": ["x", "y", "z"], "label": [0, 1.0, 1]})
    out, _ = corpus.clean(df, "text", "label")
    assert list(out["label"]) == ["0", "1", "1"]


def test_missing_column_lists_the_columns_that_exist() -> None:
    with pytest.raises(UserError, match=r"column 'message' not found.*sms, kind"):
        corpus.clean(frame(), "message", "kind")


def test_one_class_only_is_an_error() -> None:
    df = pd.DataFrame({"text": ["a", "b"], "label": ["ham", "ham"]})
    with pytest.raises(UserError, match=r"only one class \('ham'\)"):
        corpus.clean(df, "text", "label")


def test_all_texts_empty_is_an_error() -> None:
    df = pd.DataFrame({"text": ["", "  ", None], "label": ["ham", "spam", "ham"]})
    with pytest.raises(UserError, match="no usable rows"):
        corpus.clean(df, "text", "label")


def test_split_is_stratified_seeded_and_disjoint() -> None:
    df, _ = corpus.clean(frame(300, 100), "sms", "kind")
    a = corpus.split(df, 0.1, 0.1, seed=1)
    b = corpus.split(df, 0.1, 0.1, seed=1)
    c = corpus.split(df, 0.1, 0.1, seed=2)
    assert {k: len(v) for k, v in a.items()} == {"train": 320, "validation": 40, "test": 40}
    for part in a.values():
        assert (part["label"] == "spam").mean() == pytest.approx(0.25, abs=0.02)
    texts = [set(part["text"]) for part in a.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert all(a[k].equals(b[k]) for k in a)
    assert not a["test"].equals(c["test"])


def test_split_with_too_few_rows_of_a_class_says_what_to_do() -> None:
    df, _ = corpus.clean(frame(100, 4), "sms", "kind")
    with pytest.raises(UserError, match=r"class 'spam' has only 4 rows"):
        corpus.split(df, 0.1, 0.1, seed=0)


def test_subsample_keeps_class_balance() -> None:
    df, _ = corpus.clean(frame(300, 100), "sms", "kind")
    small = corpus.subsample(df, 100, seed=0)
    assert len(small) == 100 and (small["label"] == "spam").sum() == 25
    assert corpus.subsample(df, 0, seed=0) is df


def test_digest_depends_on_content_not_on_file_format(tmp_path: Path) -> None:
    df = frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    digests = {
        corpus.data_digest(corpus.clean(sources.read_file(tmp_path / name), "sms", "kind")[0])
        for name in ("d.csv", "d.parquet")
    }
    assert len(digests) == 1
    changed = frame()
    changed.loc[0, "kind"] = "spam"
    assert corpus.data_digest(corpus.clean(changed, "sms", "kind")[0]) not in digests


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_supported_format_reads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    df = frame(5, 5)
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif suffix == ".json":
        path.write_text(json.dumps(df.to_dict("records")))
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path, index=False)
    out, _ = corpus.clean(sources.read_file(path), "sms", "kind")
    assert list(out["text"]) == list(df["sms"]) and list(out["label"]) == list(df["kind"])


def test_resolve_data_path_finds_bundled_data_from_any_directory() -> None:
    path = sources.resolve_data_path(Config().data)
    assert path is not None and path.is_file() and path.name == "SMSSpamCollection.tsv"


@pytest.mark.parametrize("data", ["missing.csv", "./nowhere/data.parquet", "/no/such/file.jsonl"])
def test_missing_file_is_an_error(data: str) -> None:
    with pytest.raises(UserError, match=r"data file .* does not exist"):
        sources.resolve_data_path(data)


@pytest.mark.parametrize("data", ["ucirvine/sms_spam", "sms_spam"])
def test_hub_ids_are_recognised(data: str) -> None:
    assert sources.resolve_data_path(data) is None


def test_hub_dataset_offline_is_a_clear_error() -> None:
    with pytest.raises(UserError, match=r"cannot load hub dataset 'ucirvine/sms_spam'.*local file"):
        sources.read_hub("ucirvine/sms_spam", "train")


def test_unreadable_and_wrong_kind_files(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=r"cannot read csv file"):
        sources.read_file(tmp_path / "empty.csv")
    with pytest.raises(UserError, match=r"cannot read parquet file"):
        sources.read_file(tmp_path / "bad.parquet")
    with pytest.raises(UserError, match=r"use a \.csv"):
        sources.read_file(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="is a directory"):
        sources.read_file(tmp_path)


def test_split_metrics_count_rows_and_class_shares() -> None:
    df, _ = corpus.clean(frame(300, 100), "sms", "kind")
    metrics = corpus.split_metrics(corpus.split(df, 0.1, 0.1, seed=0))
    assert metrics["rows_train"] == 320
    assert metrics["test_share_spam"] + metrics["test_share_ham"] == pytest.approx(1.0)
