"""The shared tracking server: a real ``mlflow server`` with basic-auth on a free loopback port.

Started with ``python -m deploy.server`` exactly as the README says, stopped after the tests.
The pipeline test runs against PostgreSQL when ``PIPELINE_TEST_POSTGRES_URI`` names one (CI starts
it with ``deploy/postgres/start-local.sh``), else against SQLite; ``PIPELINE_REQUIRE_POSTGRES=1``
turns a missing PostgreSQL into a failure instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.exceptions import MlflowException

from deploy.server import dotenv, launcher
from steps import cache, common
from tests.conftest import PROJECT_DIR, isolated_env
from tests.helpers import (
    assert_both_registered_and_the_gate_held,
    child_runs,
    fresh_postgres_database,
)

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


@dataclasses.dataclass
class Server:
    uri: str
    env_file: Path
    data_dir: Path
    log: Path

    def admin_password(self) -> str:
        return dotenv.read(self.env_file)[launcher.ADMIN_PASSWORD]

    def auth_tool(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        return subprocess.run(
            [sys.executable, "-m", "deploy.server.auth", "--env-file", str(self.env_file), *args],
            cwd=PROJECT_DIR,
            input=stdin,
            capture_output=True,
            text=True,
            env=env | {"MLFLOW_TRACKING_URI": self.uri},
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_tool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.server", *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        env=env if env is not None else os.environ.copy(),
    )


@contextlib.contextmanager
def running_server(root: Path, backend_uri: str = "") -> Iterator[Server]:
    """``init`` then ``start`` on a free port; stopped (the whole process group) on exit."""
    env_file = root / ".env"
    assert server_tool("--env-file", str(env_file), "init").returncode == 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_AUTH"))}
    if backend_uri:
        env[launcher.BACKEND_URI] = backend_uri
    # the module's server starts before any test has set TMPDIR: its temporary files (MLflow's
    # lock for making the schema among them) go to its own folder, not the machine's /tmp
    env["TMPDIR"] = isolated_env(root)["TMPDIR"]
    log = root / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "deploy.server", "--env-file", str(env_file), "start"]
            + ["--port", str(port), "--data-dir", str(root / "data"), "--workers", "1"],
            cwd=PROJECT_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{uri}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Server(uri, env_file, root / "data", log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def as_user(server: Server, username: str, password: str) -> Iterator[mlflow.MlflowClient]:
    """An MlflowClient that talks to ``server`` as ``username``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", server.uri)
        mp.setenv("MLFLOW_TRACKING_USERNAME", username)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", password)
        mlflow.set_tracking_uri(server.uri)
        yield mlflow.MlflowClient(tracking_uri=server.uri)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("server")) as started:
        yield started


# ----------------------------------------------------------------------------- no server needed
def test_start_without_a_password_says_how_to_get_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = server_tool("--env-file", str(tmp_path / ".env"), "start", "--print-command", env=env)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "server: error: no admin password: set MLFLOW_AUTH_ADMIN_PASSWORD, or run "
        "`python -m deploy.server init` to write a generated one to the .env file"
    )


def test_a_short_admin_password_or_no_secret_key_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    short = server_tool(
        "--env-file", str(tmp_path / ".env"), "start", env=env | {launcher.ADMIN_PASSWORD: "short-pw"}
    )
    assert short.returncode == 2 and "needs at least 12" in short.stderr
    assert len(short.stderr.strip().splitlines()) == 1
    no_key = server_tool(
        "--env-file", str(tmp_path / ".env"), "start", env=env | {launcher.ADMIN_PASSWORD: "x" * 16}
    )
    assert no_key.returncode == 2 and "MLFLOW_FLASK_SERVER_SECRET_KEY" in no_key.stderr


def test_init_writes_a_private_env_file_once_and_the_command_holds_no_secret(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    assert server_tool("--env-file", str(env_file), "init").returncode == 0
    assert env_file.stat().st_mode & 0o777 == 0o600
    values = dotenv.read(env_file)
    assert len(values[launcher.ADMIN_PASSWORD]) >= 12 and values[launcher.SECRET_KEY]
    assert server_tool("--env-file", str(env_file), "init").returncode == 0
    assert dotenv.read(env_file) == values  # never regenerated over existing ones
    secret_uri = "postgresql://mlflow:db-secret-42@127.0.0.1:5432/mlflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        launcher.BACKEND_URI: secret_uri
    }
    done = server_tool(
        "--env-file",
        str(env_file),
        "start",
        "--print-command",
        "--data-dir",
        str(tmp_path / "data"),
        "--allowed-hosts",
        "mlflow.example.com",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "--app-name basic-auth" in done.stdout and "--allowed-hosts mlflow.example.com" in done.stdout
    assert "--serve-artifacts --artifacts-destination" in done.stdout
    for secret in (values[launcher.ADMIN_PASSWORD], values[launcher.SECRET_KEY], "db-secret-42"):
        assert secret not in done.stdout + done.stderr
    assert "postgresql://mlflow:***@127.0.0.1:5432/mlflow" in done.stdout
    ini = (tmp_path / "data" / "basic_auth.ini").read_text()
    assert "admin_password" not in ini and (tmp_path / "data" / "basic_auth.ini").stat().st_mode & 0o077 == 0


def test_env_file_values_lose_to_the_environment_and_rewrites_keep_other_lines(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# team server\nexport MLFLOW_AUTH_ADMIN_PASSWORD='from file 123'\nOTHER=1\n")
    assert dotenv.settings(env_file, launcher.KEYS, {}) == {launcher.ADMIN_PASSWORD: "from file 123"}
    from_env = dotenv.settings(env_file, launcher.KEYS, {launcher.ADMIN_PASSWORD: "from env 12345"})
    assert from_env[launcher.ADMIN_PASSWORD] == "from env 12345"
    dotenv.write(env_file, {launcher.ADMIN_PASSWORD: "new 'quoted' one"})
    assert dotenv.read(env_file) == {launcher.ADMIN_PASSWORD: "new 'quoted' one", "OTHER": "1"}
    assert env_file.read_text().startswith("# team server\n")


def test_a_malformed_env_file_names_the_line(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("GOOD=1\nthis is not a setting\n")
    from steps.errors import UserError

    with pytest.raises(UserError, match=r"line 2 is not KEY=value"):
        dotenv.read(env_file)


def test_the_auth_tool_needs_a_server_address(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-m", "deploy.server.auth", "--env-file", str(tmp_path / ".env")]
        + ["grant", "alice", "--experiment", "0", "--permission", "READ"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("auth: error: needs the server's address")


# ----------------------------------------------------------------------------- a real server
def test_unauthenticated_and_wrong_password_requests_get_401(server: Server) -> None:
    assert requests.get(server.uri + SEARCH, timeout=30).status_code == 401
    assert (
        requests.get(server.uri + SEARCH, auth=("admin", "wrong-password-1"), timeout=30).status_code == 401
    )
    assert requests.get(server.uri + SEARCH, auth=("admin", server.admin_password()), timeout=30).ok


def test_a_host_header_the_server_does_not_serve_gets_403(server: Server) -> None:
    answer = requests.get(
        server.uri + SEARCH,
        auth=("admin", server.admin_password()),
        headers={"Host": "attacker.example.com"},
        timeout=30,
    )
    assert answer.status_code == 403


def test_a_read_only_user_gets_403_on_register_and_delete_until_granted(server: Server) -> None:
    name = f"guarded-{uuid.uuid4().hex[:6]}"
    with as_user(server, "admin", server.admin_password()) as admin:
        admin.create_registered_model(name)
    created = server.auth_tool("create-user", "reader", "--password-stdin", stdin="reader-password-1\n")
    assert created.returncode == 0, created.stderr
    assert "reader-password-1" not in created.stdout + created.stderr
    with as_user(server, "reader", "reader-password-1") as reader:
        assert reader.get_registered_model(name).name == name  # READ by default
        for attempt in (
            lambda: reader.create_model_version(name, "mlflow-artifacts:/nowhere"),
            lambda: reader.set_registered_model_alias(name, "champion", "1"),
            lambda: reader.delete_registered_model(name),
        ):
            with pytest.raises(MlflowException) as refused:
                attempt()
            assert refused.value.get_http_status_code() == 403
    granted = server.auth_tool("grant", "reader", "--registered-model", name, "--permission", "EDIT")
    assert granted.returncode == 0, granted.stderr
    with as_user(server, "reader", "reader-password-1") as editor:
        editor.set_registered_model_tag(name, "reviewed", "yes")  # EDIT allows this now
        with pytest.raises(MlflowException) as refused:
            editor.delete_registered_model(name)  # ... but deleting needs MANAGE
        assert refused.value.get_http_status_code() == 403
    with as_user(server, "admin", server.admin_password()) as admin:
        assert admin.get_registered_model(name).tags == {"reviewed": "yes"}


def test_grants_on_an_experiment_by_name_and_bad_grants_get_one_line(server: Server) -> None:
    with as_user(server, "admin", server.admin_password()) as admin:
        admin.create_experiment("team-experiment")
    assert (
        server.auth_tool("create-user", "writer", "--password-stdin", stdin="writer-password-1\n").returncode
        == 0
    )
    ok = server.auth_tool("grant", "writer", "--experiment", "team-experiment", "--permission", "EDIT")
    assert ok.returncode == 0 and "writer has EDIT on experiment" in ok.stdout
    missing = server.auth_tool("grant", "writer", "--experiment", "no-such-one", "--permission", "EDIT")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "auth: error: no experiment named 'no-such-one' on the server: pass its exact name or its ID"
    ]
    short = server.auth_tool("create-user", "shorty", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "needs at least 12" in short.stderr


def test_rotating_the_admin_password_refuses_the_old_one(server: Server) -> None:
    old = server.admin_password()
    done = server.auth_tool("rotate-admin-password")
    assert done.returncode == 0, done.stderr
    new = server.admin_password()
    assert new != old and len(new) >= 12
    assert old not in done.stdout + done.stderr and new not in done.stdout + done.stderr
    assert requests.get(server.uri + SEARCH, auth=("admin", old), timeout=30).status_code == 401
    assert requests.get(server.uri + SEARCH, auth=("admin", new), timeout=30).ok
    # the tool, run again, picks the new one up from the .env file
    again = server.auth_tool("create-user", "after-rotation", "--password-stdin", stdin="after-rotation-1\n")
    assert again.returncode == 0, again.stderr


# ----------------------------------------------------------------------------- the pipeline
@pytest.fixture
def backend_uri() -> Iterator[str]:
    """A fresh PostgreSQL database if one is configured, else "" (SQLite)."""
    with fresh_postgres_database() as uri:
        yield uri


@pytest.mark.slow
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
                step = run.data.tags.get(common.STEP_TAG)
                if step not in (None, "main") and cache.REUSED_FROM_TAG not in run.data.tags:
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
                stored = conn.execute(sqlalchemy.text("SELECT count(*) FROM runs")).scalar_one()
                versions = conn.execute(sqlalchemy.text("SELECT count(*) FROM model_versions")).scalar_one()
            engine.dispose()
            assert stored == len(every_run) and versions == 2
