"""Start a shared MLflow tracking server: SQL backend, proxied artifacts, ``basic-auth``, host checks.

Secrets never reach the command line (where ``ps`` shows them) or the terminal: the admin
password, the Flask secret key and a backend URI that holds a database password travel in the
server's environment, read from the process environment or from a ``.env`` file git ignores.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

from deploy.server import dotenv
from hf_finetune.errors import UserError

SERVER_DIR = Path(__file__).resolve().parent
DEFAULT_ENV_FILE = SERVER_DIR / ".env"
DEFAULT_DATA_DIR = SERVER_DIR / "data"

ADMIN_USERNAME = "MLFLOW_AUTH_ADMIN_USERNAME"
ADMIN_PASSWORD = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY = "MLFLOW_FLASK_SERVER_SECRET_KEY"
BACKEND_URI = "MLFLOW_BACKEND_STORE_URI"  # mlflow server reads it from the environment
AUTH_DB_URI = "PIPELINE_AUTH_DB_URI"  # where basic-auth keeps users and permissions
KEYS = (ADMIN_USERNAME, ADMIN_PASSWORD, SECRET_KEY, BACKEND_URI, AUTH_DB_URI)
MIN_PASSWORD_LENGTH = 12  # the auth app refuses shorter ones
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 2
    data_dir: Path = DEFAULT_DATA_DIR
    artifacts_destination: str = ""  # default: <data_dir>/artifacts
    allowed_hosts: str = ""  # default: MLflow's (localhost and private addresses)
    cors_allowed_origins: str = ""
    default_permission: str = "READ"
    auth_cache_ttl: int = 30


# ----------------------------------------------------------------------------- pure functions
def check_password(password: str, what: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(
            f"{what} has {len(password)} characters; MLflow's auth app needs at least "
            f"{MIN_PASSWORD_LENGTH}: choose a longer one (or let `init` / `rotate-admin-password` make one)"
        )


def auth_ini(database_uri: str, admin_username: str, default_permission: str, cache_ttl: int) -> str:
    """The basic-auth config file. The admin password is not in it: it comes from the environment."""
    if default_permission not in PERMISSIONS:
        raise UserError(
            f"unknown default permission {default_permission!r}: use one of {', '.join(PERMISSIONS)}"
        )
    return "\n".join(
        [
            "[mlflow]",
            f"default_permission = {default_permission}",
            f"database_uri = {database_uri}",
            f"admin_username = {admin_username}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            # Checking a password costs ~1.5 s of PBKDF2 on a small CPU, for every request:
            # cache a good check for a while. The price: after a password change, a worker that
            # did not handle the change may accept the old password for up to this many seconds.
            f"auth_cache_ttl_seconds = {cache_ttl}",
            "",
        ]
    )


def server_command(opts: ServerOptions) -> list[str]:
    """The ``mlflow server`` command line. No secret is on it."""
    artifacts = opts.artifacts_destination or str(opts.data_dir / "artifacts")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        opts.host,
        "--port",
        str(opts.port),
        "--workers",
        str(opts.workers),
        # clients send artifacts and models through the server, which writes them here
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
    ]
    if opts.allowed_hosts:
        command += ["--allowed-hosts", opts.allowed_hosts]
    if opts.cors_allowed_origins:
        command += ["--cors-allowed-origins", opts.cors_allowed_origins]
    return command


def server_env(
    values: Mapping[str, str], opts: ServerOptions, ini_path: Path, base: Mapping[str, str]
) -> dict[str, str]:
    """The server's environment: ``base`` plus the secrets and the auth config's path."""
    password = values.get(ADMIN_PASSWORD, "")
    if not password:
        raise UserError(
            f"no admin password: set {ADMIN_PASSWORD}, or run `python -m deploy.server init` "
            "to write a generated one to the .env file"
        )
    check_password(password, ADMIN_PASSWORD)
    if not values.get(SECRET_KEY):
        raise UserError(
            f"no {SECRET_KEY} (basic-auth signs its forms with it): set it, or run "
            "`python -m deploy.server init`"
        )
    env = dict(base)
    env.update(
        {
            ADMIN_PASSWORD: password,
            ADMIN_USERNAME: values.get(ADMIN_USERNAME) or "admin",
            SECRET_KEY: values[SECRET_KEY],
            BACKEND_URI: values.get(BACKEND_URI) or f"sqlite:///{opts.data_dir / 'mlflow.db'}",
            "MLFLOW_AUTH_CONFIG_PATH": str(ini_path),
        }
    )
    return env


def redact(uri: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    scheme, sep, rest = uri.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return uri
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


# ----------------------------------------------------------------------------- commands
def init(env_file: Path) -> None:
    """Write a generated admin password and secret key to ``env_file``; keep values already there."""
    present = dotenv.read(env_file)
    new = {}
    if not present.get(ADMIN_PASSWORD):
        new[ADMIN_PASSWORD] = secrets.token_urlsafe(24)
    if not present.get(SECRET_KEY):
        new[SECRET_KEY] = secrets.token_hex(32)
    if not new:
        print(f"server: {env_file} already has an admin password and a secret key; nothing changed")
        return
    dotenv.write(env_file, new)
    print(f"server: wrote {', '.join(new)} to {env_file} (mode 0600; git ignores it)")


def start(opts: ServerOptions, env_file: Path, print_only: bool = False) -> int:
    """Write the auth config and replace this process with ``mlflow server``."""
    values = dotenv.settings(env_file, KEYS)
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    ini_path = opts.data_dir / "basic_auth.ini"
    env = server_env(values, opts, ini_path, os.environ)
    auth_db = values.get(AUTH_DB_URI) or f"sqlite:///{opts.data_dir / 'basic_auth.db'}"
    ini = auth_ini(auth_db, env[ADMIN_USERNAME], opts.default_permission, opts.auth_cache_ttl)
    dotenv.write_private(ini_path, ini)  # it may hold a database password
    command = server_command(opts)
    print(f"server: backend store {redact(env[BACKEND_URI])}, users in {redact(auth_db)}", flush=True)
    print("server: " + " ".join(command[1:]), flush=True)
    if print_only:
        return 0
    os.execve(command[0], command, env)
    return 0  # pragma: no cover - execve does not return
