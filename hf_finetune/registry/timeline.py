"""The records of the champion's history and what they say, without the store: one ``Move`` per
move of an alias, and who held ``champion`` at a given moment (``history.py`` reads and writes them).

A registered model deleted and made again under the same name starts a new life: its version 1
is another model than the old version 1. Each record carries its life (``generation``: the
registered model's creation time, in milliseconds), so the aliases of the new life are judged on
its own records, and an old life ends with its aliases going to none (recorded by
``version_cleanup``, or found as a move by hand when the model was deleted outside the pipeline).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from typing import Any

from hf_finetune.chain import CHALLENGER, CHAMPION
from hf_finetune.errors import UserError

ALIASES = (CHAMPION, CHALLENGER)
HOWS = ("gate", "persist", "rollback", "manual", "cleanup")
PENDING, DONE, ABANDONED = "pending", "done", "abandoned"
PREFIX = "history."
REASON_LIMIT = 4000  # characters of a reason kept (a tag value holds 5,000 in some stores)
LAST_MOVES = 5  # what the model card and the report show
BY_HAND = "moved outside the pipeline (by hand in the UI or through the API), or before its history was kept"
DELETED = "the registered model was deleted outside the pipeline"
CLOCKS_S = 5.0  # how far the tracking server's clock (a model's creation time) may be ahead of ours


@dataclasses.dataclass(frozen=True)
class Move:
    """One move of an alias. ``time`` for a move the pipeline made (when the alias had moved);
    ``after``/``before`` for a manual one (it happened in that interval). Times: seconds since the
    epoch. ``generation``: the life of the registered model it belongs to ("" in records written
    before lives were told apart: ``placed`` finds theirs)."""

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
    generation: str = ""

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
            "generation": self.generation,
        }
        return {PREFIX + key: value for key, value in values.items()}


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
        generation=get("generation"),
    )


def of(moves: Iterable[Move], generation: str) -> list[Move]:
    """The moves of one life of the registered model."""
    return [m for m in moves if m.generation == generation]


def placed(moves: list[Move], generation: str) -> list[Move]:
    """Records written before lives were told apart (no ``generation``) given the life they were
    written in: the latest one begun by then (``generation``: the current life, "" if none). One
    older than every life known stays in life "": an earlier one, whose model is gone."""
    lives = {int(m.generation) for m in moves if m.generation} | ({int(generation)} if generation else set())
    out = []
    for move in moves:
        begun = [life for life in sorted(lives) if life / 1000 <= move.when + CLOCKS_S]
        if not move.generation and begun:
            move = dataclasses.replace(move, generation=str(begun[-1]))
        out.append(move)
    return out


def settle(moves: Iterable[Move], current: dict[str, int | None], generation: str = "") -> list[Move]:
    """The moves in order, each pending one given its verdict: done if the alias went where it
    says (the next record of that alias starts there, or, for the last, the alias is there now),
    abandoned otherwise. ``current``: the aliases now of life ``generation`` (an earlier life's
    aliases are gone). Abandoned records are kept, marked: readers leave them out."""
    ordered = sorted(moves, key=lambda m: m.when)
    out = []
    for i, move in enumerate(ordered):
        if move.state == PENDING:
            later = [m for m in ordered[i + 1 :] if (m.alias, m.generation) == (move.alias, move.generation)]
            later = [m for m in later if m.state != ABANDONED]
            now = current.get(move.alias) if move.generation == generation else None
            landed = later[0].from_version if later else now
            move = dataclasses.replace(move, state=DONE if landed == move.to_version else ABANDONED)
        out.append(move)
    return out


def done(moves: Iterable[Move], alias: str | None = None) -> list[Move]:
    return [m for m in moves if m.state == DONE and (alias is None or m.alias == alias)]


def expected(moves: Iterable[Move]) -> dict[str, int | None]:
    """What the aliases are, as far as the records (of one life) say: settled moves, in order."""
    state: dict[str, int | None] = dict.fromkeys(ALIASES)
    for move in done(moves):
        state[move.alias] = move.to_version
    return state


def manual_moves(
    name: str,
    wanted: dict[str, int | None],
    current: dict[str, int | None],
    after: float,
    now: float,
    generation: str = "",
    reason: str = BY_HAND,
) -> list[Move]:
    """The moves nobody recorded: an alias that is not where the records left it."""
    found = []
    for alias in ALIASES:
        if wanted.get(alias) != current.get(alias):
            found.append(Move(name, alias, wanted.get(alias), current.get(alias), "manual", reason))
    return [dataclasses.replace(m, after=after, before=now, generation=generation) for m in found]


def ends(name: str, moves: list[Move], generation: str, started: float) -> list[Move]:
    """The aliases of every earlier life that the records leave set, gone with its registered
    model: deleted outside the pipeline after its last record, before ``started`` (the current
    life's creation or its first record, whichever is earlier; now when there is none)."""
    gone: list[Move] = []
    started = min([started, *(m.when for m in of(moves, generation))])
    for life in sorted({m.generation for m in moves} - {generation}):
        mine = [m for m in moves if m.generation == life]
        last = max(m.when for m in mine)
        gone += manual_moves(name, expected(mine), {}, last, max(started, last), life, DELETED)
    return gone


def champion_at(moves: Iterable[Move], at: float) -> tuple[int | None, tuple[int | None, int | None] | None]:
    """The champion at time ``at``, and, inside a manual move's interval, the two versions it was
    between (then the champion is None: which of them held it is not known)."""
    holder: int | None = None
    for move in sorted(done(moves, CHAMPION), key=lambda m: m.when):
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
    """Every version that has held ``champion`` (give one life's moves), the latest holder first
    (each once)."""
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
