"""The pipeline report: one self-contained HTML page per ``main`` run, ``report/pipeline.html``.

What a reviewer looks for after a run, on one page that MLflow's artifact view shows: the chain
(each step, its run, whether it ran, resumed or was reused, how long it took), the data, the
training curves, the test metrics beside the baselines evaluate logs, the confusion matrix and
curves, the gate's decision and its comparison, and the registered version with its aliases.
Images are embedded; the page loads nothing from anywhere. ``main`` writes it last; ``write``
rebuilds it for any main run.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from hf_finetune import artifacts, chain, logs
from hf_finetune.registry import card
from hf_finetune.tags import (
    GATE_REASON_TAG,
    GATE_TAG,
    PROFILE_TAG,
    REGISTERED_MODEL_TAG,
    RESUMED_FROM_TAG,
    REUSED_FROM_TAG,
    SWEEP_RUN_TAG,
    VERSION_TAG,
)

log = logs.logger("report")
REPORT_PATH = "report/pipeline.html"
LOSSES = ("train_loss", "val_loss")


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    run_id: str
    link: str
    action: str  # "ran", "resumed" or "reused"
    duration: str
    source_run_id: str  # the run that did the work (the original of a reused step)


@dataclasses.dataclass(frozen=True)
class Report:
    title: str
    main_run_id: str
    main_link: str
    profile: str
    written: str
    steps: list[Step]
    data: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    training_png: str  # a data: URI, or "" when finetune logged no curve
    images: dict[str, str]  # caption -> data: URI
    gate: dict[str, str]
    version: dict[str, Any]  # name, number, aliases, link; empty when nothing was registered
    task: str = ""  # the task evaluate ran as ("": the default task)
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # greedy generations, if any
    moves: list[str] = dataclasses.field(default_factory=list)  # the champion's last moves, one line each
    sweep_run_id: str = ""  # the sweep whose best trial this main ran, if one did


# ----------------------------------------------------------------------------- pure functions
def ui_root(tracking_uri: str) -> str:
    """Where MLflow's UI answers, for links: the tracking server (without credentials), or "" for
    a store with no UI of its own address. (MLflow's artifact view shows the page in a sandbox
    that follows no link: the links serve a reader who opened the page on its own.)"""
    if tracking_uri.startswith(("http://", "https://")):
        return re.sub(r"(?<=://)[^/]*@", "", tracking_uri).rstrip("/")
    return ""


def run_link(root: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the UI at ``root``; "" (no link: the ID is shown to copy) without one."""
    return f"{root}/#/experiments/{experiment_id}/runs/{run_id}" if root else ""


def duration(start_ms: int | None, end_ms: int | None) -> str:
    if not start_ms:
        return "–"
    seconds = max(0.0, ((end_ms or int(time.time() * 1000)) - start_ms) / 1000)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def by_epoch(history: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[float, float]]]:
    """Metric histories logged per optimizer step -> per epoch, through the ``epoch`` metric
    logged at the same steps."""
    epoch_at = dict(history.get("epoch", []))
    return {
        name: [(epoch_at[step], value) for step, value in points if step in epoch_at]
        for name, points in history.items()
        if name != "epoch" and points
    }


def training_figure(
    curves: dict[str, list[tuple[float, float]]], quality_curves: tuple[str, ...] = ()
) -> bytes:
    """The task's validation metrics (``quality_curves``; all but the losses when not given) and
    the losses against the epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qualities = quality_curves or tuple(n for n in curves if n not in LOSSES)
    panels = [(qualities, "validation")] if any(curves.get(n) for n in qualities) else []
    panels.append((LOSSES, "loss"))  # a task with no validation metric but the loss: one panel
    figure, axes_row = plt.subplots(1, len(panels), figsize=(9.4, 3.4), dpi=100)
    axes_list = list(axes_row) if len(panels) > 1 else [axes_row]
    for axes, (names, ylabel) in zip(axes_list, panels, strict=True):
        for name in names:
            points = sorted(curves.get(name, []))
            if points:
                axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def render(report: Report) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(card.TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["f3"] = lambda value: "–" if value is None else f"{value:.3f}"
    env.filters["pct"] = lambda value: f"{100 * value:.1f} %"
    task = card.task_named(report.task)
    return env.get_template("pipeline.html.j2").render(
        r=report,
        baselines=task.baselines,
        metric_names=task.metric_names,
        quality_curves=task.quality_curves,
    )


# ----------------------------------------------------------------------------- MLflow
def history(client: Any, run_id: str, names: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    return {
        name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
        for name in (*names, "epoch")
    }


def images(run_id: str, figures: dict[str, str]) -> dict[str, str]:
    """evaluate's pictures, embedded (those of the task's ``figures`` it logged)."""
    import mlflow

    found = {}
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        listed = {Path(f.path).stem for f in mlflow.MlflowClient().list_artifacts(run_id, chain.EVAL_DIR)}
        for stem, caption in figures.items():
            if stem in listed:
                path = artifacts.download(run_id, f"{chain.EVAL_DIR}/{stem}.png", Path(tmp) / stem, link=True)
                found[caption] = data_uri(path.read_bytes())
    return found


def gather(client: Any, main_run_id: str) -> Report:
    import mlflow

    parent = client.get_run(main_run_id)
    root = ui_root(mlflow.get_tracking_uri())
    experiment = parent.info.experiment_id
    steps, sources = [], {}
    for name in chain.STEPS:
        run_id = parent.data.tags.get(f"pipeline.{name}_run_id")
        if not run_id:
            continue
        run = client.get_run(run_id)
        tags = run.data.tags
        if tags.get("mlflow.parentRunId") == main_run_id:
            child = run
        else:  # a run main reused: its marker is the child of this main
            markers = client.search_runs(
                [experiment],
                f"tags.`mlflow.parentRunId` = '{main_run_id}' and tags.`pipeline.step` = '{name}'",
                max_results=1,
            )
            child = markers[0] if markers else run
        action = (
            "reused"
            if REUSED_FROM_TAG in child.data.tags
            else "resumed"
            if RESUMED_FROM_TAG in tags
            else "ran"
        )
        sources[name] = run
        steps.append(
            Step(
                name=name,
                run_id=child.info.run_id,
                link=run_link(root, experiment, child.info.run_id),
                action=action,
                duration=duration(run.info.start_time, run.info.end_time),
                source_run_id=run_id,
            )
        )
    prepare, finetune, evaluate = (sources.get(s) for s in (chain.PREPARE, chain.FINETUNE, chain.EVALUATE))
    register = sources.get(chain.REGISTER)
    task = card.task_named(evaluate.data.params.get("config.task", "") if evaluate else "")
    drawn = (*task.quality_curves, *LOSSES)
    curves = by_epoch(history(client, finetune.info.run_id, drawn)) if finetune else {}
    version: dict[str, Any] = {}
    gate: dict[str, str] = {}
    moves: list[str] = []
    if register and VERSION_TAG in register.data.tags:
        name, number = register.data.tags[REGISTERED_MODEL_TAG], register.data.tags[VERSION_TAG]
        moves = card.last_moves(client, name)
        gate = {
            "decision": register.data.tags.get(GATE_TAG, ""),
            "reason": register.data.tags.get(GATE_REASON_TAG, ""),
        }
        try:
            registered = client.get_model_version(name, number)
        except mlflow.exceptions.MlflowException:  # deleted since (version_cleanup, or by hand)
            version = {"name": name, "number": number, "aliases": [], "gone": True, "link": ""}
        else:
            # the version's tags: the gate's latest judgement (persist judges a waiting version again)
            gate |= {k: v for k, v in registered.tags.items() if k.startswith("gate_")}
            gate["decision"] = registered.tags.get(GATE_TAG, gate["decision"])
            gate["reason"] = registered.tags.get(GATE_REASON_TAG, gate["reason"])
            version = {
                "name": name,
                "number": number,
                "aliases": sorted(registered.aliases),
                "gone": False,
                "link": f"{root}/#/models/{name}/versions/{number}" if root else "",
            }
    return Report(
        title=parent.info.run_name or f"main {parent.data.tags.get(PROFILE_TAG, '')}",
        main_run_id=main_run_id,
        main_link=run_link(root, experiment, main_run_id),
        profile=parent.data.tags.get(PROFILE_TAG, ""),
        written=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        steps=steps,
        data=card.data_facts(dict(prepare.data.tags), dict(prepare.data.metrics)) if prepare else {},
        metrics=card.grouped_metrics(dict(evaluate.data.metrics), task) if evaluate else {},
        training_png=data_uri(training_figure(curves, task.quality_curves)) if any(curves.values()) else "",
        images=images(evaluate.info.run_id, task.figures) if evaluate else {},
        gate=gate,
        version=version,
        samples=card.generation_samples(evaluate.info.run_id) if evaluate else [],
        task=task.name,
        moves=moves,
        sweep_run_id=parent.data.tags.get(SWEEP_RUN_TAG, ""),
    )


def write(client: Any, main_run_id: str) -> str:
    """Build the report of ``main_run_id`` and log it to that run as ``report/pipeline.html``."""
    html = render(gather(client, main_run_id))
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        path = Path(tmp) / Path(REPORT_PATH).name
        path.write_text(html, encoding="utf-8")
        client.log_artifact(main_run_id, str(path), str(Path(REPORT_PATH).parent))
    return html
