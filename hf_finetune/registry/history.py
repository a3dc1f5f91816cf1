"""The history of the ``champion`` and ``challenger`` aliases: every move, when, how and why.

MLflow keeps no history of aliases and no time when one is set (mlflow/mlflow#2169). So every
move the pipeline makes is recorded here (``how``: ``gate``, ``persist``, ``rollback``), and a move
made outside it (UI, API) is found by the next step that takes the registered model's lock
(``observe``) and recorded as ``manual``, with the interval it happened in: after the pipeline last
saw the aliases, before it noticed.

Where: one MLflow run per move in the experiment ``HISTORY_EXPERIMENT`` (``PIPELINE_HISTORY_EXPERIMENT``
names another), whose ``history.*`` tags are the record: deleting a version or the registered
model leaves it, and no record grows with the number of moves. Every write happens under the
registry lock (``locks.registry_lock``); readers take none. A move is written in halves around the
alias change (a ``pending`` record, the alias, the record ``done``): a record left pending by a
killed process is settled from what happened next (``settle``: done if the alias went where it
says, else ``abandoned``), by ``observe`` in writing and by ``read`` without.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from hf_finetune import tracking
from hf_finetune.chain import CHALLENGER, CHAMPION
from hf_finetune.errors import UserError
from hf_finetune.tags import ROLLED_BACK_REASON_TAG, ROLLED_BACK_TAG

HISTORY_EXPERIMENT = "registry-alias-history"
EXPERIMENT_ENV = "PIPELINE_HISTORY_EXPERIMENT"
ALIASES = (CHAMPION, CHALLENGER)
HOWS = ("gate", "persist", "rollback", "manual")
PENDING, DONE, ABANDONED = "pending", "done", "abandoned"
SEEN_TAG = "pipeline.aliases_seen_at"  # on the registered model: when the pipeline last saw its aliases
PREFIX = "history."
REASON_LIMIT = 4000  # characters of a reason kept (a tag value holds 5,000 in some stores)
LAST_MOVES = 5  # what the model card and the report show


@dataclasses.dataclass(frozen=True)
class Move:
    """One move of an alias. ``time`` for a move the pipeline made; ``after``/``before`` for a
    manual one (it happened in that interval). Times: seconds since the epoch."""

    model: str
    alias: str
    from_version: int | None
    to_version: int | None
    how: str
    reason: str
    run_id: str = ""
    user: str = ""
    time: float | None = None
    after: float | None = None
    before: float | None = None
    state: str = DONE
    record: str = ""  # the history run that holds it

    @property
    def when(self) -> float:
        """When the move had certainly happened."""
        return self.time if self.time is not None else float(self.before or 0.0)

    def as_json(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "how": self.how,
            "reason": self.reason,
            "run_id": self.run_id or None,
            "user": self.user or None,
            "time": iso(self.time),
            "after": iso(self.after),
            "before": iso(self.before),
        }

    def as_tags(self) -> dict[str, str]:
        values = {
            "model": self.model,
            "alias": self.alias,
            "from_version": "" if self.from_version is None else str(self.from_version),
            "to_version": "" if self.to_version is None else str(self.to_version),
            "how": self.how,
            "reason": self.reason[:REASON_LIMIT],
            "run_id": self.run_id,
            "user": self.user,
            "time": iso(self.time) or "",
            "after": iso(self.after) or "",
            "before": iso(self.before) or "",
            "state": self.state,
        }
        return {PREFIX + key: value for key, value in values.items()}


# ----------------------------------------------------------------------------- pure functions
def iso(seconds: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 in UTC (``YYYY-MM-DDThh:mm:ss.ffffffZ``)."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """ISO 8601 (a date, or a date and time; UTC where it names no zone) -> seconds since the epoch."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"{text!r} is not an ISO 8601 time: give YYYY-MM-DDThh:mm[:ss][Z]") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def from_tags(tags: dict[str, str], record: str = "") -> Move:
    def get(key: str) -> str:
        return tags.get(PREFIX + key, "")

    def moment(key: str) -> float | None:
        return parse_time(get(key)) if get(key) else None

    def version_of(key: str) -> int | None:
        return int(get(key)) if get(key) else None

    return Move(
        model=get("model"),
        alias=get("alias"),
        from_version=version_of("from_version"),
        to_version=version_of("to_version"),
        how=get("how"),
        reason=get("reason"),
        run_id=get("run_id"),
        user=get("user"),
        time=moment("time"),
        after=moment("after"),
        before=moment("before"),
        state=get("state") or DONE,
        record=record,
    )


def settle(moves: Iterable[Move], current: dict[str, int | None]) -> list[Move]:
    """The moves in order, each pending one given its verdict: done if the alias went where it
    says (the next record of that alias starts there, or, for the last, the alias is there now),
    abandoned otherwise. Abandoned records are kept, marked: readers leave them out."""
    ordered = sorted(moves, key=lambda m: m.when)
    out = []
    for i, move in enumerate(ordered):
        if move.state == PENDING:
            later = [m for m in ordered[i + 1 :] if m.alias == move.alias and m.state != ABANDONED]
            landed = later[0].from_version if later else current.get(move.alias)
            move = dataclasses.replace(move, state=DONE if landed == move.to_version else ABANDONED)
        out.append(move)
    return out


def done(moves: Iterable[Move], alias: str | None = None) -> list[Move]:
    return [m for m in moves if m.state == DONE and (alias is None or m.alias == alias)]


def expected(moves: Iterable[Move]) -> dict[str, int | None]:
    """What the aliases are, as far as the records say (settled moves, in order)."""
    state: dict[str, int | None] = dict.fromkeys(ALIASES)
    for move in done(moves):
        state[move.alias] = move.to_version
    return state


def manual_moves(
    name: str, wanted: dict[str, int | None], current: dict[str, int | None], after: float, now: float
) -> list[Move]:
    """The moves nobody recorded: an alias that is not where the records left it."""
    return [
        Move(
            model=name,
            alias=alias,
            from_version=wanted.get(alias),
            to_version=current.get(alias),
            how="manual",
            reason="moved outside the pipeline (by hand in the UI or through the API), or before "
            "its history was kept",
            after=after,
            before=now,
        )
        for alias in ALIASES
        if wanted.get(alias) != current.get(alias)
    ]


def champion_at(moves: Iterable[Move], at: float) -> tuple[int | None, tuple[int | None, int | None] | None]:
    """The champion at time ``at``, and, inside a manual move's interval, the two versions it was
    between (then the champion is None: which of them held it is not known)."""
    holder: int | None = None
    for move in done(moves, CHAMPION):
        if move.how == "manual" and move.after is not None and move.before is not None:
            if at <= move.after:
                break
            if at < move.before:
                return None, (move.from_version, move.to_version)
        elif at < move.when:
            break
        holder = move.to_version
    return holder, None


def champions_latest_first(moves: Iterable[Move]) -> list[int]:
    """Every version that has held ``champion``, the latest holder first (each once)."""
    held: list[int] = []
    for move in done(moves, CHAMPION):
        for version in (move.from_version, move.to_version):
            if version is not None:
                if version in held:
                    held.remove(version)
                held.append(version)
    return held[::-1]


def describe(move: Move) -> str:
    """One line for a person."""
    when = iso(move.time) if move.time is not None else f"between {iso(move.after)} and {iso(move.before)}"
    start = "none" if move.from_version is None else f"v{move.from_version}"
    end = "none" if move.to_version is None else f"v{move.to_version}"
    by = f" (run {move.run_id}{', ' + move.user if move.user else ''})" if move.run_id else ""
    return f"{when}  {move.alias} {start} -> {end}  {move.how}{by}: {move.reason}"


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


def aliases_now(client: Any, name: str) -> dict[str, int | None]:
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        aliases = {}
    return {alias: int(aliases[alias]) if alias in aliases else None for alias in ALIASES}


def records(client: Any, name: str) -> list[Move]:
    """Every record of ``name``, as written (pending ones not yet settled)."""
    found, token = [], None
    query = f"tags.`{PREFIX}model` = '{name}'"
    experiment = experiment_id(client, create=False)
    while experiment is not None:
        page = client.search_runs([experiment], query, max_results=1000, page_token=token)
        found += [from_tags(dict(run.data.tags), run.info.run_id) for run in page]
        token = page.token
        if not token:
            break
    return found


def read(client: Any, name: str) -> list[Move]:
    """The settled history of ``name``, oldest first; abandoned records left out."""
    return [m for m in settle(records(client, name), aliases_now(client, name)) if m.state != ABANDONED]


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


def observe(client: Any, name: str) -> list[Move]:
    """Under the lock, before a step changes anything: settle pending records (writing the
    verdict), record as ``manual`` every alias that is not where the records left it, and return
    the settled history."""
    current = aliases_now(client, name)
    raw = records(client, name)
    settled = settle(raw, current)
    for before, after in zip(sorted(raw, key=lambda m: m.when), settled, strict=True):
        if before.state != after.state:
            client.set_tag(after.record, PREFIX + "state", after.state)
            if after.how == "rollback":
                put_marks_right(client, name, after)
    moves = [m for m in settled if m.state != ABANDONED]
    now = time.time()
    new = manual_moves(name, expected(moves), current, last_seen(client, name, moves), now)
    return moves + [dataclasses.replace(m, record=write(client, m)) for m in new]


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


def last_seen(client: Any, name: str, moves: list[Move]) -> float:
    """The last moment the pipeline knew the aliases: its last record, its last look
    (``SEEN_TAG``), or the registered model's creation."""
    from mlflow.exceptions import MlflowException

    known = [m.when for m in moves]
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return max(known, default=0.0)
    if SEEN_TAG in model.tags:
        known.append(parse_time(model.tags[SEEN_TAG]))
    known.append((model.creation_timestamp or 0) / 1000)
    return max(known)


def seen(client: Any, name: str) -> None:
    """Under the lock, after a step's last alias change: the aliases are as the records say now."""
    client.set_registered_model_tag(name, SEEN_TAG, iso(time.time()))


def move(
    client: Any,
    name: str,
    alias: str,
    version: int | str | None,
    how: str,
    reason: str,
    run_id: str,
    before_the_alias: Callable[[], None] | None = None,
) -> bool:
    """Point ``alias`` of ``name`` at ``version`` (None: remove it) and record the move, under the
    lock (a move by hand since the last look is recorded first). ``before_the_alias`` runs once
    the pending record is written (a rollback marks the version it leaves). Returns whether it
    moved."""
    if how not in HOWS:
        raise ValueError(f"unknown how {how!r}")
    target = None if version is None else int(version)
    observe(client, name)
    current = aliases_now(client, name)[alias]
    if current == target:
        return False
    pending = Move(name, alias, current, target, how, reason, run_id, user_of(client, run_id), time.time(),
                   state=PENDING)  # fmt: skip
    record = write(client, pending)
    tracking.kill_point(f"{how}.{alias}.recorded")
    if before_the_alias is not None:
        before_the_alias()
    if target is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(target))
    tracking.kill_point(f"{how}.{alias}.moved")
    client.set_tag(record, PREFIX + "state", DONE)
    return True
