"""rollback: move ``champion`` back to an earlier version, in one command, recorded.

    python -m steps.rollback --reason "v7 flags bank receipts as spam"          # the earlier champion
    python -m steps.rollback --reason "..." --to_version 5 --registered_model sms-spam-generator
    mlflow run . -e rollback -P reason="v7 flags bank receipts as spam" [-P to_version=5]

Reads: ``registered_model`` (by default the task's), ``to_version`` (0: the last earlier champion,
from the champion's history, that still exists and was not itself rolled back from), ``reason``
(required). The target is checked first, read only, before any run starts: it exists, holds the
registered model's task, is self-contained and verified (tags ``persisted`` and ``verified`` are
``true``) and is not the champion already; anything wrong ends the step with one line, exit status
2, and the tracking store and registry as they were (found only under the lock, after another
step changed the registry meanwhile: the same line and a failed run). Then, under the registered model's lock:

1. moves made by hand since the pipeline last looked are recorded (``registry/history.py``), and
   the target is checked again (a step may have moved the champion meanwhile);
2. the move is recorded as pending; the version ``champion`` leaves is marked (tags
   ``rolled_back_by``, this run, and ``rolled_back_reason``) so that no later gate, persist rerun
   or interrupted register makes it champion again by itself (only a rollback to it can);
   ``champion`` moves; the target's own mark, if it had one, is taken off; the record is done;
3. the model cards of both versions are rewritten.

Killed at any point, alias, mark and history stay consistent: the next step that takes the lock
settles the pending record from where the alias is (``history.observe``) and puts the mark right.
Writes (run): tags ``registered_model``, ``model_version`` (the new champion), ``rolled_back_from``
and ``rollback_reason``.
"""

from __future__ import annotations

from typing import Any

from hf_finetune import chain, cli, logs, tracking
from hf_finetune.chain import CHAMPION
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.registry import card, gate, history, locks, timeline
from hf_finetune.registry.models import UNTAGGED
from hf_finetune.tags import (
    PERSISTED_TAG,
    REGISTERED_MODEL_TAG,
    ROLLED_BACK_REASON_TAG,
    ROLLED_BACK_TAG,
    TASK_TAG,
    VERIFIED_TAG,
    VERSION_TAG,
)

STEP = chain.ROLLBACK
log = logs.logger(STEP)
FROM_TAG = "rolled_back_from"
REASON_TAG = "rollback_reason"


# ----------------------------------------------------------------------------- pure functions
def default_target(
    moves: list[timeline.Move], current: int | None, versions: dict[int, dict[str, str]]
) -> int | None:
    """The last earlier champion that still exists and was not rolled back from (None: none)."""
    for number in timeline.champions_latest_first(moves):
        if number != current and number in versions and not gate.rolled_back(versions[number]):
            return number
    return None


def refusal(name: str, number: int, tags: dict[str, str] | None, task: str, current: int | None) -> str:
    """Why ``number`` cannot become champion of ``name`` ("" if it can). ``tags``: its tags (None:
    no such version); ``task``: what the registered model holds."""
    if tags is None:
        return f"{name} has no version {number}: give --to_version one of its versions"
    if number == current:
        return f"{name} v{number} is champion already: nothing to roll back"
    held = tags.get(TASK_TAG) or UNTAGGED
    if held != task:
        return f"{name} v{number} is a {held} model and {name} holds {task} models: choose another version"
    if tags.get(PERSISTED_TAG) != "true" or tags.get(VERIFIED_TAG) != "true":
        register_run = tags.get(f"run.{chain.REGISTER}", "<its register run ID>")
        return (
            f"{name} v{number} is not self-contained and verified (persisted={tags.get(PERSISTED_TAG)}, "
            f"verified={tags.get(VERIFIED_TAG)}): persist it first (python -m steps.persist "
            f"--register_run_id {register_run}) or choose another version"
        )
    return ""


# ----------------------------------------------------------------------------- MLflow
def choose(
    client: Any, name: str, task: str, wanted: int, past: list[timeline.Move]
) -> tuple[int, int | None, dict[int, dict[str, str]]]:
    """The version to roll back to (``wanted``, or 0 for the default), the champion now and every
    version's tags; a target that cannot be champion ends the step (``UserError``)."""
    current = history.aliases_now(client, name)[CHAMPION]
    versions = {int(v.version): dict(v.tags) for v in client.search_model_versions(f"name = '{name}'")}
    target = wanted or default_target(past, current, versions)
    if target is None:
        raise UserError(
            f"{name} has no earlier champion that still exists and was not rolled back from: "
            f"give --to_version (versions: {', '.join(map(str, sorted(versions))) or 'none'})"
        )
    why = refusal(name, target, versions.get(target), task, current)
    if why:
        raise UserError(why)
    return target, current, versions


def mark(client: Any, name: str, number: int, run_id: str, reason: str) -> None:
    """The version champion leaves: only a rollback to it may make it champion again."""
    client.set_model_version_tag(name, str(number), ROLLED_BACK_TAG, run_id)
    client.set_model_version_tag(name, str(number), ROLLED_BACK_REASON_TAG, reason[: timeline.REASON_LIMIT])


def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    del upstream_run_id  # beside the chain: no step before it
    reason = " ".join(cfg.reason.split())
    if not reason:
        raise UserError('rollback needs a reason: give --reason "why" (-P reason="why"), kept in the history')
    client = mlflow.MlflowClient()
    name = cfg.registered_model
    try:
        task = client.get_registered_model(name).tags.get(TASK_TAG) or UNTAGGED
    except MlflowException:
        raise UserError(
            f"registered model {name!r} does not exist in {mlflow.get_tracking_uri()}: "
            "check --registered_model"
        ) from None

    choose(client, name, task, cfg.to_version, timeline.of(*history.looked(client, name)))  # refused: no run
    with tracking.step_run(STEP, profile, cfg) as (run_id, _tmp), locks.registry_lock(client, name):
        # again under the lock, moves by hand since the last look recorded first
        target, current, versions = choose(client, name, task, cfg.to_version, history.observe(client, name))
        tracking.kill_point("rollback.checked")

        def before_the_alias() -> None:
            if current is not None:
                mark(client, name, current, run_id, reason)
            tracking.kill_point("rollback.marked")

        def after_the_alias() -> None:  # an explicit rollback to a version rolled back from: unmarked
            for key in (ROLLED_BACK_TAG, ROLLED_BACK_REASON_TAG):
                if key in versions[target]:
                    client.delete_model_version_tag(name, str(target), key)

        marks = (before_the_alias, after_the_alias)
        history.move(client, name, CHAMPION, target, "rollback", reason, run_id, *marks)
        tracking.kill_point("rollback.moved")
        history.seen(client, name)
        card.refresh(client, name, str(target))
        card.refresh_others(client, name, [str(current) if current else None], str(target))
        mlflow.set_tags(
            {
                REGISTERED_MODEL_TAG: name,
                VERSION_TAG: str(target),
                FROM_TAG: "" if current is None else str(current),
                REASON_TAG: reason[: timeline.REASON_LIMIT],
            }
        )
        log.info(f"{name}: champion v{current} -> v{target} ({reason})")
        return run_id


def main(argv: list[str] | None = None) -> int:
    return cli.step_main(STEP, __doc__, None, run, argv)


if __name__ == "__main__":
    cli.exit_quickly(main())
