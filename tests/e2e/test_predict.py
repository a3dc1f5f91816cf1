"""End to end: ``mlflow run . -e predict`` with the session's smoke champion, its lineage back
to the training chain, and engine spark on a real local Spark session giving local's labels.

Spark needs Java 17; without it the Spark test is skipped with that reason, unless
``PIPELINE_REQUIRE_SPARK`` is set (CI sets it, and installs Java), which makes it a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from hf_finetune.chain import STEPS
from hf_finetune.settings import BUNDLED_DATA, BUNDLED_DATA_COLUMNS, PROJECT_DIR
from hf_finetune.tags import MODEL_VERSION_TAG, STEP_TAG
from steps import predict
from tests.recorded import java_17_or_newer

pytestmark = pytest.mark.slow
MODEL = "sms-spam-classifier"  # what the smoke main registers


def some_messages(folder: Path, rows: int = 240) -> Path:
    """The first ``rows`` messages of the bundled corpus with an id, as a csv with a header."""
    names = BUNDLED_DATA_COLUMNS.split(",")
    frame = pd.read_csv(PROJECT_DIR / BUNDLED_DATA, sep="\t", names=names, quoting=3, nrows=rows, dtype=str)
    frame.insert(0, "id", range(rows))
    path = folder / "messages.csv"
    frame.to_csv(path, index=False)
    return path


def predict_run() -> mlflow.entities.Run:
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments, f"tags.`{STEP_TAG}` = 'predict'", max_results=1)
    return run


def test_mlflow_run_e_predict_scores_a_file_with_the_champion_and_leads_to_its_chain(
    pipeline: str, tmp_path: Path
) -> None:
    data = some_messages(tmp_path)
    out = tmp_path / "scored.parquet"
    bin_dir = os.path.dirname(sys.executable)  # `mlflow run` starts `python` from PATH
    env = os.environ | {"PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    command = [os.path.join(bin_dir, "mlflow"), "run", str(PROJECT_DIR), "--env-manager", "local", "-e"]
    done = subprocess.run(
        [*command, "predict", "-P", f"data={data}", "-P", f"output={out}", "-P", "profile=smoke"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scored = pd.read_parquet(out)
    assert scored["id"].astype(int).tolist() == list(range(240))
    run = predict_run()
    champion = mlflow.MlflowClient().get_model_version_by_alias(MODEL, "champion")
    assert run.data.tags[MODEL_VERSION_TAG] == str(champion.version)
    assert run.data.params["output"] == str(out)
    # the smoke champion learned something: most of these real messages get their real label
    assert (scored["label"] == scored["input_label"]).mean() > 0.8

    lineage = subprocess.run(
        [sys.executable, "-m", "steps.lineage", run.info.run_id], capture_output=True, text=True, env=env
    )
    assert lineage.returncode == 0, lineage.stderr
    printed = lineage.stdout.splitlines()
    assert printed[1].startswith(f"{MODEL} v{champion.version}")
    assert [line.split()[0] for line in printed if line and not line.startswith(" ")][2:] == list(STEPS[:5])


def test_engine_spark_gives_the_labels_of_engine_local_on_a_real_spark_session(
    pipeline: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not java_17_or_newer() and not os.environ.get("PIPELINE_REQUIRE_SPARK"):
        pytest.skip("engine spark needs Java 17 or newer (apt-get install openjdk-17-jre-headless)")
    pytest.importorskip("pyspark", reason="engine spark needs pip install -e '.[spark]'")
    data = some_messages(tmp_path)
    common = ["--profile", "smoke", "--data", str(data)]
    assert predict.main([*common, "--output", str(tmp_path / "local.parquet")]) == 0
    assert predict.main([*common, "--output", str(tmp_path / "spark"), "--engine", "spark"]) == 0
    assert predict_run().data.metrics["rows_scored"] == 240
    local = pd.read_parquet(tmp_path / "local.parquet").set_index("id")
    spark = pd.read_parquet(tmp_path / "spark")
    assert sorted(spark.columns) == sorted(["id", "text", "input_label", "label", "score"])
    spark = spark.set_index("id").loc[local.index]  # Spark keeps no row order across its files
    assert spark["label"].tolist() == local["label"].tolist()
    assert (spark["score"] - local["score"]).abs().max() < 1e-4  # padding differs, the model does not

    # the same through URIs, as on a cluster (hdfs://, s3a://, dbfs:/): Hadoop's file systems
    uri = (tmp_path / "by-uri").as_uri()
    by_uri = [*common[:2], "--data", data.as_uri(), "--output", uri, "--engine", "spark"]
    assert predict.main(by_uri) == 0
    capsys.readouterr()
    assert predict.main(by_uri) == 2  # it exists now
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err == f"predict: error: output {uri!r} exists: pass another path, or -P overwrite=true to replace it"
    )
    assert predict.main([*by_uri, "--overwrite", "true"]) == 0
    again = pd.read_parquet(tmp_path / "by-uri").set_index("id").loc[local.index]
    assert again["label"].tolist() == local["label"].tolist()
    tags = predict_run().data.tags
    assert tags[predict.INPUT_DIGEST_OF_TAG] == "names, sizes and modification times of its files"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
