"""Two smoke pipelines at once through a real tracking server with basic-auth.

On PostgreSQL when ``PIPELINE_TEST_POSTGRES_URI`` names one (CI starts it with
``deploy/postgres/start-local.sh``), else on SQLite; ``PIPELINE_REQUIRE_POSTGRES=1`` turns a
missing PostgreSQL into a failure instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from hf_finetune.tags import REUSED_FROM_TAG, STEP_TAG
from tests.conftest import PROJECT_DIR, isolated_env
from tests.recorded import assert_both_registered_and_the_gate_held, child_runs, fresh_postgres_database
from tests.server import as_user, running_server

pytestmark = pytest.mark.slow


@pytest.fixture
def backend_uri() -> Iterator[str]:
    """A fresh PostgreSQL database if one is configured, else "" (SQLite)."""
    with fresh_postgres_database() as uri:
        yield uri


def test_two_smoke_pipelines_at_once_through_the_server_with_credentials(
    tmp_path: Path, backend_uri: str
) -> None:
    """Two ``mlflow run`` at once, same registered model, different learning rates, tolerance 0:
    the registry ends as if they had run one at a time, and no credential is recorded anywhere."""
    with running_server(tmp_path / "server", backend_uri) as srv:
        password = srv.admin_password()
        bin_dir = os.path.dirname(sys.executable)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
            k: v for k, v in isolated_env(tmp_path).items() if not k.startswith("MLFLOW_TRACKING")
        }
        env |= {
            "PATH": bin_dir + os.pathsep + os.environ["PATH"],
            "MLFLOW_TRACKING_URI": srv.uri,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": password,
        }
        command = [os.path.join(bin_dir, "mlflow"), "run", str(PROJECT_DIR), "--env-manager", "local"]
        command += ["-P", "profile=smoke", "-P", "max_rows=200"]
        with as_user(srv, "admin", password) as client:
            client.search_experiments()  # the schema is made once, before the race
        runs = [
            subprocess.Popen(
                command + extra,
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for extra in ([], ["-P", "learning_rate=1e-3"])
        ]
        outputs = [run.communicate(timeout=900)[0] for run in runs]
        for run, output in zip(runs, outputs, strict=True):
            assert run.returncode == 0, output[-4000:]
            assert password not in output
        assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()

        with as_user(srv, "admin", password) as client:
            mains = client.search_runs(["0"], "tags.`pipeline.step` = 'main'")
            assert len(mains) == 2
            for main in mains:
                children = child_runs(main.info.run_id)
                assert len(children) == 8 and all(r.info.status == "FINISHED" for r in children.values())
            assert_both_registered_and_the_gate_held(
                client, "sms-spam-classifier", [m.info.run_id for m in mains]
            )
            every_run = client.search_runs(["0"], max_results=100)
            for run in every_run:  # no credential in any param, tag or logged config
                recorded = " ".join([*run.data.params.values(), *run.data.tags.values()])
                assert password not in recorded
                assert "MLFLOW_TRACKING_PASSWORD" not in recorded
                assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # through the server
                step = run.data.tags.get(STEP_TAG)
                if step not in (None, "main") and REUSED_FROM_TAG not in run.data.tags:
                    config_text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
                    assert password not in config_text
            # the models went through the server into its artifact destination
            version = client.get_model_version_by_alias("sms-spam-classifier", "champion")
            location = client.get_model_version_download_uri("sms-spam-classifier", version.version)
            assert location.startswith("mlflow-artifacts:")
            weights = list((srv.data_dir / "artifacts").rglob("model.safetensors"))
            assert weights, "no weights under the server's --artifacts-destination"
            predicted = mlflow.pyfunc.load_model("models:/sms-spam-classifier@champion").predict(
                ["Your parcel is held, pay the fee at http://dhl-redelivery.example", "see you at 6?"]
            )
            assert set(predicted["label"]) <= {"ham", "spam"}
        if backend_uri:  # the runs really are in PostgreSQL
            import sqlalchemy

            engine = sqlalchemy.create_engine(backend_uri)
            with engine.connect() as conn:
                # the pipeline's experiment (the champion's history keeps its own: registry/history.py)
                stored = conn.execute(
                    sqlalchemy.text("SELECT count(*) FROM runs WHERE experiment_id = 0")
                ).scalar_one()
                versions = conn.execute(sqlalchemy.text("SELECT count(*) FROM model_versions")).scalar_one()
            engine.dispose()
            assert stored == len(every_run) and versions == 2
