"""The bundled data: the real SMS Spam Collection, unchanged, read as the UCI file is laid out."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd
import pytest

from hf_finetune import corpus, sources
from hf_finetune.config import Config
from hf_finetune.profiles import load_config
from hf_finetune.settings import BUNDLED_DATA, PROJECT_DIR

FOLDER = PROJECT_DIR / "data" / "sms-spam-collection"


@pytest.fixture(scope="module")
def bundled() -> pd.DataFrame:
    path = sources.resolve_data_path(Config().data)
    assert path is not None
    return sources.read_file(path, Config().data_columns)


def test_the_file_is_the_uci_corpus_byte_for_byte_with_its_attribution() -> None:
    readme = (FOLDER / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"sha256: `([0-9a-f]{64})`", readme)
    assert stated, "the README states the file's sha256"
    assert hashlib.sha256((PROJECT_DIR / BUNDLED_DATA).read_bytes()).hexdigest() == stated.group(1)
    for words in ("CC BY 4.0", "Almeida", "Gómez Hidalgo", "UCI"):
        assert words in readme


def test_every_line_is_read_as_a_label_and_a_text(bundled: pd.DataFrame) -> None:
    lines = (PROJECT_DIR / BUNDLED_DATA).read_text(encoding="utf-8").splitlines()
    assert len(bundled) == len(lines) == 5574
    assert bundled["label"].value_counts().to_dict() == {"ham": 4827, "spam": 747}
    # no quoting in a tsv: a message that starts or ends with a quote keeps it, whole
    quoted = [line.split("\t", 1)[1] for line in lines if '"' in line]
    assert len(quoted) > 50 and set(quoted) <= set(bundled["text"])


def test_every_profile_but_smoke_trains_on_the_whole_real_corpus() -> None:
    for profile in ("local", "cuda", "mps"):
        cfg = load_config(profile)
        assert (cfg.data, cfg.data_columns, cfg.max_rows) == (BUNDLED_DATA, "label,text", 0), profile


def test_cleaning_keeps_the_first_of_each_repeated_text(bundled: pd.DataFrame) -> None:
    cleaned, stats = corpus.clean(bundled, "text", "label")
    assert stats.dropped_duplicate == 414 and stats.conflicting_duplicates == 0
    assert len(cleaned) == 5160 and cleaned["text"].is_unique


def test_probe_messages_are_not_in_the_bundled_data(bundled: pd.DataFrame) -> None:
    probe = pd.read_csv(Path(PROJECT_DIR) / "data" / "probe_sms.csv", dtype=str, keep_default_na=False)
    assert len(probe) == 50
    assert not set(probe["text"].str.lower()) & set(bundled["text"].str.lower())
