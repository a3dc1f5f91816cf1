"""The bundled data: big and varied enough to teach meaning, and reproducible from its generator."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from steps.evaluate import keyword_rule
from steps.modeling import classification_metrics

DATA = Path(__file__).resolve().parent.parent / "data"


def _generator():  # data/ is not a package: load the script as a module
    spec = importlib.util.spec_from_file_location("generate_sms", DATA / "generate_sms.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundled() -> pd.DataFrame:
    return pd.read_csv(DATA / "sms_spam.csv", dtype=str, keep_default_na=False)


def test_bundled_csv_is_what_the_generator_writes(tmp_path: Path) -> None:
    out = tmp_path / "sms.csv"
    assert _generator().main(["--out", str(out)]) == 0
    assert out.read_bytes() == (DATA / "sms_spam.csv").read_bytes()


def test_size_labels_and_uniqueness(bundled: pd.DataFrame) -> None:
    assert len(bundled) >= 2000
    assert set(bundled["label"]) == {"ham", "spam"}
    assert bundled["text"].is_unique
    assert 0.2 < (bundled["label"] == "spam").mean() < 0.5


def test_variety_not_a_handful_of_templates(bundled: pd.DataFrame) -> None:
    openings = bundled["text"].str.lower().str.split().str[:3].str.join(" ")
    assert openings.nunique() > 0.3 * len(bundled)
    assert openings.value_counts().iloc[0] < 0.02 * len(bundled)  # no opening dominates
    vocabulary = {word for text in bundled["text"].str.lower() for word in text.split()}
    assert len(vocabulary) > 2500
    lengths = bundled["text"].str.len()
    assert lengths.min() < 30 and lengths.max() > 150
    assert bundled["text"].str.contains(r"https?://|www\.", regex=True).sum() > 100
    assert bundled["text"].str.contains(r"\d").mean() > 0.3
    assert (bundled["text"] == bundled["text"].str.upper()).sum() > 50  # some shouting


@pytest.mark.parametrize(
    ("label", "pattern"),
    [
        ("spam", r"parcel|package|delivery"),
        ("spam", r"new number|new phone"),
        ("spam", r"refund|tax"),
        ("spam", r"crypto|btc|bitcoin|trading"),
        ("spam", r"loan|credit"),
        ("spam", r"whatsapp|telegram"),
        ("ham", r"\bwon\b|\bwin\b"),
        ("ham", r"\bfree\b"),
        ("ham", r"\bclaim\b"),
        ("ham", r"\burgent\b"),
        ("ham", r"parcel|delivery"),
    ],
)
def test_modern_spam_and_promotional_ham_are_both_present(
    bundled: pd.DataFrame, label: str, pattern: str
) -> None:
    part = bundled[bundled["label"] == label]["text"].str.lower()
    assert part.str.contains(pattern, regex=True).sum() >= 10


def test_a_keyword_rule_is_clearly_not_enough(bundled: pd.DataFrame) -> None:
    metrics = classification_metrics(bundled["label"], keyword_rule(bundled["text"]), ["ham", "spam"], "spam")
    assert metrics["f1"] < 0.7


def test_csv_round_trips_through_a_standard_reader() -> None:
    with (DATA / "sms_spam.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {"text", "label"}
