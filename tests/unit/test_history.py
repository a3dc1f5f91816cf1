"""The champion's history, rollback and the champions version_cleanup keeps, on a real store.

Versions here are registered from one tiny pyfunc model and tagged as the pipeline tags its own
(task, persisted, verified), so the registry logic runs without training; the whole chain's part
(a gate move, a rollback racing a main's register) is in ``tests/e2e/test_champion_history.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from hf_finetune import tracking as tracking_module
from hf_finetune.errors import UserError
from hf_finetune.registry import card, gate, history, locks, timeline
from hf_finetune.tags import ROLLED_BACK_TAG
from steps import history as history_step
from steps import rollback, version_cleanup
from tests.conftest import PROJECT_DIR
from tests.recorded import Echo

NAME = "sms-spam-classifier"  # the default: the steps below are called as a user would


def versions(count: int, name: str = NAME, task: str = "text-classification") -> mlflow.MlflowClient:
    """``count`` versions of a new registered model ``name``, tagged self-contained and verified."""
    client = mlflow.MlflowClient()
    with mlflow.start_run():
        uri = mlflow.pyfunc.log_model(name="model", python_model=Echo()).model_uri
    client.create_registered_model(name, tags={"task": task})
    for _ in range(count):
        number = mlflow.register_model(uri, name).version
        for key, value in {"task": task, "persisted": "true", "verified": "true"}.items():
            client.set_model_version_tag(name, str(number), key, value)
    return client


def step_run() -> str:
    with mlflow.start_run() as run:
        return run.info.run_id


def gate_move(client: mlflow.MlflowClient, number: int, name: str = NAME) -> None:
    """What register does when its gate passes."""
    with locks.registry_lock(client, name):
        gate.move_champion(client, name, str(number), "gate", f"v{number} is better", step_run())
        history.seen(client, name)


def champion(client: mlflow.MlflowClient, name: str = NAME) -> int | None:
    return history.aliases_now(client, name)["champion"]


# ----------------------------------------------------------------------------- pure functions
def move(
    alias: str, start: int | None, end: int | None, at: float, how: str = "gate", state: str = "done"
) -> timeline.Move:
    return timeline.Move(NAME, alias, start, end, how, "why", time=at, state=state)


def test_champion_at_is_exact_outside_a_manual_interval_and_says_both_versions_inside() -> None:
    manual = timeline.Move(NAME, "champion", 1, 2, "manual", "by hand", after=20.0, before=30.0)
    moves = [move("champion", None, 1, 10.0), manual, move("champion", 2, 1, 40.0, "rollback")]
    moves.append(move("challenger", None, 3, 35.0))  # another alias: not the champion
    expected = {5.0: (None, None), 10.0: (1, None), 19.9: (1, None), 20.0: (1, None),
                20.1: (None, (1, 2)), 29.9: (None, (1, 2)), 30.0: (2, None), 39.9: (2, None),
                40.0: (1, None), 1e10: (1, None)}  # fmt: skip
    for at, answer in expected.items():
        assert timeline.champion_at(moves, at) == answer, at


def test_a_pending_record_is_done_where_the_alias_went_and_abandoned_where_it_did_not() -> None:
    first = move("champion", None, 1, 1.0, state=timeline.PENDING)
    second = move("champion", 1, 2, 2.0, state=timeline.PENDING)
    assert [m.state for m in timeline.settle([first, second], {"champion": 2})] == ["done", "done"]
    assert [m.state for m in timeline.settle([first, second], {"champion": 1})] == ["done", "abandoned"]
    assert [m.state for m in timeline.settle([second], {"champion": 1})] == ["abandoned"]


def test_the_champions_latest_first_count_each_version_once() -> None:
    manual = timeline.Move(NAME, "champion", 1, 2, "manual", "", after=2.0, before=3.0)
    moves = [move("champion", None, 1, 1.0), manual, move("champion", 2, 3, 4.0), move("champion", 3, 1, 5.0)]
    assert timeline.champions_latest_first(moves) == [1, 3, 2]
    assert timeline.champions_latest_first([]) == []


def test_a_time_without_a_zone_is_utc_and_a_bad_one_is_one_line() -> None:
    assert timeline.parse_time("2026-12-01T09:30:00") == timeline.parse_time("2026-12-01T09:30:00Z")
    assert timeline.parse_time("2026-12-01T10:30:00+01:00") == timeline.parse_time("2026-12-01T09:30Z")
    assert timeline.iso(timeline.parse_time("2026-12-01")) == "2026-12-01T00:00:00.000000Z"
    with pytest.raises(UserError, match="not an ISO 8601 time"):
        timeline.parse_time("last tuesday")


def test_version_cleanup_keeps_the_champions_it_is_given() -> None:
    assert version_cleanup.versions_to_delete(range(1, 9), 2, {"champion": 8}, [8, 3, 1]) == [2, 4, 5, 6]


# ----------------------------------------------------------------------------- on a store
def test_gate_manual_rollback_cleanup_then_the_champion_at_every_moment() -> None:
    """The issue's story: the gate moves champion, a person moves it by hand, a rollback moves it
    back, old versions are deleted; the history answers "champion at T" for every T."""
    client = versions(4)
    marks = [time.time()]
    gate_move(client, 1)
    marks.append(time.time())
    gate_move(client, 3)
    marks.append(time.time())
    time.sleep(0.05)
    client.set_registered_model_alias(NAME, "champion", "4")  # by hand, outside the pipeline
    by_hand = time.time()
    time.sleep(0.05)
    marks.append(time.time())
    assert rollback.main(["--reason", "v4 misroutes receipts"]) == 0  # to v3: the champion before v4
    marks.append(time.time())
    assert champion(client) == 3
    assert client.get_model_version(NAME, "4").tags[ROLLED_BACK_TAG]
    assert version_cleanup.main(["--keep_last", "1", "--keep_champions", "2"]) == 0
    left = sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))
    # v3 champion, v4 the newest (and rolled back from); v1 kept too: with v4 rolled back from, it is
    # the one champion besides v3 that a rollback goes to; v2 was never champion
    assert left == [1, 3, 4]

    moves = history.read(client, NAME)
    champions = timeline.done(moves, "champion")
    assert [(m.from_version, m.to_version, m.how) for m in champions] == [
        (None, 1, "gate"), (1, 3, "gate"), (3, 4, "manual"), (4, 3, "rollback")]  # fmt: skip
    manual = champions[2]
    assert manual.after is not None and manual.before is not None
    assert marks[1] <= manual.after <= marks[2] < by_hand < manual.before <= marks[4]
    assert champions[3].reason == "v4 misroutes receipts" and champions[3].run_id
    windows = [(0, 1), (1, 2), (3, 4)]  # each pipeline move inside the call that made it
    for m, (first, last) in zip([champions[0], champions[1], champions[3]], windows, strict=True):
        assert marks[first] <= m.when <= marks[last], m

    def truth(at: float) -> int | None:
        holder = None
        for m in champions:
            if at >= (by_hand if m.how == "manual" else m.when):
                holder = m.to_version
        return holder

    start, end = marks[0] - 1, marks[-1] + 1
    for i in range(400):
        at = start + (end - start) * i / 399
        got = timeline.champion_at(moves, at)
        if manual.after < at < manual.before:
            assert got == (None, (3, 4)), at
        else:
            assert got == (truth(at), None), at


def test_history_prints_the_moves_and_the_champion_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    client = versions(2)
    gate_move(client, 1)
    between = time.time()
    gate_move(client, 2)
    assert history_step.main([NAME, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["alias"], r["from_version"], r["to_version"], r["how"]) for r in records] == [
        ("champion", None, 1, "gate"), ("champion", 1, 2, "gate")]  # fmt: skip
    assert set(records[0]) == {"alias", "from_version", "to_version", "how", "reason", "run_id", "user",
                               "time", "after", "before"}  # fmt: skip
    assert history_step.main([NAME, "--json", "--at", timeline.iso(between) or ""]) == 0
    at = timeline.iso(between)
    assert json.loads(capsys.readouterr().out) == {"at": at, "champion": 1, "between": None}
    client.set_registered_model_alias(NAME, "champion", "1")  # by hand, not yet seen by any step
    just_after = time.time()
    assert history_step.main([NAME, "--at", timeline.iso(just_after) or ""]) == 0
    assert "v2 or v1 (the alias was moved by hand about then)" in capsys.readouterr().out
    assert history_step.main([NAME, "--at", timeline.iso(time.time() + 3600) or ""]) == 0
    assert capsys.readouterr().out.endswith(": champion v1\n")  # after the look: as it is now
    assert history_step.main(["nothing-here"]) == 2
    assert "no history of 'nothing-here'" in capsys.readouterr().err


def test_history_outlives_deleting_the_registered_model() -> None:
    client = versions(1)
    gate_move(client, 1)
    client.delete_registered_model(NAME)
    assert [(m.to_version, m.how) for m in history.read(client, NAME)] == [(1, "gate")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to_version", "2"], "rollback needs a reason"),
        (["--to_version", "9", "--reason", "r"], "has no version 9"),
        (["--to_version", "3", "--reason", "r"], "is champion already"),
        (["--to_version", "1", "--reason", "r"], "is not self-contained and verified"),
        (["--to_version", "2", "--reason", "r"], "is a text-generation model"),
        (["--reason", "r", "--registered_model", "nope"], "registered model 'nope' does not exist"),
    ],
)
def test_rollback_refuses_in_one_line_and_changes_nothing(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = versions(3)
    client.set_model_version_tag(NAME, "1", "verified", "false")
    client.set_model_version_tag(NAME, "2", "task", "text-generation")
    gate_move(client, 3)
    before = [(m.record, m.state) for m in history.records(client, NAME)]
    capsys.readouterr()
    assert rollback.main(argv + (["--registered_model", NAME] if "nope" not in argv else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert champion(client) == 3
    assert [(m.record, m.state) for m in history.records(client, NAME)] == before
    assert not any(ROLLED_BACK_TAG in v.tags for v in client.search_model_versions(f"name = '{NAME}'"))
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(experiments, "tags.`pipeline.step` = 'rollback'")  # no run either


def test_without_an_earlier_champion_rollback_asks_for_a_version(capsys: pytest.CaptureFixture[str]) -> None:
    client = versions(2)
    gate_move(client, 2)
    assert rollback.main(["--reason", "r"]) == 2
    assert "no earlier champion" in capsys.readouterr().err
    assert champion(client) == 2


def test_a_version_rolled_back_from_is_promoted_only_by_a_rollback() -> None:
    client = versions(2)
    gate_move(client, 1)
    gate_move(client, 2)
    assert rollback.main(["--reason", "v2 is worse"]) == 0
    gate_move(client, 2)  # a later gate or persist rerun: refused
    assert champion(client) == 1
    decision = gate.judge_version(client, NAME, client.get_model_version(NAME, "2"), None, Path())  # type: ignore[arg-type]
    assert not decision.passed and "rolled back from" in decision.reason
    assert rollback.main(["--reason", "v2 was fine after all", "--to_version", "2"]) == 0
    assert champion(client) == 2 and ROLLED_BACK_TAG not in client.get_model_version(NAME, "2").tags
    assert client.get_model_version(NAME, "1").tags[ROLLED_BACK_TAG]  # what it left is marked now
    # with v1 rolled back from too, no earlier champion is left for a default rollback
    assert rollback.main(["--reason", "again"]) == 2


KILL_POINTS = ("rollback.checked", "rollback.champion.recorded", "rollback.marked",
               "rollback.champion.moved", "rollback.moved")  # fmt: skip


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_rollback_killed_anywhere_leaves_alias_marks_and_history_consistent(
    point: str, tracking: Path
) -> None:
    client = versions(2)
    gate_move(client, 1)
    gate_move(client, 2)
    env = os.environ | {"PYTHONPATH": str(PROJECT_DIR), tracking_module.KILL_AT_ENV: point}
    killed = subprocess.run([sys.executable, "-m", "steps.rollback", "--reason", "killed"], env=env,
                            cwd=tracking, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    moved = champion(client) == 1
    assert moved == (point in ("rollback.champion.moved", "rollback.moved"))
    # a reader sees what happened, before anyone settles it
    assert timeline.expected(history.read(client, NAME))["champion"] == champion(client)
    with locks.registry_lock(client, NAME, timeout_s=30):  # the dead rollback's lock is broken
        history.observe(client, NAME)  # what the next step does first
    states = {m.state for m in history.records(client, NAME)}
    assert timeline.PENDING not in states
    marked = ROLLED_BACK_TAG in client.get_model_version(NAME, "2").tags
    assert marked == moved
    assert timeline.expected(history.read(client, NAME))["champion"] == champion(client)
    # and the rollback, run again, does what it was asked (or, done already, says so)
    again = subprocess.run([sys.executable, "-m", "steps.rollback", "--reason", "again", "--to_version", "1"],
                           env=os.environ | {"PYTHONPATH": str(PROJECT_DIR)}, cwd=tracking,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == (2 if moved else 0), again.stderr[-2000:]
    assert champion(client) == 1 and ROLLED_BACK_TAG in client.get_model_version(NAME, "2").tags


def test_a_manual_move_is_found_by_the_next_step_with_its_interval() -> None:
    client = versions(2)
    gate_move(client, 1)
    seen = time.time()
    client.set_registered_model_alias(NAME, "champion", "2")
    assert version_cleanup.main(["--dry_run", "true"]) == 0  # a dry run records nothing
    assert [m.how for m in history.read(client, NAME)] == ["gate"]
    assert version_cleanup.main([]) == 0
    manual = history.read(client, NAME)[-1]
    assert (manual.how, manual.from_version, manual.to_version) == ("manual", 1, 2)
    assert manual.after is not None and manual.before is not None
    assert manual.after <= seen + 1 and manual.before >= seen


def test_version_cleanup_keeps_as_many_champions_a_rollback_can_go_to() -> None:
    rolled = {"rolled_back_by": "run"}
    versions = {1: {}, 2: {}, 3: rolled, 4: rolled, 5: {}}
    # latest first 5, 4, 3, 2, 1: the last 3 are 5, 4, 3, and with 4 and 3 rolled back from, 2 and 1 too
    assert version_cleanup.kept_champions([5, 4, 3, 2, 1], versions, 3) == [5, 4, 3, 2, 1]
    assert version_cleanup.kept_champions([5, 4, 3, 2, 1], versions, 1) == [5]
    assert version_cleanup.kept_champions([9, 5, 2], versions, 2) == [5, 2]  # v9 is gone


def test_a_pipeline_move_is_timed_when_the_alias_had_moved() -> None:
    client = versions(1)
    wrote: list[float] = []
    with locks.registry_lock(client, NAME):
        history.move(
            client, NAME, "champion", 1, "gate", "why", step_run(), lambda: wrote.append(time.time())
        )
    (recorded,) = history.read(client, NAME)
    assert recorded.time is not None and recorded.time > wrote[0]  # not when the record was begun


def test_a_move_by_hand_while_a_step_held_the_lock_is_found_with_its_true_interval() -> None:
    client = versions(2)
    gate_move(client, 1)
    with locks.registry_lock(client, NAME):
        history.observe(client, NAME)  # the step's first look
        looked = time.time()
        client.set_registered_model_alias(NAME, "champion", "2")  # by hand, meanwhile (no lock)
        by_hand = time.time()
        history.seen(client, NAME)  # the step's last word
    manual = history.read(client, NAME)[-1]
    assert (manual.how, manual.from_version, manual.to_version) == ("manual", 1, 2)
    assert manual.after is not None and manual.before is not None
    assert manual.after <= looked < by_hand <= manual.before
    assert history.read(client, NAME) == history.observe(client, NAME)  # seen: nothing new to record


def test_a_registered_model_made_again_under_its_name_starts_a_new_life() -> None:
    client = versions(3)
    gate_move(client, 2)
    assert version_cleanup.main(["--delete_registered_model", "true"]) == 0
    deleted = time.time()
    versions(3)  # the name again: its v1-v3 are other models
    gate_move(client, 1)
    past = history.read(client, NAME)
    assert [(m.alias, m.from_version, m.to_version, m.how) for m in past] == [
        ("champion", None, 2, "gate"),
        ("champion", 2, None, "cleanup"),
        ("champion", None, 1, "gate"),
    ]
    first, gone, again = past
    assert first.generation != again.generation and gone.generation == first.generation
    assert timeline.champion_at(past, gone.when - 0.001) == (2, None)
    assert timeline.champion_at(past, deleted) == (None, None)
    assert timeline.champion_at(past, again.when) == (1, None)
    # the old life's v2 (another model than this one's v2) is nobody's rollback target, nor a
    # champion version_cleanup keeps
    assert rollback.main(["--reason", "r"]) == 2
    assert version_cleanup.main(["--keep_last", "1", "--keep_champions", "2"]) == 0
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'")) == [1, 3]
    shown = card.last_moves(client, NAME)  # the card and the report: this life's moves
    assert len(shown) == 1 and "none -> v1" in shown[0]


def test_records_written_before_lives_were_told_apart_are_placed_in_their_own() -> None:
    old = [move("champion", None, 1, 100.0), move("champion", 1, 2, 200.0)]  # untagged: an old store
    gone = dataclasses.replace(move("champion", 2, None, 300.0), generation="50000")  # its life: 50 s on
    new = dataclasses.replace(move("champion", None, 1, 900.0), generation="800000")  # made again: 800 s
    assert [m.generation for m in timeline.placed([*old, gone, new], "800000")] == ["50000"] * 3 + ["800000"]
    assert [m.generation for m in timeline.placed([*old, move("champion", None, 1, 810.0)], "800000")] == [
        "", "", "800000"]  # fmt: skip
    # older than every life known: an earlier life, deleted by hand; it ends before the new one
    placed = timeline.placed([*old, new], "800000")
    assert timeline.expected(timeline.of(placed, "800000"))["champion"] == 1
    assert timeline.champions_latest_first(timeline.of(placed, "800000")) == [1]
    (end,) = timeline.ends(NAME, placed, "800000", 800.0)
    assert (end.from_version, end.to_version, end.how, end.after, end.before) == (
        2,
        None,
        "manual",
        200.0,
        800.0,
    )
    assert timeline.champion_at([*placed, end], 500.0) == (None, (2, None))


def test_a_registered_model_deleted_by_hand_ends_its_life_in_an_interval() -> None:
    client = versions(2)
    gate_move(client, 2)
    last = time.time()
    client.delete_registered_model(NAME)  # outside the pipeline
    deleted = time.time()
    past = timeline.of(*history.looked(client, NAME))  # read only: the end is shown, not written
    assert [(m.from_version, m.to_version, m.how) for m in history.looked(client, NAME)[0]] == [
        (None, 2, "gate"), (2, None, "manual")]  # fmt: skip
    assert past == []  # no registered model now: no life of its own
    versions(1)
    gate_move(client, 1)  # the next step records how the old life ended
    gate, end, new = history.read(client, NAME)
    assert (end.how, end.from_version, end.to_version, end.generation) == ("manual", 2, None, gate.generation)
    assert end.after is not None and end.before is not None
    assert end.after <= last < deleted < end.before <= new.when
    assert timeline.champion_at([gate, end, new], deleted) == (None, (2, None))


@pytest.mark.parametrize("point", ["rollback.champion.moved", "rollback.moved"])
def test_a_rollback_to_a_marked_version_killed_after_the_alias_leaves_it_unmarked(
    point: str, tracking: Path
) -> None:
    client = versions(2)
    gate_move(client, 1)
    gate_move(client, 2)
    assert rollback.main(["--reason", "v2 is worse"]) == 0  # v2 marked, v1 champion
    env = os.environ | {"PYTHONPATH": str(PROJECT_DIR), tracking_module.KILL_AT_ENV: point}
    argv = [sys.executable, "-m", "steps.rollback", "--reason", "v2 was fine", "--to_version", "2"]
    killed = subprocess.run(argv, env=env, cwd=tracking, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert champion(client) == 2
    with locks.registry_lock(client, NAME, timeout_s=30):
        history.observe(client, NAME)
    assert ROLLED_BACK_TAG not in client.get_model_version(NAME, "2").tags  # the champion is unmarked
    assert ROLLED_BACK_TAG in client.get_model_version(NAME, "1").tags


def test_a_rollback_waits_for_a_step_that_holds_the_lock(tracking: Path) -> None:
    """What makes a rollback racing a register end as if serial: it moves nothing while another
    step holds the registered model's lock, and then judges the registry as that step left it."""
    client = versions(3)
    gate_move(client, 1)
    gate_move(client, 2)
    env = os.environ | {"PYTHONPATH": str(PROJECT_DIR)}
    argv = [sys.executable, "-m", "steps.rollback", "--reason", "back"]  # to the earlier champion
    rollbacks = "tags.`pipeline.step` = 'rollback'"
    with locks.registry_lock(client, NAME):  # a register in its gate
        waiting = subprocess.Popen(argv, env=env, cwd=tracking, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not client.search_runs([e.experiment_id for e in client.search_experiments()], rollbacks):
            assert waiting.poll() is None and time.monotonic() < deadline, waiting.communicate()[0]
            time.sleep(0.1)
        time.sleep(2)  # the rollback's run is open: it is at the lock
        assert waiting.poll() is None and champion(client) == 2
        gate.move_champion(client, NAME, "3", "gate", "v3 is better", step_run())  # the register's move
        history.seen(client, NAME)
    output = waiting.communicate(timeout=120)[0]
    assert waiting.returncode == 0, output
    # serial: the champion before v3 is v2 (before the register, it would have gone to v1)
    assert champion(client) == 2 and ROLLED_BACK_TAG in client.get_model_version(NAME, "3").tags
    champions = timeline.done(history.read(client, NAME), "champion")
    assert [(m.from_version, m.to_version, m.how) for m in champions] == [
        (None, 1, "gate"), (1, 2, "gate"), (2, 3, "gate"), (3, 2, "rollback")]  # fmt: skip
