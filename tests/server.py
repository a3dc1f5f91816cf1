"""A real ``mlflow server`` with basic-auth, started with ``python -m deploy.server`` on a free port."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests

from deploy.server import dotenv, launcher
from tests.conftest import PROJECT_DIR, isolated_env

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
    with serving(process, uri, log):
        yield Server(uri, env_file, root / "data", log)


@contextlib.contextmanager
def serving(process: subprocess.Popen[bytes], uri: str, log: Path, wait_s: float = 90) -> Iterator[None]:
    """Wait until the server ``process`` (started in a session of its own) answers ``/health`` at
    ``uri``; stop its whole process group on exit. Its log's tail explains a failed start."""
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{uri}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield
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


@contextlib.contextmanager
def model_server(model_uri: str, log: Path) -> Iterator[str]:
    """``mlflow models serve`` of ``model_uri`` from the environment's tracking store, in this
    Python (``--env-manager local``): its base URL, once it answers; stopped on exit."""
    port = free_port()
    bin_dir = os.path.dirname(sys.executable)
    env = os.environ | {"PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    command = [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    with serving(process, uri, log, wait_s=180):  # it imports MLflow and loads the model first
        yield uri
