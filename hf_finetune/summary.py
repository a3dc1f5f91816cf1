"""What a reader of a ``main`` run sees: its description, its linked datasets and model, its report.

None of it is the pipeline's state: by the time it is written the registry has changed, so a part
that fails is a warning (and the tag ``pipeline.report_error``), never a failed main.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hf_finetune import chain, logs, report, tracking, uris
from hf_finetune.config import Config
from hf_finetune.tags import (
    ALREADY_TAG,
    GATE_REASON_TAG,
    GATE_TAG,
    MODEL_ID_TAG,
    REGISTERED_MODEL_TAG,
    VERSION_TAG,
)

log = logs.logger("main")
DESCRIPTION_TAG = "mlflow.note.content"  # what MLflow's UI shows as a run's description


def describe(
    profile: str, cfg: Config, actions: dict[str, str], metrics: dict[str, float], registered: dict[str, str]
) -> str:
    """The parent run's description: what this run did, in a few sentences (Markdown)."""
    ran = [step for step, action in actions.items() if action != "reused"]
    reused = [step for step, action in actions.items() if action == "reused"]
    lines = [
        f"Profile `{profile}`{f' on `{uris.redact(cfg.data)}`' if cfg.data else ''}, base model "
        f"`{cfg.base_model}`: ran {', '.join(ran) or 'no step'}"
        + (
            f"; reused {', '.join(reused)} from earlier runs (nothing they depend on changed)."
            if reused
            else "."
        )
    ]
    if "test_bits_per_byte" in metrics:  # a language model: its completion's bits per byte first
        beside = [
            f"{label} {metrics[key]:.3f}"
            for key, label in (("base_bits_per_byte", "base model"), ("prior_bits_per_byte", "label prior"))
            if key in metrics
        ]
        lines.append(
            f"Test bits per byte **{metrics['test_bits_per_byte']:.3f}** (lower is better"
            + (f"; same rows: {', '.join(beside)})" if beside else ")")
            + (f", exact match {metrics['test_exact_match']:.3f}." if "test_exact_match" in metrics else ".")
        )
    if "test_f1" in metrics:
        baselines = [
            f"{label} {metrics[key]:.3f}"
            for key, label in (
                ("classical_f1", "TF-IDF + linear SVM"),
                ("baseline_f1", "untrained base model"),
            )
            if key in metrics
        ]
        lines.append(
            f"Test F1 **{metrics['test_f1']:.3f}**"
            + (f" (same rows: {', '.join(baselines)})." if baselines else ".")
        )
    if registered:
        aliases = registered.get("aliases") or "no alias"
        what = "Already registered as" if registered.get("already") else "Registered"
        lines.append(
            f"{what} `{registered['name']}` version {registered['version']} ({aliases}); "
            f"gate {registered.get('gate', '?')}: {registered.get('reason', '')}."
        )
    lines.append(
        f"The whole story, with curves and the gate's comparison: `{report.REPORT_PATH}` among the artifacts."
    )
    return "\n\n".join(lines)


def finish_parent(client: Any, run_id: str, profile: str, cfg: Config) -> None:
    """What a reader of the parent run sees: its description, the datasets and the logged model
    its children produced, linked to it, and the pipeline report. None of it is the pipeline's
    state: by now the registry has changed, so a part that fails is reported (a warning, and the
    tag ``pipeline.report_error``) and never fails main."""
    parts: list[tuple[str, Callable[[], Any]]] = [
        (
            "description",
            lambda: client.set_tag(run_id, DESCRIPTION_TAG, describe_run(client, run_id, profile, cfg)),
        ),
        ("links", lambda: link_outputs(client, run_id)),
        ("report", lambda: report.write(client, run_id)),
    ]
    failed = []
    for part, write in parts:
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - see above
            failed.append(f"{part}: {uris.redact(str(exc))}"[:500])
            log.warning(f"the parent run's {part} was not written: {uris.redact(str(exc))}")
    if failed:
        client.set_tag(run_id, "pipeline.report_error", "; ".join(failed)[:5000])


def chain_runs(client: Any, run_id: str) -> dict[str, Any]:
    """The run of each step of this main (the original of a reused one)."""
    parent = client.get_run(run_id)
    return {step: client.get_run(parent.data.tags[f"pipeline.{step}_run_id"]) for step in chain.STEPS}


def describe_run(client: Any, run_id: str, profile: str, cfg: Config) -> str:
    runs = chain_runs(client, run_id)
    actions = {
        step: "ran" if run.data.tags.get("mlflow.parentRunId") == run_id else "reused"
        for step, run in runs.items()
    }
    register_tags = runs[chain.REGISTER].data.tags
    registered: dict[str, str] = {}
    if VERSION_TAG in register_tags:
        name, number = register_tags[REGISTERED_MODEL_TAG], register_tags[VERSION_TAG]
        try:
            aliases = ", ".join(sorted(client.get_model_version(name, number).aliases))
        except Exception:  # noqa: BLE001 - deleted since: the description says what was registered
            aliases = "deleted since"
        registered = {
            "name": name,
            "version": number,
            "aliases": aliases,
            "gate": register_tags.get(GATE_TAG, ""),
            "reason": register_tags.get(GATE_REASON_TAG, ""),
            "already": register_tags.get(ALREADY_TAG, ""),
        }
    return describe(profile, cfg, actions, runs[chain.EVALUATE].data.metrics, registered)


def link_outputs(client: Any, run_id: str) -> None:
    """Link prepare's datasets and log_model's logged model to the parent run."""
    from mlflow.entities import LoggedModelOutput

    runs = chain_runs(client, run_id)
    inputs = runs[chain.PREPARE].inputs
    datasets = list(inputs.dataset_inputs) if inputs and inputs.dataset_inputs else []
    if datasets:
        tracking.retry_lost_insert_race(lambda: client.log_inputs(run_id, datasets=datasets))
    model_id = runs[chain.LOG_MODEL].data.tags.get(MODEL_ID_TAG)
    if model_id:
        client.log_outputs(run_id, [LoggedModelOutput(model_id, 0)])
