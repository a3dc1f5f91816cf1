"""python -m deploy.server.auth: users and permissions on the tracking server, as its admin.

  rotate-admin-password              new generated admin password, set on the server, saved to .env
  create-user NAME                   password from stdin (--password-stdin) or a prompt
  set-password NAME                  an admin reset of someone's password (stdin or prompt)
  grant NAME (--experiment E | --registered-model M) --permission READ|EDIT|MANAGE|NO_PERMISSIONS

Talks to the server through MLflow's own auth client (``mlflow.server.get_app_client``).
Server: --tracking-uri, else MLFLOW_TRACKING_URI. Admin credentials: MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD if set, else the admin user and MLFLOW_AUTH_ADMIN_PASSWORD from the
environment or the .env file. No password is ever printed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deploy.server import dotenv, launcher
from hf_finetune.errors import UserError

RESOURCE_EXPERIMENT = "experiment"
RESOURCE_MODEL = "registered_model"
GRANTABLE = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


# ----------------------------------------------------------------------------- helpers
@contextmanager
def credentials(username: str, password: str) -> Iterator[None]:
    """MLflow's clients read basic-auth credentials from these variables; set them for a while."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"] = username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def admin_credentials(env_file: Path) -> tuple[str, str]:
    if os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    values = dotenv.settings(env_file, launcher.KEYS)
    password = values.get(launcher.ADMIN_PASSWORD)
    if not password:
        raise UserError(
            f"no admin credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
            f"or {launcher.ADMIN_PASSWORD} (in the environment or {env_file})"
        )
    return values.get(launcher.ADMIN_USERNAME) or "admin", password


def read_new_password(from_stdin: bool, who: str) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"new password for {who}: ")
        if getpass.getpass("again: ") != password:
            raise UserError("the two passwords differ: try again")
    launcher.check_password(password, f"the password for {who}")
    return password


def explain(exc: Exception, uri: str) -> UserError:
    """One line for what the server said."""
    text = str(exc)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if "401" in text or status == 401 or "UNAUTHENTICATED" in text:
        return UserError(f"{uri} refused the admin credentials (401): check the admin password")
    if "403" in text or status == 403 or "PERMISSION_DENIED" in text:
        return UserError(f"{uri} says the user given is not allowed to do this (403): use the admin")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return UserError(f"{uri}: {first[:300]}")


def experiment_id(name_or_id: str) -> str:
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name_or_id)
    if found is not None:
        return str(found.experiment_id)
    if name_or_id.isdigit():
        return str(client.get_experiment(name_or_id).experiment_id)
    raise UserError(f"no experiment named {name_or_id!r} on the server: pass its exact name or its ID")


# ----------------------------------------------------------------------------- commands
def rotate_admin_password(
    client: Any, username: str, old: str, env_file: Path, new: str | None, shell_has_old: bool = False
) -> None:
    """Set a new admin password on the server and in ``env_file``.

    The server changes first: if that fails, nothing changed anywhere; if saving the file fails
    afterwards, the error says so, and the old password no longer works.
    """
    new = new or secrets.token_urlsafe(24)
    launcher.check_password(new, "the new admin password")
    client.update_user_password(username, new, current_password=old)
    try:
        dotenv.write(env_file, {launcher.ADMIN_PASSWORD: new})
    except OSError as exc:
        raise UserError(
            f"the server has the new password but {env_file} could not be written ({exc}): "
            "run rotate-admin-password again with MLFLOW_TRACKING_PASSWORD set to it"
        ) from None
    print(f"auth: the admin password was changed on the server and saved to {env_file}")
    if shell_has_old:
        print("auth: your shell still holds the old password in its environment: unset or update it")


def grant(client: Any, username: str, resource: str, resource_id: str, permission: str) -> None:
    client.grant_user_permission(username, resource, resource_id, permission)
    print(f"auth: {username} has {permission} on {resource} {resource_id}")


def main(argv: list[str] | None = None) -> int:
    # MLflow 3.17's server module warns about starlette on import; not the user's business
    warnings.filterwarnings("ignore", message=r"starlette\.middleware\.wsgi is deprecated")
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    parser = argparse.ArgumentParser(
        prog="python -m deploy.server.auth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", ""))
    parser.add_argument("--env-file", type=Path, default=launcher.DEFAULT_ENV_FILE)
    commands = parser.add_subparsers(dest="command", required=True)
    rotate = commands.add_parser("rotate-admin-password", help="generate, set and save a new one")
    rotate.add_argument("--password-stdin", action="store_true", help="read the new one from stdin")
    for name in ("create-user", "set-password"):
        sub = commands.add_parser(name)
        sub.add_argument("username")
        sub.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    give = commands.add_parser("grant", help="give a user a permission on an experiment or a model")
    give.add_argument("username")
    target = give.add_mutually_exclusive_group(required=True)
    target.add_argument("--experiment", help="experiment name or ID")
    target.add_argument("--registered-model", help="registered model name")
    give.add_argument("--permission", required=True, choices=GRANTABLE)
    args = parser.parse_args(argv)

    uri = args.tracking_uri
    shell_has_old = any(os.environ.get(k) for k in (launcher.ADMIN_PASSWORD, "MLFLOW_TRACKING_PASSWORD"))
    try:
        if not uri.startswith(("http://", "https://")):
            raise UserError(
                "needs the server's address: pass --tracking-uri http://host:port or set MLFLOW_TRACKING_URI"
            )
        mlflow.set_tracking_uri(uri)
        username, password = admin_credentials(args.env_file)
        client = get_app_client("basic-auth", tracking_uri=uri)
        with credentials(username, password):
            if args.command == "rotate-admin-password":
                new = read_new_password(True, username) if args.password_stdin else None
                rotate_admin_password(client, username, password, args.env_file, new, shell_has_old)
            elif args.command == "create-user":
                client.create_user(args.username, read_new_password(args.password_stdin, args.username))
                print(f"auth: created user {args.username} (default permission until granted more)")
            elif args.command == "set-password":
                client.update_user_password(
                    args.username, read_new_password(args.password_stdin, args.username)
                )
                print(f"auth: changed the password of {args.username}")
            elif args.experiment:
                grant(
                    client,
                    args.username,
                    RESOURCE_EXPERIMENT,
                    experiment_id(args.experiment),
                    args.permission,
                )
            else:
                grant(client, args.username, RESOURCE_MODEL, args.registered_model, args.permission)
    except UserError as exc:
        print(f"auth: error: {exc}", file=sys.stderr)
        return 2
    except (MlflowException, OSError) as exc:
        print(f"auth: error: {explain(exc, uri)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
