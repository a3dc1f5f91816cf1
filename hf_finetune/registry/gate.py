"""The champion gate: may a new registered version take the ``champion`` alias?

``register`` (for a new version) and ``persist`` (for a version that waited for its weights) ask
it, under the registered model's lock. The rule:

1. the candidate's test metric (the task's ``gate_metric``: ``test_f1`` for text classification)
   is at least the task's floor (``min_test_f1``); and
2. if there is a champion, the candidate is better than it **on the same rows**: the candidate's
   own test split, less the rows the champion was trained or validated on (found through the
   champion's lineage; a new seed or new data puts some there), which are counted and left out.
   Both models' predictions on those rows are paired (the task scores them: ``Task.compare``),
   and a seeded bootstrap of the rows (``paired``) gives a 95 % interval of F1(candidate) -
   F1(champion). The candidate
   wins when its F1 is higher **and** the interval's lower end is above ``-champion_tolerance``.
   With the default tolerance 0 that means measurably better; a model that predicts exactly what
   the champion predicts never moves the alias.

A champion that cannot be loaded or scored is reported in one line and the candidate is judged
on rule 1 alone, with the reason recorded. Every version gets the comparison as tags
(``gate_*``, see ``comparison_tags``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from hf_finetune import artifacts, chain, logs
from hf_finetune.chain import CHAMPION
from hf_finetune.config import Config
from hf_finetune.tags import (
    CANDIDATE_F1_TAG,
    CHAMPION_F1_TAG,
    COMPARED_TAG,
    EXCLUDED_TAG,
    GATE_REASON_TAG,
    GATE_TAG,
    HIGH_TAG,
    LOW_TAG,
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
) -> Gate:
    """The rule of this module's docstring; ``note`` says why there is no comparison, if one was
    expected (a champion that could not be scored). ``metric``: the task's ``gate_metric``, and
    whether more of it is better (otherwise the floor is a ceiling and the difference is turned
    round, so that "better" means the same in every line)."""
    sign = 1.0 if higher_is_better else -1.0
    if sign * (test_f1 - min_test_f1) < 0:
        side = "below" if higher_is_better else "above"
        return Gate(
            False, f"test_{metric} {test_f1:.4f} is {side} min_test_{metric} {min_test_f1:.4f}", comparison
        )
    holds = ">=" if higher_is_better else "<="
    base = f"test_{metric} {test_f1:.4f} {holds} min_test_{metric} {min_test_f1:.4f}"
    if comparison is None:
        return Gate(True, f"{base}; {note or 'no champion yet'}")
    c = comparison
    label = {"f1": "F1"}.get(metric, metric)
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


def comparison_tags(gate: Gate, test_f1: float, test_rows: int) -> dict[str, str]:
    """The gate's tags for a model version: the decision and the comparison behind it (with no
    champion, the candidate's own figures and empty champion fields)."""
    c = gate.comparison
    return {
        GATE_TAG: "passed" if gate.passed else "failed",
        GATE_REASON_TAG: gate.reason,
        COMPARED_TAG: c.champion_version if c else "",
        ROWS_TAG: str(c.rows if c else test_rows),
        EXCLUDED_TAG: str(c.excluded if c else 0),
        CANDIDATE_F1_TAG: f"{c.candidate_f1 if c else test_f1:.6f}",
        CHAMPION_F1_TAG: f"{c.champion_f1:.6f}" if c else "",
        LOW_TAG: f"{c.low:.6f}" if c else "",
        HIGH_TAG: f"{c.high:.6f}" if c else "",
    }


def shared_rows(candidate: pd.DataFrame, champion_seen: set[str]) -> tuple[pd.DataFrame, int]:
    """The candidate's test rows the champion never saw in training or validation, and how many
    were left out."""
    seen = candidate["text"].isin(champion_seen)
    return candidate[~seen].reset_index(drop=True), int(seen.sum())


# ----------------------------------------------------------------------------- MLflow
def champion_version(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def champion_outputs(task: Task, name: str, version: str, texts: list[str]) -> list[str]:
    """What the champion says of ``texts``, loaded as a user loads it (pyfunc, from the registry)."""
    import mlflow

    return task.served_outputs(mlflow.pyfunc.load_model(f"models:/{name}/{version}"), texts)


def seen_texts(run_id: str, dst: Path) -> set[str]:
    """The texts a prepare run gave to training and validation."""
    seen: set[str] = set()
    for path in SEEN_SPLITS:
        seen |= set(pd.read_parquet(artifacts.download(run_id, path, dst))["text"])
    return seen


def judge(client: Any, name: str, evaluate_run_id: str, test_f1: float, cfg: Config, work: Path) -> Gate:
    """The gate for the model evaluate run ``evaluate_run_id`` scored, against the champion now."""
    task = registry.task_of(cfg)

    def rule(comparison: Comparison | None, note: str = "") -> Gate:
        floor = task.gate_floor(cfg)
        return decide(
            test_f1, floor, comparison, cfg.champion_tolerance, note, task.gate_metric, task.higher_is_better
        )

    if test_f1 < task.gate_floor(cfg):
        return rule(None)
    champion = champion_version(client, name)
    if champion is None:
        return rule(None)
    number = str(champion.version)
    try:
        scored = pd.read_parquet(
            artifacts.download(evaluate_run_id, chain.PREDICTIONS_FILE, work / "candidate")
        )
        seen = seen_texts(champion.tags["run.prepare"], work / "champion")
        rows, excluded = shared_rows(scored, seen)
        said = champion_outputs(task, name, number, rows["text"].tolist()) if len(rows) else []
    except Exception as exc:  # noqa: BLE001 - any failure to score it means "judge without it"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        note = (
            f"champion v{number} could not be scored ({type(exc).__name__}: {first}); "
            f"judged on min_test_{task.gate_metric} alone"
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
    test_f1 = float(version.tags[f"test_{registry.task_of(cfg).gate_metric}"])
    decision = judge(client, name, version.tags[f"run.{chain.EVALUATE}"], test_f1, cfg, work)
    for key, value in comparison_tags(decision, test_f1, int(version.tags.get(ROWS_TAG, 0))).items():
        client.set_model_version_tag(name, version.version, key, value)
    return decision


def move_champion(client: Any, name: str, version: str) -> bool:
    """Point ``champion`` of ``name`` at ``version``: the one place the alias moves. Call it under
    the registered model's lock, after the gate passed. Returns whether the alias moved."""
    if str(client.get_registered_model(name).aliases.get(CHAMPION)) == str(version):
        return False
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return True
