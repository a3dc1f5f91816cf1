"""history: every move of a registered model's ``champion`` and ``challenger``, and who was champion when.

    python -m steps.history sms-spam-classifier                            # the moves, oldest first
    python -m steps.history sms-spam-classifier --at YYYY-MM-DDThh:mm     # the champion then (UTC)
    python -m steps.history sms-spam-classifier --json [--at TIME]         # the same, as JSON

A move is ``gate`` (register), ``persist``, ``rollback``, ``cleanup`` (version_cleanup deleted the
registered model) or ``manual`` (made outside the pipeline, in the UI or through the API, and found
by the next step that took the lock: it happened between ``after`` and ``before``, and inside that
interval the champion is one of two versions, not known which). An alias that is not where the
history left it, and that no step has looked at since, is shown the same way, up to now. A
registered model deleted and made again under the same name starts a new life (its v1 is another
model): the old life's moves stay, ending with its aliases gone. ``--json``: a list of records (``alias``,
``from_version``, ``to_version``, ``how``, ``reason``, ``run_id``, ``user``, ``time``, ``after``,
``before``); with ``--at``, one object: ``at``, ``champion`` (null inside a manual move's interval,
or before the first champion) and ``between`` (the two versions there, else null). TIME is ISO
8601; without a zone, UTC. It only reads the tracking store (the records live in the experiment
``registry-alias-history``, see ``hf_finetune/registry/history.py``).
"""

from __future__ import annotations

import argparse
import json

from hf_finetune import cli, logs
from hf_finetune.errors import UserError
from hf_finetune.registry import history, timeline

STEP = "history"
log = logs.logger(STEP)


def answer(past: list[timeline.Move], at: float) -> dict[str, object]:
    """``--at --json``'s object."""
    champion, between = timeline.champion_at(past, at)
    return {"at": timeline.iso(at), "champion": champion, "between": list(between) if between else None}


def said(name: str, past: list[timeline.Move], at: float) -> str:
    """``--at``'s line."""
    champion, between = timeline.champion_at(past, at)
    head = f"{name} at {timeline.iso(at)}: "
    if between:
        first, second = ("none" if v is None else f"v{v}" for v in between)
        return head + f"{first} or {second} (the alias was moved by hand about then)"
    return head + (f"champion v{champion}" if champion is not None else "no champion")


def run(name: str, at: str | None, as_json: bool) -> None:
    import mlflow

    # with what no step has recorded yet (an alias moved by hand, a registered model deleted):
    # shown as a manual move up to now, not written
    past, _life = history.looked(mlflow.MlflowClient(), name)
    if not past:
        raise UserError(
            f"no history of {name!r} in {mlflow.get_tracking_uri()}: check the name and MLFLOW_TRACKING_URI"
        )
    if at is not None:
        moment = timeline.parse_time(at)
        print(json.dumps(answer(past, moment)) if as_json else said(name, past, moment))
    elif as_json:
        print(json.dumps([m.as_json() for m in past], indent=2))
    else:
        for move in past:
            print(timeline.describe(move))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("registered_model", help="the registered model's name")
    parser.add_argument("--at", default=None, help="ISO 8601 time (UTC without a zone): the champion then")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    return cli.cli(STEP, lambda: run(args.registered_model, args.at, args.json))


if __name__ == "__main__":
    cli.exit_quickly(main())
