"""The shared tracking server: a real ``mlflow server`` with basic-auth on a free loopback port.

Started with ``python -m deploy.server`` exactly as the README says, stopped after the tests.
Pipelines through it: tests/e2e/test_server_pipelines.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow.exceptions import MlflowException

from deploy.server import dotenv, launcher
from tests.conftest import PROJECT_DIR
from tests.server import SEARCH, Server, as_user, running_server, server_tool


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
    from hf_finetune.errors import UserError

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
