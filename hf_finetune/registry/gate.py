"""The champion gate: may a new registered version take the ``champion`` alias?

``register`` (for a new version) and ``persist`` (for a version that waited for its weights) ask
it, under the registered model's lock. The rule:

1. the candidate's test metric (the task's ``gate_metric``: ``test_f1`` for text classification,
   ``test_bits_per_byte`` for text generation) reaches the task's floor (``min_test_f1``; for
   text generation the base model's bits per byte on the same rows, a ceiling); and
2. if there is a champion, the candidate is better than it **on the same rows**: the candidate's
   own test split, less the rows the champion was trained or validated on (found through the
   champion's lineage; a new seed or new data puts some there), which are counted and left out.
   Both models are scored on those rows, each natively (``Task.champion_scores``: its labels, or
   its bits per byte under its own tokenizer and template), paired (``Task.compare``), and a
   seeded bootstrap of the rows (``paired``) gives a 95 % interval of the difference. The
   candidate wins when it is better **and** the interval's least improvement is above
   ``-champion_tolerance``. With the default tolerance 0 that means measurably better; a model
   that predicts exactly what the champion predicts never moves the alias.

A champion that cannot be loaded or scored is reported in one line and the candidate is judged
on rule 1 alone, with the reason recorded. Every version with a champion gets the comparison,
whatever its own score, as tags (``gate_*``, see ``comparison_tags``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from hf_finetune import artifacts, chain, logs
from hf_finetune.chain import CHAMPION
from hf_finetune.config import Config
from hf_finetune.registry import history
from hf_finetune.tags import (
    CANDIDATE_F1_TAG,
    CHAMPION_F1_TAG,
    COMPARED_TAG,
    EXCLUDED_TAG,
    GATE_CANDIDATE_TAG,
    GATE_CHAMPION_TAG,
    GATE_HIGH_TAG,
    GATE_LOW_TAG,
    GATE_METRIC_TAG,
    GATE_REASON_TAG,
    GATE_TAG,
    HIGH_TAG,
    LOW_TAG,
    ROLLED_BACK_REASON_TAG,
    ROLLED_BACK_TAG,
    ROWS_TAG,
)
from hf_finetune.tasks import registry
from hf_finetune.tasks.base import Task

log = logs.logger("gate")
# prepare's splits that a model was trained or validated on
SEEN_SPLITS = tuple(f"{chain.SPLITS_DIR}/{name}.parquet" for name in ("train", "validation"))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Candidate and champion on the same rows."""

    champion_version: str
    rows: int
    excluded: int
    candidate_f1: float
    champion_f1: float
    low: float  # the interval of candidate - champion F1
    high: float

    @property
    def diff(self) -> float:
        return self.candidate_f1 - self.champion_f1


@dataclasses.dataclass(frozen=True)
class Gate:
    passed: bool
    reason: str
    comparison: Comparison | None = None


# ----------------------------------------------------------------------------- pure functions


def decide(
    test_f1: float,
    min_test_f1: float,
    comparison: Comparison | None,
    tolerance: float,
    note: str = "",
    metric: str = "f1",
    higher_is_better: bool = True,
    floor_name: str = "",
) -> Gate:
    """The rule of this module's docstring; ``note`` says why there is no comparison, if one was
    expected (a champion that could not be scored). ``metric``: the task's ``gate_metric``, and
    whether more of it is better (otherwise the floor is a ceiling and the difference is turned
    round, so that "better" means the same in every line)."""
    sign = 1.0 if higher_is_better else -1.0
    floor_name = floor_name or f"min_test_{metric}"
    label = {"f1": "F1"}.get(metric, metric)
    # a floor is reached (>=); a ceiling (lower is better: the base model's figure) must be beaten (<)
    if (test_f1 < min_test_f1) if higher_is_better else not test_f1 < min_test_f1:
        side = "below" if higher_is_better else "not below"
        reason = f"test_{metric} {test_f1:.4f} is {side} {floor_name} {min_test_f1:.4f}"
        c = comparison
        if c is not None and c.rows:
            reason += (
                f"; on {c.rows} shared test rows {label} {c.candidate_f1:.4f} vs champion "
                f"v{c.champion_version}'s {c.champion_f1:.4f}"
            )
        return Gate(False, reason, comparison)
    holds = ">=" if higher_is_better else "<"
    base = f"test_{metric} {test_f1:.4f} {holds} {floor_name} {min_test_f1:.4f}"
    if comparison is None:
        return Gate(True, f"{base}; {note or 'no champion yet'}")
    c = comparison
    versus = (
        f"on {c.rows} shared test rows ({c.excluded} left out) {label} {c.candidate_f1:.4f} vs champion "
        f"v{c.champion_version}'s {c.champion_f1:.4f}, difference {c.diff:+.4f} "
        f"[{c.low:+.4f}, {c.high:+.4f}]"
    )
    if c.rows == 0:
        return Gate(False, f"{base}; no test row left to compare with champion v{c.champion_version}", c)
    worst = c.low if higher_is_better else -c.high  # the interval's least improvement
    if sign * c.diff <= 0:
        return Gate(False, f"{base}; not better: {versus}", c)
    if worst <= -tolerance:
        reaches = -tolerance if higher_is_better else tolerance
        return Gate(False, f"{base}; not measurably better (interval reaches {reaches:+.4f}): {versus}", c)
    return Gate(True, f"{base}; better: {versus}", c)


def comparison_tags(gate: Gate, test_f1: float, test_rows: int, task: Task | None = None) -> dict[str, str]:
    """The gate's tags for a model version: the decision and the comparison behind it (with no
    champion, the candidate's own figures and empty champion fields), in every task's terms
    (``gate_metric``, ``gate_candidate``, ``gate_champion``, ``gate_diff_low``/``_high``: the
    interval turned so that positive means the candidate is better) and, for an F1 gate, also
    under the F1 names."""
    c = gate.comparison
    metric, higher = (task.gate_metric, task.higher_is_better) if task else ("f1", True)
    low, high = (0.0, 0.0) if c is None else (c.low, c.high) if higher else (-c.high, -c.low)
    tags = {
        GATE_TAG: "passed" if gate.passed else "failed",
        GATE_REASON_TAG: gate.reason,
        COMPARED_TAG: c.champion_version if c else "",
        ROWS_TAG: str(c.rows if c else test_rows),
        EXCLUDED_TAG: str(c.excluded if c else 0),
        GATE_METRIC_TAG: metric,
        GATE_CANDIDATE_TAG: f"{c.candidate_f1 if c else test_f1:.6f}",
        GATE_CHAMPION_TAG: f"{c.champion_f1:.6f}" if c else "",
        GATE_LOW_TAG: f"{low:.6f}" if c else "",
        GATE_HIGH_TAG: f"{high:.6f}" if c else "",
    }
    if metric == "f1":
        tags |= {
            CANDIDATE_F1_TAG: tags[GATE_CANDIDATE_TAG],
            CHAMPION_F1_TAG: tags[GATE_CHAMPION_TAG],
            LOW_TAG: tags[GATE_LOW_TAG],
            HIGH_TAG: tags[GATE_HIGH_TAG],
        }
    return tags


def shared_rows(
    candidate: pd.DataFrame, champion_seen: set[str], key: str = "text"
) -> tuple[pd.DataFrame, int]:
    """The candidate's test rows the champion never saw in training or validation (rows named by
    their ``key`` column), and how many were left out."""
    seen = candidate[key].isin(champion_seen)
    return candidate[~seen].reset_index(drop=True), int(seen.sum())


# ----------------------------------------------------------------------------- MLflow
def champion_version(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def seen_texts(run_id: str, dst: Path, key: str = "text") -> set[str]:
    """The rows (their ``key`` column) a prepare run gave to training and validation."""
    seen: set[str] = set()
    for path in SEEN_SPLITS:
        seen |= set(pd.read_parquet(artifacts.download(run_id, path, dst))[key])
    return seen


def judge(
    client: Any, name: str, evaluate_run_id: str, test_f1: float, floor: float, cfg: Config, work: Path
) -> Gate:
    """The gate for the model evaluate run ``evaluate_run_id`` scored (its ``test_<gate_metric>``,
    and the task's ``floor`` of its metrics), against the champion now."""
    task = registry.task_of(cfg)

    def rule(comparison: Comparison | None, note: str = "") -> Gate:
        return decide(
            test_f1,
            floor,
            comparison,
            cfg.champion_tolerance,
            note,
            task.gate_metric,
            task.higher_is_better,
            task.floor_name,
        )

    champion = champion_version(client, name)
    if champion is None:
        return rule(None)
    number = str(champion.version)
    try:
        scored = pd.read_parquet(
            artifacts.download(evaluate_run_id, chain.PREDICTIONS_FILE, work / "candidate")
        )
        seen = seen_texts(champion.tags["run.prepare"], work / "champion", task.row_key)
        rows, excluded = shared_rows(scored, seen, task.row_key)
        uri = f"models:/{name}/{number}"
        said = task.champion_scores(uri, dict(champion.tags), rows, cfg) if len(rows) else []
    except Exception as exc:  # noqa: BLE001 - any failure to score it means "judge without it"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        note = (
            f"champion v{number} could not be scored ({type(exc).__name__}: {first}); "
            f"judged on {task.floor_name} alone"
        )
        log.info(note)
        return rule(None, note)
    if len(rows) == 0:
        comparison = Comparison(number, 0, excluded, float("nan"), float("nan"), float("nan"), float("nan"))
    else:
        ours, theirs, low, high = task.compare(rows, said, cfg)
        comparison = Comparison(number, len(rows), excluded, ours, theirs, low, high)
    return rule(comparison)


def judge_version(client: Any, name: str, version: Any, cfg: Config, work: Path) -> Gate:
    """The gate for a registered ``version`` against the champion of now (persist and an
    interrupted register ask again); its comparison tags are brought up to date. The champion
    itself passes as it is."""
    current = champion_version(client, name)
    if current is not None and str(current.version) == str(version.version):
        return Gate(True, version.tags.get(GATE_REASON_TAG, "already champion"))
    if rolled_back(dict(version.tags)):  # only a rollback to it may promote it
        return Gate(False, f"v{version.version} was {rolled_back(dict(version.tags))}")
    task = registry.task_of(cfg)
    test_f1 = float(version.tags[f"test_{task.gate_metric}"])
    floor = task.gate_floor(cfg, version_metrics(version.tags))
    decision = judge(client, name, version.tags[f"run.{chain.EVALUATE}"], test_f1, floor, cfg, work)
    rows = int(version.tags.get(ROWS_TAG, 0))
    for key, value in comparison_tags(decision, test_f1, rows, task).items():
        client.set_model_version_tag(name, version.version, key, value)
    return decision


def version_metrics(tags: dict[str, str]) -> dict[str, float]:
    """A version's metric tags (``test_f1``, ``base_bits_per_byte``, ...) as numbers."""
    out = {}
    for key, value in tags.items():
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def rolled_back(tags: dict[str, str]) -> str:
    """Why a version was rolled back from ("" if it was not): such a version is never promoted
    again by a gate or a persist, only by a rollback to it."""
    if ROLLED_BACK_TAG not in tags:
        return ""
    reason = tags.get(ROLLED_BACK_REASON_TAG, "")
    return f"rolled back from by run {tags[ROLLED_BACK_TAG]}" + (f" ({reason})" if reason else "")


def move_champion(client: Any, name: str, version: str, how: str, reason: str, run_id: str) -> bool:
    """Point ``champion`` of ``name`` at ``version``, recorded in the history (``how``: gate,
    persist or rollback; ``reason``: why; ``run_id``: the step's run): the one place the alias
    moves. Call it under the registered model's lock, after the gate passed. A version rolled back
    from moves only by a rollback. Returns whether the alias moved."""
    if how != "rollback" and rolled_back(dict(client.get_model_version(name, str(version)).tags)):
        log.info(f"{name} v{version} was rolled back from: only a rollback makes it champion again")
        return False
    return history.move(client, name, CHAMPION, version, how, reason, run_id)
