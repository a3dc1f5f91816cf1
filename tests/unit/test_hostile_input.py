"""Odd and hostile data files: each is read correctly (and the result checked) or refused in one line.

What prepare does with each (README, "Failure behaviour"): BOM, CRLF, quoted newlines, emoji and
right-to-left scripts, 1 MB texts, int and string labels, stray whitespace and case in labels,
missing texts are handled; non-UTF-8 bytes, values of the wrong type, directories and symbolic
link loops are refused with one line that says what to do. Nothing here trains: the full
``main`` on refused data is in ``tests/unit/test_bad_input.py`` (exit 2, nothing registered).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from hf_finetune import corpus, sources
from hf_finetune.errors import UserError
from hf_finetune.settings import BUNDLED_BASE_MODEL
from hf_finetune.tasks import registry
from hf_finetune.tasks.text_classification import classifier
from steps import tokenize

HAM = [f"see you at {i} tonight" for i in range(12)]
SPAM = [f"claim your prize {i} now" for i in range(12)]


def prepared(path: Path) -> pd.DataFrame:
    """What prepare makes of a file: read, then cleaned (texts, normalised labels)."""
    found = sources.resolve_data_path(str(path))
    assert found is not None
    cleaned, _ = corpus.clean(sources.read_file(found), "text", "label")
    return cleaned


def csv_bytes(rows: list[tuple[str, str]], newline: str = "\n") -> bytes:
    lines = ["text,label"] + [f'"{t.replace(chr(34), chr(34) * 2)}",{label}' for t, label in rows]
    return newline.join(lines).encode() + newline.encode()


def base_rows() -> list[tuple[str, str]]:
    return [(t, "ham") for t in HAM] + [(t, "spam") for t in SPAM]


def test_a_utf8_bom_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + csv_bytes(base_rows()))
    out = prepared(path)
    assert out["text"].iloc[0] == HAM[0] and len(out) == 24


def test_crlf_line_ends_leave_no_carriage_returns(tmp_path: Path) -> None:
    path = tmp_path / "crlf.csv"
    path.write_bytes(csv_bytes(base_rows(), newline="\r\n"))
    out = prepared(path)
    assert not out["text"].str.contains("\r").any() and set(out["label"]) == {"ham", "spam"}
    assert corpus.data_digest(out) == corpus.data_digest(prepared(write(tmp_path, base_rows())))


def write(tmp_path: Path, rows: list[tuple[str, str]], name: str = "plain.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(csv_bytes(rows))
    return path


def test_a_quoted_newline_stays_inside_its_text(tmp_path: Path) -> None:
    rows = [*base_rows(), ('line one\nline two, with "quotes"', "spam")]
    out = prepared(write(tmp_path, rows))
    assert len(out) == 25
    assert out["text"].iloc[-1] == 'line one\nline two, with "quotes"'


def test_a_newline_in_a_text_cannot_forge_the_data_digest() -> None:
    # hashed as "label<TAB>text<NEWLINE>", these two would be the same bytes
    one = pd.DataFrame({"text": ["a\nspam\tb"], "label": ["ham"]})
    two = pd.DataFrame({"text": ["a", "b"], "label": ["ham", "spam"]})
    assert corpus.data_digest(one) != corpus.data_digest(two)


def test_non_utf8_bytes_are_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(csv_bytes(base_rows()) + "caf\xe9 tonight?,ham\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"is not UTF-8 \(byte 0xe9 .*iconv -f latin1 -t utf-8"):
        prepared(path)


def test_emoji_and_right_to_left_texts_survive_byte_for_byte(tmp_path: Path) -> None:
    odd = ["🎉 you won 🎁🎁 click ➡️ now", "مرحبا، هل ستأتي الليلة؟", "שלום, נתראה מחר", "e\u0301 combining"]
    rows = [*base_rows(), *((t, "ham") for t in odd)]
    out = prepared(write(tmp_path, rows))
    assert list(out["text"].iloc[-4:]) == odd
    tokenizer, _, _ = tokenize.load_tokenizer(BUNDLED_BASE_MODEL, registry.TASKS["text-classification"])
    ids = classifier.tokenize_frame(out.tail(4), tokenizer, 32, {"ham": 0, "spam": 1})["input_ids"]
    assert all(len(seq) > 2 for seq in ids)  # more than [CLS] [SEP]


def test_a_one_megabyte_text_is_kept_and_truncated_at_max_length(tmp_path: Path) -> None:
    huge = "win a prize " * (1_000_000 // 12)
    out = prepared(write(tmp_path, [*base_rows(), (huge, "spam")]))
    assert out["text"].str.len().max() == len(huge.strip())
    tokenizer, _, _ = tokenize.load_tokenizer(BUNDLED_BASE_MODEL, registry.TASKS["text-classification"])
    tokens = classifier.tokenize_frame(out.tail(1), tokenizer, 64, {"ham": 0, "spam": 1})
    assert len(tokens["input_ids"].iloc[0]) == 64
    assert tokenize.length_metrics("t", tokens, 64)["t_truncated_share"] == 1.0


def test_int_labels_and_string_labels_are_the_same_data(tmp_path: Path) -> None:
    ints = tmp_path / "ints.jsonl"
    ints.write_text(
        "".join(json.dumps({"text": t, "label": i}) + "\n" for i, g in enumerate((HAM, SPAM)) for t in g)
    )
    strings = tmp_path / "strings.csv"
    strings.write_bytes(csv_bytes([(t, str(i)) for i, g in enumerate((HAM, SPAM)) for t in g]))
    a, b = prepared(ints), prepared(strings)
    assert set(a["label"]) == {"0", "1"}
    assert corpus.data_digest(a) == corpus.data_digest(b)


def test_labels_with_stray_whitespace_and_case_are_one_class(tmp_path: Path) -> None:
    rows = [(t, v) for t, v in zip(HAM, [" ham", "HAM ", "Ham", "ham\t"] * 3, strict=True)]
    rows += [(t, v) for t, v in zip(SPAM, ["spam", " Spam ", "SPAM"] * 4, strict=True)]
    out = prepared(write(tmp_path, rows))
    assert sorted(out["label"].unique()) == ["ham", "spam"]
    assert out["label"].value_counts().to_dict() == {"ham": 12, "spam": 12}


def test_missing_texts_are_dropped_and_counted_but_the_word_nan_is_a_text(tmp_path: Path) -> None:
    path = tmp_path / "nulls.jsonl"
    records = [{"text": t, "label": "ham"} for t in HAM] + [{"text": t, "label": "spam"} for t in SPAM]
    records += [{"text": None, "label": "spam"}, {"text": float("nan"), "label": "ham"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))  # NaN is written as NaN
    raw = sources.read_file(path)
    out, stats = corpus.clean(raw, "text", "label")
    assert len(out) == 24 and stats.dropped_empty == 2
    csv = write(tmp_path, [*base_rows(), ("NaN", "ham"), ("None", "ham")], "words.csv")
    assert {"NaN", "None"} <= set(prepared(csv)["text"])  # real messages, not missing values


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("text", list(range(24)), r"column 'text' should hold text \(strings\) but row 0 holds int64 0"),
        ("text", [b"bytes"] * 24, r"column 'text' should hold text .* holds bytes"),
        ("label", [[0, 1]] * 24, r"column 'label' should hold labels .* holds ndarray"),
    ],
)
def test_a_parquet_file_with_the_wrong_types_is_refused(
    tmp_path: Path, column: str, values: list, message: str
) -> None:
    frame = pd.DataFrame({"text": HAM + SPAM, "label": ["ham"] * 12 + ["spam"] * 12})
    frame[column] = values
    path = tmp_path / "typed.parquet"
    frame.to_parquet(path)
    with pytest.raises(UserError, match=message):
        prepared(path)


def test_a_parquet_file_with_float_labels_of_an_int_column_with_gaps_reads_as_ints(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": [*HAM, *SPAM, "no label"], "label": [0.0] * 12 + [1.0] * 12 + [None]})
    path = tmp_path / "gaps.parquet"
    frame.to_parquet(path)
    assert sorted(prepared(path)["label"].unique()) == ["0", "1"]


def test_a_directory_named_like_a_data_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.csv").mkdir()
    with pytest.raises(UserError, match=r"is a directory: pass a file"):
        prepared(tmp_path / "data.csv")


def test_a_symbolic_link_loop_is_refused_as_a_loop(tmp_path: Path) -> None:
    os.symlink(tmp_path / "b.csv", tmp_path / "a.csv")
    os.symlink(tmp_path / "a.csv", tmp_path / "b.csv")
    with pytest.raises(UserError, match=r"is a loop of symbolic links: point --data at the real file"):
        sources.resolve_data_path(str(tmp_path / "a.csv"))


def test_a_dangling_symbolic_link_names_its_target(tmp_path: Path) -> None:
    os.symlink(tmp_path / "gone.csv", tmp_path / "link.csv")
    with pytest.raises(UserError, match=r"symbolic link to '.*gone.csv', which does not exist"):
        sources.resolve_data_path(str(tmp_path / "link.csv"))


def test_a_symbolic_link_to_a_real_file_is_followed(tmp_path: Path) -> None:
    os.symlink(write(tmp_path, base_rows()), tmp_path / "link.csv")
    assert len(prepared(tmp_path / "link.csv")) == 24
