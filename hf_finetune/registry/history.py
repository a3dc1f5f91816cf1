"""The history of the ``champion`` and ``challenger`` aliases in the tracking store: every move,
when, how and why (the records themselves, and what they say, are ``timeline.py``).

MLflow keeps no history of aliases and no time when one is set (mlflow/mlflow#2169). So every
move the pipeline makes is recorded here (``how``: ``gate``, ``persist``, ``rollback``, and
``cleanup`` when ``version_cleanup`` deletes the registered model), and a move made outside it
(UI, API) is found by the next step that takes the registered model's lock (``observe``) and
recorded as ``manual``, with the interval it happened in: after the pipeline last saw the aliases,
before it noticed. Two moves by hand between two looks are one record (from the first version to
the last): the store keeps no trace of what lay between.

Where: one MLflow run per move in the experiment ``HISTORY_EXPERIMENT`` (``PIPELINE_HISTORY_EXPERIMENT``
names another), whose ``history.*`` tags are the record: deleting a version or the registered
model leaves it, and no record grows with the number of moves. Every write happens under the
registry lock (``locks.registry_lock``); readers take none. A move is written in halves around the
alias change (a ``pending`` record, the alias, the record ``done`` with the time the alias had
moved): a record left pending by a killed process is settled from what happened next (``settle``:
done if the alias went where it says, else ``abandoned``), by ``observe`` in writing and by
``read`` without.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

from hf_finetune import tracking
from hf_finetune.registry.timeline import (
    ABANDONED,
    ALIASES,
    DONE,
    HOWS,
    PENDING,
    PREFIX,
    Move,
    ends,
    expected,
    from_tags,
    iso,
    manual_moves,
    of,
    parse_time,
    placed,
    settle,
)
from hf_finetune.tags import ROLLED_BACK_REASON_TAG, ROLLED_BACK_TAG

HISTORY_EXPERIMENT = "registry-alias-history"
EXPERIMENT_ENV = "PIPELINE_HISTORY_EXPERIMENT"
SEEN_TAG = "pipeline.aliases_seen_at"  # on the registered model: when the pipeline last saw its aliases


@dataclasses.dataclass(frozen=True)
class Now:
    """The registered model as a step finds it: its aliases, its life (creation time in ms as
    text, "" when there is none), when it was made and when the pipeline last saw its aliases."""

    aliases: dict[str, int | None]
    generation: str = ""
    created: float = 0.0
    seen: float = 0.0


# ----------------------------------------------------------------------------- MLflow
def experiment_id(client: Any, create: bool = True) -> str | None:
    """The history's experiment (made here if ``create``; else None when there is none yet)."""
    from mlflow.exceptions import MlflowException

    name = os.environ.get(EXPERIMENT_ENV) or HISTORY_EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage != "active" and create:
            client.restore_experiment(found.experiment_id)
        return str(found.experiment_id)
    if not create:
        return None
    try:
        return str(client.create_experiment(name, tags={"mlflow.note.content": __doc__.split("\n\n")[0]}))
    except MlflowException:  # made by another process meanwhile
        return str(client.get_experiment_by_name(name).experiment_id)


def now(client: Any, name: str) -> Now:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # a store that failed is not "no model"
            raise
        return Now(dict.fromkeys(ALIASES))
    aliases = dict(model.aliases)
    created = (model.creation_timestamp or 0) / 1000
    seen_at = parse_time(model.tags[SEEN_TAG]) if SEEN_TAG in model.tags else 0.0
    return Now(
        {alias: int(aliases[alias]) if alias in aliases else None for alias in ALIASES},
        str(model.creation_timestamp or ""),
        created,
        max(created, seen_at),
    )


def aliases_now(client: Any, name: str) -> dict[str, int | None]:
    return now(client, name).aliases


def records(client: Any, name: str, generation: str = "") -> list[Move]:
    """Every record of ``name``, as written (pending ones not yet settled), each in its life
    (``generation``: the current one)."""
    found, token = [], None
    query = f"tags.`{PREFIX}model` = '{name}'"
    experiment = experiment_id(client, create=False)
    while experiment is not None:
        page = client.search_runs([experiment], query, max_results=1000, page_token=token)
        found += [from_tags(dict(run.data.tags), run.info.run_id) for run in page]
        token = page.token
        if not token:
            break
    return placed(found, generation)


def read(client: Any, name: str) -> list[Move]:
    """The settled history of ``name`` (every life), oldest first; abandoned records left out."""
    found = now(client, name)
    raw = records(client, name, found.generation)
    return [m for m in settle(raw, found.aliases, found.generation) if m.state != ABANDONED]


def unrecorded(name: str, moves: list[Move], found: Now, moment: float) -> list[Move]:
    """What the records miss at ``moment``: aliases of this life not where they left them (moved
    by hand), and the aliases of earlier lives, gone with their deleted registered model."""
    mine = of(moves, found.generation)
    # when the aliases were last known: the last look, or a move the pipeline made (a manual
    # record's ``before`` is no such moment: it was taken after its look read the aliases)
    after = max([found.seen, *(m.time for m in mine if m.time is not None)])
    missed = manual_moves(name, expected(mine), found.aliases, after, moment, found.generation)
    return missed + ends(name, moves, found.generation, found.created or moment)


def looked(client: Any, name: str) -> tuple[list[Move], str]:
    """Read only: the history with what the records miss (as ``observe`` would record it), oldest
    first, and the registered model's life now."""
    found = now(client, name)
    moves = read(client, name)
    return sorted(moves + unrecorded(name, moves, found, time.time()), key=lambda m: m.when), found.generation


def write(client: Any, move: Move) -> str:
    """A new record; its run's ID."""
    started = int(1000 * (move.time if move.time is not None else move.when or time.time()))
    run = client.create_run(
        experiment_id(client),
        start_time=started,
        tags=move.as_tags(),
        run_name=f"{move.model} {move.alias} {move.from_version} -> {move.to_version}",
    )
    client.set_terminated(run.info.run_id, "FINISHED", end_time=started)
    return str(run.info.run_id)


def user_of(client: Any, run_id: str) -> str:
    """Who ran it: the tracking server's user where there is one, else the run's (the OS user)."""
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return os.environ["MLFLOW_TRACKING_USERNAME"]
    return client.get_run(run_id).data.tags.get("mlflow.user", "") if run_id else ""


def observe(client: Any, name: str, stamp: bool = False) -> list[Move]:
    """Under the lock, before a step changes anything: settle pending records (writing the
    verdict), record what the records miss (``unrecorded``), and return the settled history of
    the registered model's current life. When it recorded a move by hand (or ``stamp``), it notes
    when it read the aliases (``SEEN_TAG``): the next interval starts there."""
    looking = time.time()  # before the aliases are read: a move after it is found by the next look
    found = now(client, name)
    raw = records(client, name, found.generation)
    settled = settle(raw, found.aliases, found.generation)
    for before, after in zip(sorted(raw, key=lambda m: m.when), settled, strict=True):
        if before.state != after.state:
            client.set_tag(after.record, PREFIX + "state", after.state)
            if after.how == "rollback":
                put_marks_right(client, name, after)
    moves = [m for m in settled if m.state != ABANDONED]
    missed = unrecorded(name, moves, found, time.time())
    new = [dataclasses.replace(m, record=write(client, m)) for m in missed]
    if found.generation and (stamp or new):
        client.set_registered_model_tag(name, SEEN_TAG, iso(looking))
    return of(moves + new, found.generation)


def put_marks_right(client: Any, name: str, move: Move) -> None:
    """A rollback killed half-way, now settled: the version it left carries its mark if the move
    was done (and the version it went to none), and not if it was abandoned."""
    from mlflow.exceptions import MlflowException

    def tags_of(number: int | None) -> dict[str, str] | None:
        try:
            return None if number is None else dict(client.get_model_version(name, str(number)).tags)
        except MlflowException:  # deleted since
            return None

    left, went = tags_of(move.from_version), tags_of(move.to_version)
    if move.state == DONE:
        if left is not None and left.get(ROLLED_BACK_TAG) != move.run_id:
            client.set_model_version_tag(name, str(move.from_version), ROLLED_BACK_TAG, move.run_id)
            client.set_model_version_tag(name, str(move.from_version), ROLLED_BACK_REASON_TAG, move.reason)
        for key in (ROLLED_BACK_TAG, ROLLED_BACK_REASON_TAG):
            if went is not None and key in went:
                client.delete_model_version_tag(name, str(move.to_version), key)
    elif left is not None and left.get(ROLLED_BACK_TAG) == move.run_id:
        for key in (ROLLED_BACK_TAG, ROLLED_BACK_REASON_TAG):
            if key in left:
                client.delete_model_version_tag(name, str(move.from_version), key)


def seen(client: Any, name: str) -> None:
    """Under the lock, after a step's last alias change: a last look (``observe``), so that a move
    by hand while the step worked is recorded with the step's looks around it."""
    observe(client, name, stamp=True)


def move(
    client: Any,
    name: str,
    alias: str,
    version: int | str | None,
    how: str,
    reason: str,
    run_id: str,
    before_the_alias: Callable[[], None] | None = None,
    after_the_alias: Callable[[], None] | None = None,
) -> bool:
    """Point ``alias`` of ``name`` at ``version`` (None: remove it) and record the move, under the
    lock (a move by hand since the last look is recorded first). ``before_the_alias`` runs once
    the pending record is written (a rollback marks the version it leaves), ``after_the_alias``
    once the alias moved, while the record is still pending (a rollback unmarks the version it
    goes to: killed before, ``observe`` does it). Returns whether it moved."""
    from mlflow.entities import RunTag

    if how not in HOWS:
        raise ValueError(f"unknown how {how!r}")
    target = None if version is None else int(version)
    observe(client, name)
    found = now(client, name)
    current = found.aliases[alias]
    if current == target:
        return False
    pending = Move(name, alias, current, target, how, reason, run_id, user_of(client, run_id), time.time(),
                   state=PENDING, generation=found.generation)  # fmt: skip
    record = write(client, pending)
    tracking.kill_point(f"{how}.{alias}.recorded")
    if before_the_alias is not None:
        before_the_alias()
    if target is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(target))
    moved_at = time.time()  # the record's time: from here on the alias resolves to the new version
    tracking.kill_point(f"{how}.{alias}.moved")
    if after_the_alias is not None:
        after_the_alias()
    done = {PREFIX + "state": DONE, PREFIX + "time": iso(moved_at) or ""}
    client.log_batch(record, tags=[RunTag(key, value) for key, value in done.items()])
    return True
