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

from steps import chain, common
from steps.tags import (
    BASE_MODEL_TAG,
    BASE_REVISION_TAG,
    DATA_CARD_TAG,
    DATA_DIGEST_TAG,
    DATA_SOURCE_TAG,
    MODEL_ID_TAG,
    PERSISTED_TAG,
)

log = common.logger("card")
CARD_FILE = "model_card.md"
TEMPLATES = Path(__file__).parent / "templates"
# A SQL model registry keeps up to 5,000 characters of a version's description; a longer card
# goes whole into model_card.md and shortened into the description.
DESCRIPTION_LIMIT = 5000
METRICS = ("accuracy", "precision", "recall", "f1")
BASELINES = {
    "test": "this model",
    "classical": "TF-IDF + linear SVM (classical baseline)",
    "baseline": "base model, untrained head",
}


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


# ----------------------------------------------------------------------------- pure functions
def grouped_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """evaluate's flat metrics by prefix: ``test_f1`` -> ``{"test": {"f1": ...}}``."""
    groups: dict[str, dict[str, float]] = {}
    for prefix in (*BASELINES, "probe"):
        values = {k[len(prefix) + 1 :]: v for k, v in metrics.items() if k.startswith(prefix + "_")}
        if values:
            groups[prefix] = values
    return groups


def labels_from_shares(metrics: dict[str, float]) -> list[str]:
    """The labels, from prepare's ``train_share_<label>`` metrics."""
    return sorted(k[len("train_share_") :] for k in metrics if k.startswith("train_share_"))


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
        "source": common.redact(prepare_tags.get(DATA_SOURCE_TAG, "not recorded")),
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
    return env.get_template("model_card.md.j2").render(
        f=facts,
        baselines=BASELINES,
        metric_names=METRICS,
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
def gather(client: Any, name: str, number: str) -> Facts:
    version = client.get_model_version(name, number)
    tags = dict(version.tags)
    runs = {step: tags[f"run.{step}"] for step in chain.STEPS if f"run.{step}" in tags}
    prepare = client.get_run(runs[chain.PREPARE]) if chain.PREPARE in runs else None
    evaluate = client.get_run(runs[chain.EVALUATE]) if chain.EVALUATE in runs else None
    prepare_metrics = dict(prepare.data.metrics) if prepare else {}
    eval_data = evaluate.data if evaluate else None
    return Facts(
        name=name,
        version=str(number),
        aliases=sorted(version.aliases),
        tags=tags,
        labels=labels_from_shares(prepare_metrics),
        positive_label=eval_data.params.get("config.positive_label", "") if eval_data else "",
        data=data_facts(dict(prepare.data.tags) if prepare else {}, prepare_metrics),
        metrics=grouped_metrics(dict(eval_data.metrics) if eval_data else {}),
        runs=runs,
        main_run_id=eval_data.tags.get("mlflow.parentRunId", "") if eval_data else "",
        code_version=eval_data.tags.get("mlflow.source.git.commit", "") if eval_data else "",
    )


def refresh_others(client: Any, name: str, numbers: list[str | None], done: str) -> None:
    """Rewrite the cards of other versions whose standing just changed (the alias left them):
    a card that cannot be rewritten (its runs deleted since) is reported, never fatal."""
    for number in dict.fromkeys(n for n in numbers if n and str(n) != str(done)):
        try:
            refresh(client, name, str(number))
        except Exception as exc:  # noqa: BLE001 - a stale card of another version must not fail this one
            log.warning(f"the model card of {name} v{number} was not rewritten: {exc}")


def refresh(client: Any, name: str, number: str) -> str:
    """Write the card of version ``number`` of ``name`` (its description and ``model_card.md``
    with its logged model) from what the store says now; return it."""
    text = render(gather(client, name, number))
    client.update_model_version(name, number, description=description(text))
    model_id = client.get_run(
        client.get_model_version(name, number).tags[f"run.{chain.LOG_MODEL}"]
    ).data.tags.get(MODEL_ID_TAG)
    if model_id:
        with tempfile.TemporaryDirectory(prefix="card-") as tmp:
            path = Path(tmp) / CARD_FILE
            path.write_text(text, encoding="utf-8")
            client.log_model_artifact(model_id, str(path))
    return text
