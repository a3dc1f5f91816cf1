"""python -m deploy.server init | start [options]

  init     write a generated admin password and Flask secret key to the .env file (once)
  start    run `mlflow server` with a SQL backend, proxied artifacts, basic-auth and host checks

Settings from the environment or the .env file (the environment wins):
  MLFLOW_AUTH_ADMIN_PASSWORD      the admin's password (12+ characters); used once, to create the admin
  MLFLOW_FLASK_SERVER_SECRET_KEY  signs basic-auth's forms
  MLFLOW_BACKEND_STORE_URI        runs and models (default: sqlite in --data-dir); e.g. postgresql://...
  PIPELINE_AUTH_DB_URI            users and permissions (default: sqlite in --data-dir)
  MLFLOW_AUTH_ADMIN_USERNAME      default admin
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy.server import launcher
from hf_finetune.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--env-file", type=Path, default=launcher.DEFAULT_ENV_FILE)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init", help="write a generated admin password and secret key to --env-file")
    start = commands.add_parser("start", help="start the tracking server (replaces this process)")
    defaults = launcher.ServerOptions()
    start.add_argument("--host", default=defaults.host, help="interface to bind (default %(default)s)")
    start.add_argument("--port", type=int, default=defaults.port)
    start.add_argument("--workers", type=int, default=defaults.workers)
    start.add_argument("--data-dir", type=Path, default=defaults.data_dir, help="SQLite files, artifacts")
    start.add_argument(
        "--artifacts-destination", default="", help="default: <data-dir>/artifacts; or s3://..."
    )
    start.add_argument(
        "--allowed-hosts",
        default="",
        help="Host headers to accept, e.g. mlflow.example.com; default: localhost and private addresses",
    )
    start.add_argument("--cors-allowed-origins", default="")
    start.add_argument(
        "--default-permission", default=defaults.default_permission, choices=launcher.PERMISSIONS
    )
    start.add_argument(
        "--auth-cache-ttl",
        type=int,
        default=defaults.auth_cache_ttl,
        help="seconds a good password check is cached per worker (0: check every request)",
    )
    start.add_argument("--print-command", action="store_true", help="print what would run, then stop")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            launcher.init(args.env_file)
            return 0
        opts = launcher.ServerOptions(
            host=args.host,
            port=args.port,
            workers=args.workers,
            data_dir=args.data_dir.resolve(),
            artifacts_destination=args.artifacts_destination,
            allowed_hosts=args.allowed_hosts,
            cors_allowed_origins=args.cors_allowed_origins,
            default_permission=args.default_permission,
            auth_cache_ttl=args.auth_cache_ttl,
        )
        return launcher.start(opts, args.env_file, print_only=args.print_command)
    except UserError as exc:
        print(f"server: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
