"""The model card of a registered version: what the model is, what it was trained on, how good
it is beside the baselines, its limits, how to call it, and where it came from.

It is the version's description (Markdown, which the registry page renders) and ``model_card.md``
among the logged model's files. ``register`` writes it when the version is made, and it is
written again whenever the version's standing changes: ``persist`` stores its weights, or the
``champion`` alias moves to or from it (``gate.move_champion``). Everything in it is read from the
version's tags and the runs they name, so it can be rebuilt at any time: ``refresh``.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from hf_finetune import chain, logs, uris
from hf_finetune.chain import CHAMPION
from hf_finetune.config import FIELDS
from hf_finetune.registry import history, timeline
from hf_finetune.tags import (
    BASE_MODEL_TAG,
    BASE_REVISION_TAG,
    DATA_CARD_TAG,
    DATA_DIGEST_TAG,
    DATA_SOURCE_TAG,
    MODEL_ID_TAG,
    PERSISTED_TAG,
    SWEEP_RUN_TAG,
)
from hf_finetune.tasks import registry
from hf_finetune.tasks.base import Task

log = logs.logger("card")
CARD_FILE = "model_card.md"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"  # hf_finetune/templates
# A SQL model registry keeps up to 5,000 characters of a version's description; a longer card
# goes whole into model_card.md and shortened into the description.
DESCRIPTION_LIMIT = 5000
METRIC_TITLES = {"f1": "F1", "bits_per_byte": "bits/byte", "exact_match": "exact match"}
SAMPLES = 5  # greedy generations the card shows, where evaluate wrote them


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the card says, gathered from the registry and the tracking store."""

    name: str
    version: str
    aliases: list[str]
    tags: dict[str, str]
    labels: list[str]
    positive_label: str
    data: dict[str, Any]  # source, digest, card (dataset.yaml), rows per split, class shares
    metrics: dict[str, dict[str, float]]  # "test" / "classical" / "baseline" / "probe" -> name -> value
    runs: dict[str, str]  # step -> run ID
    main_run_id: str
    code_version: str
    task: str = ""  # the task evaluate ran as ("": the default task)
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # generations, if any
    moves: list[str] = dataclasses.field(default_factory=list)  # the champion's last moves, one line each
    sweep_run_id: str = ""  # the sweep whose best trial main ran, if one did


# ----------------------------------------------------------------------------- pure functions
def task_named(name: str) -> Task:
    """The task a run or version says it was (a run from before tasks were recorded: the default)."""
    return registry.TASKS.get(
        name or str(FIELDS["task"].default), registry.TASKS[str(FIELDS["task"].default)]
    )


def grouped_metrics(metrics: dict[str, float], task: Task) -> dict[str, dict[str, float]]:
    """evaluate's flat metrics by prefix: ``test_f1`` -> ``{"test": {"f1": ...}}``."""
    groups: dict[str, dict[str, float]] = {}
    for prefix in (*task.baselines, "probe"):
        values = {k[len(prefix) + 1 :]: v for k, v in metrics.items() if k.startswith(prefix + "_")}
        if values:
            groups[prefix] = values
    return groups


def data_facts(prepare_tags: dict[str, str], prepare_metrics: dict[str, float]) -> dict[str, Any]:
    splits = {
        name: {
            "rows": int(prepare_metrics.get(f"rows_{name}", 0)),
            "shares": {
                k[len(name) + 7 :]: v for k, v in prepare_metrics.items() if k.startswith(f"{name}_share_")
            },
        }
        for name in chain.SPLITS
    }
    dropped = sum(int(v) for k, v in prepare_metrics.items() if k.startswith("dropped_"))
    return {
        "source": uris.redact(prepare_tags.get(DATA_SOURCE_TAG, "not recorded")),
        "digest": prepare_tags.get(DATA_DIGEST_TAG, ""),
        "card": json.loads(prepare_tags.get(DATA_CARD_TAG, "{}")),
        "rows_read": int(prepare_metrics.get("rows_read", 0)),
        "rows_dropped": dropped,
        "splits": splits,
    }


def render(facts: Facts) -> str:
    """The card as Markdown."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=False,  # Markdown, not HTML; the registry page renders it safely
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["f3"] = lambda value: "–" if value is None else f"{value:.3f}"
    env.filters["pct"] = lambda value: f"{100 * value:.1f} %"
    env.filters["title_of"] = lambda name: METRIC_TITLES.get(name, name.replace("_", " "))
    env.filters["cell"] = lambda text: " ".join(str(text).split()).replace("|", "\\|")[:80]
    task = task_named(facts.task)
    return env.get_template("model_card.md.j2").render(
        f=facts,
        baselines=task.baselines,
        metric_names=task.metric_names,
        describes=task.describes,
        usage=task.usage,
        samples=facts.samples,
        base_model=facts.tags.get(BASE_MODEL_TAG, "not recorded"),
        base_revision=facts.tags.get(BASE_REVISION_TAG, ""),
        persisted=facts.tags.get(PERSISTED_TAG) == "true",
    )


def description(card: str) -> str:
    """The card for the version's description: whole, or cut at a section under the limit."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    note = f"\n\n*(shortened: the whole card is `{CARD_FILE}` among the model's files)*\n"
    cut = card[: DESCRIPTION_LIMIT - len(note)]
    return cut[: cut.rfind("\n## ")] + note if "\n## " in cut else cut + note


# ----------------------------------------------------------------------------- MLflow
MAIN_RUN_TAG = "run.main"  # on a version: the main run whose register made it


def gather(client: Any, name: str, number: str) -> Facts:
    from hf_finetune import artifacts

    version = client.get_model_version(name, number)
    tags = dict(version.tags)
    runs = {step: tags[f"run.{step}"] for step in chain.STEPS if f"run.{step}" in tags}
    got = {step: client.get_run(run_id) for step, run_id in runs.items()}
    prepare, tokenize, evaluate = (got.get(s) for s in (chain.PREPARE, chain.TOKENIZE, chain.EVALUATE))
    prepare_metrics = dict(prepare.data.metrics) if prepare else {}
    eval_data = evaluate.data if evaluate else None
    main_run_id = tags.get(MAIN_RUN_TAG, "")
    main_run = client.get_run(main_run_id) if main_run_id else None
    task = eval_data.params.get("config.task", "") if eval_data else ""
    return Facts(
        samples=generation_samples(evaluate.info.run_id) if evaluate else [],
        name=name,
        version=str(number),
        aliases=sorted(version.aliases),
        tags=tags,
        labels=sorted(artifacts.id2label_of(tokenize).values()) if tokenize else [],
        positive_label=eval_data.params.get("config.positive_label", "") if eval_data else "",
        data=data_facts(dict(prepare.data.tags) if prepare else {}, prepare_metrics),
        metrics=grouped_metrics(dict(eval_data.metrics) if eval_data else {}, task_named(task)),
        runs=runs,
        main_run_id=main_run_id,
        code_version=main_run.data.tags.get("mlflow.source.git.commit", "") if main_run else "",
        task=task,
        moves=last_moves(client, name),
        sweep_run_id=main_run.data.tags.get(SWEEP_RUN_TAG, "") if main_run else "",
    )


def last_moves(client: Any, name: str) -> list[str]:
    """The last few moves of ``champion`` (``registry/history.py``), one line each, oldest first."""
    past, life = history.looked(client, name)  # this registered model's life: its versions
    moves = timeline.done(timeline.of(past, life), CHAMPION)
    return [timeline.describe(m) for m in moves][-timeline.LAST_MOVES :]


def generation_samples(evaluate_run_id: str) -> list[dict[str, Any]]:
    """The first few of evaluate's greedy generations (``evaluation/generations.csv``), if it
    wrote them: one row per test prompt, its reference completion and what the model generated."""
    import mlflow
    import pandas as pd

    if not any(
        a.path.endswith("generations.csv")
        for a in mlflow.artifacts.list_artifacts(run_id=evaluate_run_id, artifact_path=chain.EVAL_DIR)
    ):
        return []
    with tempfile.TemporaryDirectory(prefix="card-") as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=evaluate_run_id, artifact_path=f"{chain.EVAL_DIR}/generations.csv", dst_path=tmp
        )
        rows = pd.read_csv(path, keep_default_na=False).head(SAMPLES)
    return rows[["prompt", "completion", "prediction"]].astype(str).to_dict("records")


def ours(version: Any) -> bool:
    """Whether the pipeline registered this version (a card is written only for those: a version
    registered by hand keeps the description it was given)."""
    return f"run.{chain.LOG_MODEL}" in version.tags and f"run.{chain.PREPARE}" in version.tags


def refresh(client: Any, name: str, number: str) -> bool:
    """Write the card of version ``number`` of ``name`` (its description and ``model_card.md``
    with its logged model) from what the store says now. The card describes the model; it is not
    part of the registry's state: a card that cannot be written is reported and left as it was,
    never a reason to fail the step that changed the version. Returns whether it was written."""
    try:
        version = client.get_model_version(name, number)
        if not ours(version):
            return False
        text = render(gather(client, name, number))
        model_id = client.get_run(version.tags[f"run.{chain.LOG_MODEL}"]).data.tags.get(MODEL_ID_TAG)
        if model_id:
            with tempfile.TemporaryDirectory(prefix="card-") as tmp:
                path = Path(tmp) / CARD_FILE
                path.write_text(text, encoding="utf-8")
                client.log_model_artifact(model_id, str(path))
        client.update_model_version(name, number, description=description(text))
        return True
    except Exception as exc:  # noqa: BLE001 - see above
        log.warning(f"the model card of {name} v{number} was not written: {uris.redact(str(exc))}")
        return False


def refresh_others(client: Any, name: str, numbers: list[str | None], done: str) -> None:
    """Rewrite the cards of the other versions whose standing just changed (an alias left them)."""
    for number in dict.fromkeys(n for n in numbers if n and str(n) != str(done)):
        refresh(client, name, str(number))
