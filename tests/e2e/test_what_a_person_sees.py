"""What a person sees after a pipeline: run names, the parent run's description, datasets and
model, the pipeline report and the model card, in a real browser and in MLflow's own UI."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

from hf_finetune import report, ui
from hf_finetune.registry import card
from tests.browser import browser, open_page
from tests.recorded import child_runs
from tests.server import free_port, serving

pytestmark = pytest.mark.slow
STEPS = ["prepare", "tokenize", "finetune", "evaluate", "log_model", "register", "persist", "version_cleanup"]
MODEL = "sms-spam-classifier"


@contextlib.contextmanager
def mlflow_ui(tmp: Path) -> Iterator[str]:
    """A real ``mlflow ui`` on this test's store, on a free loopback port; its address."""
    port = free_port()
    log = tmp / "ui.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"]]
            + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    address = f"http://127.0.0.1:{port}"
    with serving(process, address, log):
        yield address


def test_the_parent_run_says_what_it_did_and_links_what_its_children_made(pipeline: str) -> None:
    client = mlflow.MlflowClient()
    parent = client.get_run(pipeline)
    children = child_runs(pipeline)
    evaluate = children["evaluate"].data.metrics
    description = parent.data.tags["mlflow.note.content"]
    assert "Profile `smoke`" in description and "ran prepare, tokenize, finetune" in description
    assert f"Test F1 **{evaluate['test_f1']:.3f}**" in description
    assert f"TF-IDF + linear SVM {evaluate['classical_f1']:.3f}" in description
    version = children["register"].data.tags["model_version"]
    assert f"`{MODEL}` version {version}" in description and "report/pipeline.html" in description
    # prepare's three splits and log_model's model, linked to the parent
    assert {d.dataset.digest for d in parent.inputs.dataset_inputs} == {
        d.dataset.digest for d in children["prepare"].inputs.dataset_inputs
    }
    assert len(parent.inputs.dataset_inputs) == 3
    model_id = children["log_model"].data.tags["pipeline.model_id"]
    assert [m.model_id for m in parent.outputs.model_outputs] == [model_id]
    for name in ("test_f1", "classical_f1", "baseline_f1", "probe_f1"):
        assert parent.data.metrics[name] == evaluate[name]
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags[ui.KIND_TAG] == ui.KIND and "test_f1" in experiment.tags[ui.DESCRIPTION_TAG]
    assert "pipeline.report_error" not in parent.data.tags


def test_the_version_description_is_its_model_card_and_so_is_model_card_md(
    pipeline: str, tmp_path: Path
) -> None:
    client = mlflow.MlflowClient()
    register = child_runs(pipeline)["register"]
    number = register.data.tags["model_version"]
    version = client.get_model_version(MODEL, number)
    expected = card.render(card.gather(client, MODEL, number))
    assert version.description == expected
    evaluate = child_runs(pipeline)["evaluate"].data.metrics
    assert "| this model |" in expected and f"{evaluate['test_f1']:.3f} |" in expected
    assert "CC BY 4.0" in expected and "2010-2012" in expected  # from the corpus's dataset.yaml
    assert f"Aliases now: {', '.join(sorted(version.aliases))}." in expected
    model_id = client.get_run(register.data.tags["pipeline.upstream_run_id"]).data.tags["pipeline.model_id"]
    # other tests of the session register the same logged model under names of their own: the
    # file holds the card written last, so write this version's now
    assert card.refresh(client, MODEL, number) is True
    location = client.get_logged_model(model_id).artifact_location  # this test's store is local
    assert (Path(location.removeprefix("file://")) / card.CARD_FILE).read_text(encoding="utf-8") == expected


def test_the_report_loads_whole_in_chromium_and_shows_the_chain_and_the_result(
    pipeline: str, tmp_path: Path
) -> None:
    page = Path(
        mlflow.artifacts.download_artifacts(
            run_id=pipeline, artifact_path=report.REPORT_PATH, dst_path=str(tmp_path)
        )
    )
    html = page.read_text(encoding="utf-8")
    assert "<script" not in html and "<link" not in html
    test_f1 = child_runs(pipeline)["evaluate"].data.metrics["test_f1"]
    with browser() as chromium:
        seen = open_page(chromium, page.as_uri(), "e2e-report.png")
    assert seen.console_errors == [] and seen.failed_requests == []
    assert all(url.startswith(("file:", "data:")) for url in seen.requests), seen.requests
    for step in STEPS:
        assert step in seen.text, step
    assert f"{test_f1:.3f}" in seen.text and "Champion gate" in seen.text


def expand_the_parent_run(page: Any) -> None:
    """Click the parent run's expander, as a person would, and wait for its children."""
    page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
    page.get_by_text("version_cleanup", exact=True).first.wait_for(timeout=60_000)
    page.wait_for_timeout(500)


def read_the_framed_report(page: Any) -> str:
    """The text of the report as MLflow's artifact view shows it (in a frame)."""
    frame = page.frame_locator("iframe").first
    frame.get_by_text("Champion gate").wait_for(timeout=60_000)
    return str(frame.locator("body").inner_text())


def test_mlflow_ui_shows_the_step_names_and_the_model_card(pipeline: str, tmp_path: Path) -> None:
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(pipeline).info.experiment_id
    number = child_runs(pipeline)["register"].data.tags["model_version"]
    framed: list[str] = []
    with mlflow_ui(tmp_path) as address, browser() as chromium:
        runs = open_page(
            chromium,
            ui.runs_page(address, experiment_id),
            "e2e-ui-runs.png",
            wait_for_text="main smoke",
            then=expand_the_parent_run,
        )
        version = open_page(
            chromium,
            f"{address}/#/models/{MODEL}/versions/{number}",
            "e2e-ui-model-card.png",
            wait_for_text="Quality on the test split",
        )
        in_ui = open_page(
            chromium,
            ui.report_page(address, experiment_id, pipeline),
            "e2e-ui-report.png",
            wait_for_text="pipeline.html",
            then=lambda page: framed.append(read_the_framed_report(page)),
        )
    assert "Model training" in runs.text  # the experiment opens on its runs, not on GenAI pages
    for step in STEPS:
        assert step in runs.text, step
    assert "main smoke" in runs.text
    assert "Training data" in version.text and "How to use" in version.text
    assert "report/pipeline.html" in in_ui.text  # the artifact view, with the report in its frame
    for step in STEPS:
        assert step in framed[0], step


def aliases(client: mlflow.MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(number) for alias, number in client.get_registered_model(name).aliases.items()}


def test_a_register_that_fails_after_moving_the_aliases_gives_them_back(
    pipeline: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new version is deleted on a failure, and with it the aliases it took: the versions that
    held them get them back, so the registry is as it was. A version the pipeline did not make
    keeps the description it was given."""
    from hf_finetune.profiles import load_config
    from hf_finetune.tags import PENDING_TAG
    from steps import register

    client = mlflow.MlflowClient()
    name = "rollback-spam"
    log_model_run = child_runs(pipeline)["log_model"].info.run_id
    cfg = load_config("smoke", {"registered_model": name})
    register.run(log_model_run, cfg, "smoke")
    assert aliases(client, name) == {"champion": "1", "challenger": "1"}
    # v1 as if registered by hand: the same model may be registered again, and has a description
    client.delete_model_version_tag(name, "1", "run.log_model")
    client.update_model_version(name, "1", description="written by a person")
    delete_tag = mlflow.MlflowClient.delete_model_version_tag

    def fail_at_the_end(self: Any, model: str, version: str, key: str) -> None:
        if key == PENDING_TAG:
            raise RuntimeError("the store went away")
        delete_tag(self, model, version, key)

    monkeypatch.setattr(mlflow.MlflowClient, "delete_model_version_tag", fail_at_the_end)
    with pytest.raises(RuntimeError, match="the store went away"):
        register.run(log_model_run, cfg, "smoke")
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert aliases(client, name) == {"champion": "1", "challenger": "1"}
    assert card.refresh(client, name, "1") is False
    assert client.get_model_version(name, "1").description == "written by a person"
