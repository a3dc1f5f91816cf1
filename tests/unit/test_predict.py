"""predict, engine local: what it writes and records, in every input format, and every bad input.

The model is a tiny random-init BERT ham/spam classifier logged as log_model logs one and
registered as champion (``tests.recorded.register_tiny_classifier``): it scores in milliseconds,
and what it predicts does not matter here, only that the job carries it through faithfully.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from hf_finetune import scoring
from hf_finetune.tags import MODEL_URI_TAG, MODEL_VERSION_TAG, STEP_TAG
from hf_finetune.tasks.text_classification import task as tc_task
from steps import lineage, predict
from tests.conftest import deleted_unless_a_test_failed, isolated_env, point_hub_cache, use_store
from tests.recorded import register_tiny_classifier

NAME = "tiny-spam"
TEXTS = [
    "WINNER!! Claim your prize: call 09061701461 now",
    "see you at 7, bring the charger",
    "",
    "Your parcel is held: pay the fee at dhl-parcel.help",
    "ok",
    "URGENT! Your mobile number has won £2000. Txt CLAIM to 81010",
    "Are we still on for lunch tomorrow?",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("predict-store")
    with deleted_unless_a_test_failed(request, root), pytest.MonkeyPatch.context() as mp:
        for key, value in isolated_env(root).items():
            mp.setenv(key, value)
        mp.chdir(root)
        point_hub_cache(root, mp)
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        register_tiny_classifier(NAME, root / "tiny", TEXTS)
        yield root


@pytest.fixture
def messages(store: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pd.DataFrame:
    """Point this test at the module's store; a frame of messages with an id and a label."""
    use_store(store, monkeypatch)
    monkeypatch.chdir(tmp_path)
    return pd.DataFrame(
        {
            "id": range(len(TEXTS)),
            "text": TEXTS,
            "label": ["spam", "ham", "ham", "spam", "ham", "spam", "ham"],
        }
    )


def score(tmp_path: Path, data: Path, *extra: str, output: str = "out.parquet") -> int:
    argv = ["--data", str(data), "--registered_model", NAME, "--output", str(tmp_path / output)]
    return predict.main([*argv, *extra])


def written(folder: Path) -> list[str]:
    """What is in a test's folder besides its store and temporary folder."""
    return sorted(p.name for p in folder.iterdir() if p.name not in ("t", "mlflow.db", "mlruns"))


def predict_runs() -> list:
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`{STEP_TAG}` = 'predict'", order_by=["start_time DESC"])


def test_local_writes_every_input_column_then_label_and_positive_score_in_input_order(
    messages: pd.DataFrame, tmp_path: Path
) -> None:
    messages.to_csv(tmp_path / "in.csv", index=False)
    assert score(tmp_path, tmp_path / "in.csv") == 0
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == ["id", "text", "input_label", "label", "score"]
    assert out["id"].astype(int).tolist() == list(range(len(TEXTS)))  # one row per row, in order
    assert out["input_label"].tolist() == messages["label"].tolist()
    assert set(out["label"]) <= {"ham", "spam"}
    assert out["score"].between(0, 1).all()
    # score is P(spam): above one half exactly where the model says spam
    assert ((out["score"] >= 0.5) == (out["label"] == "spam")).all()

    direct = mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict(["" if t is None else t for t in TEXTS])
    assert out["label"].tolist() == direct["label"].tolist()  # the same as the model called alone
    p_spam = direct["score"].where(direct["label"] == "spam", 1 - direct["score"])
    assert (out["score"] - p_spam).abs().max() < 1e-5


def test_the_run_records_model_version_input_output_and_counts(
    messages: pd.DataFrame, tmp_path: Path
) -> None:
    messages.to_csv(tmp_path / "in.csv", index=False)
    assert score(tmp_path, tmp_path / "in.csv") == 0
    run = predict_runs()[0]
    tags, metrics = run.data.tags, run.data.metrics
    assert tags[MODEL_URI_TAG] == f"models:/{NAME}@champion" and tags[MODEL_VERSION_TAG] == "1"
    assert run.info.run_name == "predict"
    assert run.data.params["output"] == str(tmp_path / "out.parquet")
    assert metrics["rows_scored"] == len(TEXTS) and metrics["rows_per_second"] > 0
    assert metrics.get("rows_labelled_ham", 0) + metrics.get("rows_labelled_spam", 0) == len(TEXTS)
    (dataset,) = run.inputs.dataset_inputs
    import hashlib

    sha256 = hashlib.sha256((tmp_path / "in.csv").read_bytes()).hexdigest()
    assert tags[predict.INPUT_DIGEST_TAG] == sha256 and tags[predict.INPUT_DIGEST_OF_TAG] == "bytes"
    assert dataset.dataset.digest == sha256[:32]
    # MLflow keeps one dataset per name and digest: the same bytes elsewhere show the first path
    assert json.loads(dataset.dataset.source)["uri"].endswith("/in.csv")
    # lineage from the run: the version it scored with
    lines = lineage.lineage(run.info.run_id)
    assert lines[0].startswith(f"predict {run.info.run_id}: FINISHED, {len(TEXTS)} rows")
    assert lines[1].startswith(f"{NAME} v1")


def test_the_version_is_the_one_the_alias_named_when_the_job_started_and_stays_traceable(
    messages: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = mlflow.MlflowClient()
    messages.to_csv(tmp_path / "in.csv", index=False)
    first = client.get_model_version(NAME, "1")
    second = str(mlflow.register_model(first.source, NAME).version)
    loaded_from = []
    real = scoring.load_model

    def alias_moves_meanwhile(model: scoring.Model) -> tuple:
        client.set_registered_model_alias(NAME, "champion", second)  # after the job resolved it
        loaded_from.append(model.load_uri)
        return real(model)

    monkeypatch.setattr(predict, "load_model", alias_moves_meanwhile)
    try:
        assert score(tmp_path, tmp_path / "in.csv") == 0
    finally:
        client.set_registered_model_alias(NAME, "champion", "1")
    assert loaded_from == [f"models:/{NAME}/1"]  # scored with the version resolved at the start
    assert predict_runs()[0].data.tags[MODEL_VERSION_TAG] == "1"

    # a version deleted since (version_cleanup) still leads back to where its model was logged
    monkeypatch.setattr(predict, "load_model", real)
    assert (
        score(tmp_path, tmp_path / "in.csv", "--overwrite", "true", "--model_uri", f"models:/{NAME}/{second}")
        == 0
    )
    scored_with_second = predict_runs()[0]
    client.delete_model_version(NAME, second)
    lines = lineage.lineage(scored_with_second.info.run_id)
    assert lines[1] == f"{NAME} v{second} (deleted since; its model was logged by run {first.run_id})"


@pytest.mark.parametrize("kind", ["csv", "tsv-no-header", "jsonl", "json", "parquet", "parquet-folder"])
def test_every_input_format_scores_the_same_rows_and_chunks_change_nothing(
    messages: pd.DataFrame, tmp_path: Path, kind: str
) -> None:
    extra: list[str] = []
    if kind == "csv":
        data = tmp_path / "in.csv"
        messages.to_csv(data, index=False)
    elif kind == "tsv-no-header":
        data = tmp_path / "in.tsv"
        messages.to_csv(data, sep="\t", index=False, header=False)
        extra = ["--data_columns", "id,text,label"]
    elif kind == "jsonl":
        data = tmp_path / "in.jsonl"
        messages.to_json(data, orient="records", lines=True)
    elif kind == "json":
        data = tmp_path / "in.json"
        messages.to_json(data, orient="records")
    elif kind == "parquet":
        data = tmp_path / "in.parquet"
        messages.to_parquet(data)
    else:
        data = tmp_path / "parts"
        data.mkdir()
        messages.iloc[:3].to_parquet(data / "part-0.parquet")
        messages.iloc[3:].to_parquet(data / "part-1.parquet")
        (data / "_SUCCESS").touch()
    assert score(tmp_path, data, *extra, "--chunk_rows", "2", output="small.parquet") == 0
    assert score(tmp_path, data, *extra, output="whole.parquet") == 0
    small, whole = pd.read_parquet(tmp_path / "small.parquet"), pd.read_parquet(tmp_path / "whole.parquet")
    pd.testing.assert_frame_equal(small, whole)
    assert [int(v) for v in whole["id"]] == list(range(len(TEXTS)))
    assert whole["text"].fillna("").tolist() == TEXTS


def test_overwrite_replaces_an_output_and_without_it_nothing_is_touched(
    messages: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messages.to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "out.parquet").write_text("an older result")
    assert score(tmp_path, tmp_path / "in.csv") == 2
    assert capsys.readouterr().err.strip().endswith("or -P overwrite=true to replace it")
    assert (tmp_path / "out.parquet").read_text() == "an older result"
    assert score(tmp_path, tmp_path / "in.csv", "--overwrite", "true") == 0
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == len(TEXTS)


def test_overwrite_never_replaces_a_folder_of_other_files_or_the_input(
    messages: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messages.to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert score(tmp_path, tmp_path / "in.csv", "--overwrite", "true", output="mine") == 2
    assert "it is not replaced even with overwrite=true" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert score(tmp_path, tmp_path / "in.csv", "--overwrite", "true", output="in.csv") == 2
    assert "overlap: the output would replace the input" in capsys.readouterr().err
    assert (tmp_path / "in.csv").read_text() == messages.to_csv(index=False)


def test_input_and_output_that_overlap_are_refused_however_the_paths_are_written(
    messages: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "scored").mkdir()
    messages.to_parquet(tmp_path / "scored" / "part-0.parquet")  # the input inside the output
    data = tmp_path / "scored" / "part-0.parquet"
    assert score(tmp_path, data, "--overwrite", "true", output="scored") == 2
    assert "overlap: the output would replace the input" in capsys.readouterr().err
    (tmp_path / "sub").mkdir()
    assert score(tmp_path, data, "--overwrite", "true", output="sub/../scored/part-0.parquet") == 2
    assert "overlap" in capsys.readouterr().err
    assert pd.read_parquet(data).equals(messages)


def test_rows_that_change_shape_midway_and_a_file_with_no_rows_are_one_line(
    messages: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = messages.to_dict("records")
    records[5]["channel"] = "sms"  # a field the first rows do not have
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert score(tmp_path, tmp_path / "in.jsonl", "--chunk_rows", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar
    assert err == (
        "predict: error: rows 5- of the input have the columns id, text, label, channel, not the "
        "first rows' id, text, label: give every record the same fields"
    )
    assert written(tmp_path) == ["in.jsonl"]
    (tmp_path / "empty.csv").write_text("id,text\n")
    assert score(tmp_path, tmp_path / "empty.csv") == 2
    assert capsys.readouterr().err.strip() == "predict: error: empty.csv has no rows to score"


def test_a_nullable_integer_column_stays_integers_across_chunks(
    messages: pd.DataFrame, tmp_path: Path
) -> None:
    frame = messages.assign(id=pd.array([None, 1, 2, 3, None, 5, 6], dtype="Int64"))
    frame.to_parquet(tmp_path / "in.parquet")
    assert score(tmp_path, tmp_path / "in.parquet", "--chunk_rows", "2") == 0
    import pyarrow.parquet as pq

    assert str(pq.read_schema(tmp_path / "out.parquet").field("id").type) == "int64"
    ids = pd.read_parquet(tmp_path / "out.parquet")["id"]
    assert ids.isna().tolist() == frame["id"].isna().tolist()
    assert ids.dropna().astype(int).tolist() == [1, 2, 3, 5, 6]


def test_a_job_that_fails_midway_leaves_no_output_and_no_temporary_file(
    messages: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages.to_csv(tmp_path / "in.csv", index=False)
    real = scoring.predict_chunk
    calls = []

    def fails_at_the_second_chunk(*args: object, **kwargs: object) -> pd.DataFrame:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the machine went away")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scoring, "predict_chunk", fails_at_the_second_chunk)
    with pytest.raises(RuntimeError, match="went away"):
        score(tmp_path, tmp_path / "in.csv", "--chunk_rows", "3")
    assert written(tmp_path) == ["in.csv"]
    assert predict_runs()[0].info.status == "FAILED"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--data", "nowhere.csv"], "data 'nowhere.csv' does not exist: pass -P data="),
        (["--text_column", "body"], "in.csv has no column 'body'; its columns are id, text, label"),
        (
            ["--model_uri", "models:/no-such-model@champion"],
            "registered model 'no-such-model' does not exist",
        ),
        (
            ["--model_uri", f"models:/{NAME}@gold"],
            f"registered model '{NAME}' has no alias 'gold' (it has @champion (v1))",
        ),
        (["--model_uri", f"models:/{NAME}/99"], f"registered model '{NAME}' has no version 99"),
        (
            ["--model_uri", "runs:/0123456789abcdef/model"],
            "model 'runs:/0123456789abcdef/model' could not be loaded",
        ),
        (["--engine", "dask"], "unknown engine 'dask': use one of local, spark"),
        (
            ["--output", "s3a://bucket/out"],
            "'s3a://bucket/out' is a URI: engine local reads and writes local files",
        ),
        (["--output", ""], "output is not set: pass -P output="),
        (["--output", "no/such/folder/out.parquet"], "output's folder"),
        (["--chunk_rows", "0"], "chunk_rows=0 must be at least 1"),
    ],
)
def test_a_bad_input_is_one_line_exit_2_and_nothing_written_or_run(
    messages: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    messages.to_csv(tmp_path / "in.csv", index=False)
    before = len(predict_runs())
    base = {"--data": str(tmp_path / "in.csv"), "--registered_model": NAME, "--output": "out.parquet"}
    given = dict(zip(argv[::2], argv[1::2], strict=True))
    flat = [item for pair in (base | given).items() for item in pair]
    assert predict.main(flat) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("predict: error: ") and says in err, err
    assert written(tmp_path) == ["in.csv"]
    assert len(predict_runs()) == before


def test_spark_asked_for_but_not_installed_says_how_to_install_it(
    messages: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    messages.to_csv(tmp_path / "in.csv", index=False)
    monkeypatch.setitem(sys.modules, "pyspark", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    assert score(tmp_path, tmp_path / "in.csv", "--engine", "spark") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "predict: error: engine spark needs pyspark: pip install -e '.[spark]' (and Java 17, e.g. "
        "apt-get install openjdk-17-jre-headless), or use -P engine=local"
    )
    assert not (tmp_path / "out.parquet").exists()


def test_pure_helpers() -> None:
    assert scoring.renamed_inputs(["id", "label", "text", "score"], tc_task.OUTPUT_COLUMNS) == {
        "label": "input_label",
        "score": "input_score",
    }
    labels, scores = pd.Series(["spam", "ham"]), pd.Series([0.9, 0.8])
    assert tc_task.positive_scores(labels, scores, "spam").round(6).tolist() == [0.9, 0.2]
    assert tc_task.positive_scores(labels, scores, None).tolist() == [0.9, 0.8]
    assert tc_task.two_class_positive(["ham", "spam"], "spam") == "spam"
    assert tc_task.two_class_positive(["a", "b", "spam"], "spam") is None  # three classes
    assert tc_task.two_class_positive(None, "spam") is None
    assert scoring.metric_name("not spam!") == "rows_labelled_not spam_"
    assert scoring.in_order_of_length(["ccc", "a", "bb"]) == [1, 2, 0]
