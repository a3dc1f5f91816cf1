"""Pure functions of tokenize, finetune, evaluate, modeling and main."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from hf_finetune import chain, checkpoints, cli, corpus, devices, driver, hub, sources, tags, training
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.settings import BUNDLED_BASE_MODEL, PROJECT_DIR
from hf_finetune.tasks.text_classification import classical, classifier, evaluation, measures
from steps import main, tokenize


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hub.resolve_base_model(BUNDLED_BASE_MODEL))


def test_label_mapping_is_sorted_and_stable() -> None:
    assert classifier.label_mapping(["spam", "ham", "spam"]) == {"ham": 0, "spam": 1}


def test_tokenize_truncates_and_does_not_pad(tokenizer) -> None:
    df = pd.DataFrame({"text": ["hi", "word " * 200], "label": ["ham", "spam"]})
    out = classifier.tokenize_frame(df, tokenizer, max_length=16, label2id={"ham": 0, "spam": 1})
    lengths = [len(ids) for ids in out["input_ids"]]
    assert lengths[0] == 3  # [CLS] hi [SEP]: no padding here
    assert lengths[1] == 16  # truncated at max_length
    assert list(out["label_id"]) == [0, 1]
    metrics = tokenize.length_metrics("train", out, 16)
    assert metrics == {"train_mean_tokens": 9.5, "train_truncated_share": 0.5}


def test_training_arguments_are_valid_transformers_5_arguments(tmp_path) -> None:
    from transformers import TrainingArguments

    kwargs = training.training_arguments(Config(), "cpu", str(tmp_path))
    args = TrainingArguments(**kwargs)
    assert args.eval_strategy == "epoch" and args.load_best_model_at_end
    assert args.metric_for_best_model == "loss" and not args.greater_is_better and args.use_cpu
    assert args.train_sampling_strategy == "group_by_length"
    last = TrainingArguments(
        **training.training_arguments(
            Config(best_model_metric="last", early_stopping_patience=0), "cpu", str(tmp_path)
        )
    )
    assert not last.load_best_model_at_end
    f1 = TrainingArguments(
        **training.training_arguments(Config(best_model_metric="f1"), "cpu", str(tmp_path))
    )
    assert f1.metric_for_best_model == "f1" and f1.greater_is_better


def test_validation_metrics_add_average_precision_for_two_classes() -> None:
    logits = np.array([[2.0, -1.0], [0.0, 1.0], [1.0, 0.5], [-1.0, 1.0]])
    m = measures.validation_metrics(logits, np.array([0, 1, 1, 1]), ["ham", "spam"], "spam")
    assert m["accuracy"] == 0.75 and m["average_precision"] == pytest.approx(1.0)
    three = measures.validation_metrics(np.eye(3), np.array([0, 1, 2]), ["a", "b", "c"], "spam")
    assert three["f1"] == 1.0 and "average_precision" not in three


def test_metric_names_follow_the_project_convention() -> None:
    logs = {
        "eval_f1": 0.9,
        "eval_loss": 0.2,
        "loss": 0.5,
        "epoch": 1.0,
        "eval_runtime": 3.0,
        "train_runtime": 10.0,
        "note": "x",
        "grad_norm": float("nan"),
    }
    assert training.mlflow_metric_names(logs) == {
        "val_f1": 0.9,
        "val_loss": 0.2,
        "train_loss": 0.5,
        "epoch": 1.0,
        "val_runtime": 3.0,
    }


@pytest.mark.parametrize(
    ("requested", "cuda", "mps", "expected"),
    [
        ("cpu", True, True, "cpu"),
        ("auto", True, False, "cuda"),
        ("auto", False, True, "mps"),
        ("auto", False, False, "cpu"),
        ("cuda", True, False, "cuda"),
        ("mps", False, True, "mps"),
    ],
)
def test_resolve_device(requested: str, cuda: bool, mps: bool, expected: str) -> None:
    assert devices.resolve_device(requested, cuda, mps) == expected


@pytest.mark.parametrize("requested", ["cuda", "mps"])
def test_missing_device_is_an_error_not_a_fallback(requested: str) -> None:
    with pytest.raises(UserError, match=f"device {requested} requested but"):
        devices.resolve_device(requested, cuda=False, mps=False)


def test_bf16_on_a_gpu_without_it_is_an_error_that_names_fp16() -> None:
    with pytest.raises(UserError, match=r"bf16 needs an Ampere or newer GPU.*use precision fp16"):
        devices.check_precision("bf16", "cuda", bf16_on_gpu=False)
    devices.check_precision("bf16", "cuda", bf16_on_gpu=True)
    devices.check_precision("bf16", "cpu")  # torch's CPU autocast does bf16


def test_binary_metrics_score_the_positive_class() -> None:
    y_true = ["spam", "spam", "ham", "ham"]
    y_pred = ["spam", "ham", "ham", "spam"]
    m = measures.classification_metrics(y_true, y_pred, ["ham", "spam"], "spam")
    assert m == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    perfect = measures.classification_metrics(y_true, y_true, ["ham", "spam"], "spam")
    assert perfect["f1"] == 1.0


def test_multiclass_metrics_are_macro_averaged() -> None:
    y_true = ["a", "b", "c", "c"]
    y_pred = ["a", "b", "c", "a"]
    m = measures.classification_metrics(y_true, y_pred, ["a", "b", "c"], "spam")
    assert m["accuracy"] == 0.75
    assert m["recall"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_predictions_frame_names_classes() -> None:
    test = pd.DataFrame({"text": ["a", "b"], "label": ["ham", "spam"]})
    probs = np.array([[0.9, 0.1], [0.3, 0.7]], dtype=np.float32)
    out = evaluation.predictions_frame(test, probs, {0: "ham", 1: "spam"})
    assert list(out["prediction"]) == ["ham", "spam"]
    assert out["p_spam"].tolist() == pytest.approx([0.1, 0.7])


def test_step_parameters_pass_only_what_the_step_declares() -> None:
    params = main.step_parameters(
        {"profile", "device", "tokenize_run_id"},
        "smoke",
        {"device": "cpu", "data": "x.csv"},
        "tokenize_run_id",
        "abc",
    )
    assert params == {"profile": "smoke", "device": "cpu", "tokenize_run_id": "abc"}
    with pytest.raises(ValueError, match="previous step"):
        main.step_parameters(set(), "smoke", {}, "tokenize_run_id", None)


def test_base_model_resolution(tmp_path) -> None:
    assert hub.resolve_base_model("org/some-model") == "org/some-model"
    bundled = hub.resolve_base_model(BUNDLED_BASE_MODEL)
    assert (tmp_path / "x").exists() is False and bundled.endswith("model")
    rev, source = hub.base_model_revision(bundled, loaded_config=None)
    assert source == "content-sha1" and re.fullmatch(r"[0-9a-f]{40}", rev)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"holds no config\.json"):
        hub.resolve_base_model(str(tmp_path / "empty"))


def test_probe_set_is_loaded_when_its_labels_are_the_models(tmp_path) -> None:
    probe = evaluation.load_probe("data/probe_sms.csv", ["ham", "spam"])
    assert probe is not None and len(probe) == 50
    assert set(probe["label"]) == {"ham", "spam"}
    assert evaluation.load_probe("data/probe_sms.csv", ["negative", "positive"]) is None
    assert evaluation.load_probe("", ["ham", "spam"]) is None
    with pytest.raises(UserError, match="does not exist"):
        evaluation.load_probe(str(tmp_path / "nope.csv"), ["ham", "spam"])


def test_exit_quickly_keeps_the_status_atexit_handlers_threads_and_the_run(tmp_path) -> None:
    """Only the last garbage collection is skipped: MLflow still ends the run left open, atexit
    handlers and a non-daemon thread still finish, and the exit status is the one given."""
    program = textwrap.dedent(
        """
        import atexit, threading, time
        import mlflow
        from hf_finetune import cli

        atexit.register(print, "atexit ran", flush=True)
        threading.Thread(target=lambda: (time.sleep(0.5), print("thread done", flush=True))).start()
        run = mlflow.start_run()  # left open: MLflow's own atexit handler ends it
        print("run", run.info.run_id, flush=True)
        cli.exit_quickly(3)
        """
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=os.environ | {"PYTHONPATH": str(PROJECT_DIR), "MLFLOW_TRACKING_URI": uri},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "thread done" in done.stdout and "atexit ran" in done.stdout
    run_id = re.search(r"^run (\w+)$", done.stdout, re.M).group(1)  # type: ignore[union-attr]
    import mlflow

    # ended, as on any exit of the interpreter, not left RUNNING
    assert mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "FINISHED"


def test_a_tests_temporary_files_land_in_its_own_folder(tmp_path) -> None:
    """In-process and in a step's process: what a killed step leaves behind is deleted with the
    test's folder, never piled up in the machine's /tmp (conftest's ``TMPDIR``)."""
    import tempfile

    assert tempfile.gettempdir() == str(tmp_path / "t")
    with tempfile.NamedTemporaryFile() as made:
        assert made.name.startswith(str(tmp_path / "t") + os.sep)
    child = subprocess.run(
        [sys.executable, "-c", "import tempfile; print(tempfile.mkdtemp(prefix='finetune-'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert os.path.dirname(child.stdout.strip()) == str(tmp_path / "t")


def test_main_launches_a_step_directly_tags_it_at_once_and_ends_it_failed_when_it_fails(monkeypatch) -> None:
    """``driver.launch`` starts the entry point's command itself (no second ``mlflow run`` process
    per step), tags the step's run while it runs and, when the step fails, ends it FAILED."""
    import mlflow
    import mlflow.projects.backend.local as local_backend

    def second_mlflow_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the step went through a second `mlflow run` process")

    monkeypatch.setattr(local_backend, "_invoke_mlflow_run_subprocess", second_mlflow_run)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    params = {"profile": "smoke", "registered_model": "no-such-model"}  # the step fails: no such model
    failed = pytest.raises(UserError, match=r"^step version_cleanup failed \(run \w+\)")
    with mlflow.start_run() as parent, failed:
        driver.launch("version_cleanup", params, "local", parent.info.experiment_id, {"pipeline.key": "k1"})
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([parent.info.experiment_id], "tags.`pipeline.key` = 'k1'")
    assert run.info.status == "FAILED"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.tags["mlflow.project.entryPoint"] == "version_cleanup"
    assert run.data.tags["mlflow.project.backend"] == "local"
    assert run.data.params["registered_model"] == "no-such-model"


@pytest.mark.parametrize("force", ["prepare", ""])
def test_main_asks_the_store_whether_the_data_was_accepted_only_when_prepare_is_not_forced(
    monkeypatch, force: str
) -> None:
    """A forced ``prepare`` has its data read and checked again in main's preflight whatever the
    store holds, so the store is not searched for it; otherwise an accepting run spares the read."""
    import mlflow

    searched: list[str] = []
    monkeypatch.setattr(
        mlflow.MlflowClient, "search_experiments", lambda self: searched.append("experiments") or []
    )
    monkeypatch.setattr(main, "find_cached", lambda *args: searched.append("runs") or object())
    answers: list[bool] = []

    class Stop(Exception):
        pass

    def preflight(cfg: Config, data_accepted_before) -> None:
        answers.append(data_accepted_before())
        raise Stop

    monkeypatch.setattr(main, "preflight", preflight)
    args = cli.parse_step_args(cli.step_parser(main.__doc__), ["--profile", "smoke"])
    with pytest.raises(Stop):
        main.run(args, "local", force)
    assert answers == ([False] if force else [True])
    assert searched == ([] if force else ["experiments", "runs"])


def test_classical_model_picks_c_on_validation_and_learns_real_spam() -> None:
    bundled = sources.read_file(PROJECT_DIR / "data" / "sms-spam-collection" / "smoke.tsv", "label,text")
    splits = corpus.split(corpus.clean(bundled, "text", "label")[0], 0.2, 0.2, seed=0)
    model, c = classical.fit(
        splits["train"]["text"].tolist(),
        splits["train"]["label"].tolist(),
        splits["validation"]["text"].tolist(),
        splits["validation"]["label"].tolist(),
        "spam",
    )
    assert c in classical.C_GRID
    predicted = model.predict(splits["test"]["text"].tolist())
    assert (
        measures.classification_metrics(splits["test"]["label"], predicted, ["ham", "spam"], "spam")["f1"]
        > 0.85
    )


def test_balanced_class_weights_give_each_class_the_same_total() -> None:
    weights = measures.class_weights([0, 0, 0, 1], 2, "balanced")
    assert weights == pytest.approx([4 / 6, 2.0])
    assert measures.class_weights([0, 1], 2, "none") is None
    with pytest.raises(UserError, match="a class has no train rows"):
        measures.class_weights([0, 0], 2, "balanced")


def test_weighted_loss_is_cross_entropy_with_the_weights() -> None:
    import torch

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    loss = measures.weighted_loss([1.0, 3.0])({"logits": logits}, labels)
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([1.0, 3.0]))
    assert float(loss) == pytest.approx(float(expected))
    assert float(loss) != pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))


def test_ranking_metrics_and_curves(tmp_path) -> None:
    truth = ["spam", "ham", "spam", "ham"]
    m = measures.ranking_metrics(truth, np.array([0.9, 0.2, 0.4, 0.6]), "spam")
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    out = tmp_path / "curves"
    out.mkdir()
    measures.save_curves(truth, np.array([0.9, 0.2, 0.4, 0.6]), "spam", out)
    assert {p.name for p in out.iterdir()} == {
        "pr_curve.png",
        "roc_curve.png",
        "pr_curve.csv",
        "roc_curve.csv",
    }
    roc = pd.read_csv(out / "roc_curve.csv")
    assert roc["tpr"].iloc[-1] == 1.0 and roc["fpr"].iloc[-1] == 1.0


def test_kept_epoch_metrics_are_the_figures_of_that_epoch() -> None:
    history = [
        {"loss": 0.5, "epoch": 1.0},
        {"eval_loss": 0.2, "eval_f1": 0.8, "eval_average_precision": 0.9, "epoch": 1.0},
        {"eval_loss": 0.1, "eval_f1": 0.7, "epoch": 2.0},
    ]
    assert training.kept_epoch_metrics(history, 1) == {
        "best_val_f1": 0.8,
        "best_val_loss": 0.2,
        "best_val_average_precision": 0.9,
    }
    assert training.kept_epoch_metrics(history, 2) == {"best_val_f1": 0.7, "best_val_loss": 0.1}
    assert training.kept_epoch_metrics(history, 3) == {}


def test_drop_trainer_state_deletes_the_tag_and_files_and_tolerates_a_run_with_neither(tmp_path) -> None:
    import mlflow

    folder = tmp_path / "state" / "checkpoint-3"
    folder.mkdir(parents=True)
    (folder / "optimizer.pt").write_bytes(b"x" * 10)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tmp_path / "state"), chain.RESUME_DIR)
        mlflow.set_tag(tags.LAST_CHECKPOINT_TAG, "checkpoint-3")
    assert checkpoints.drop_trainer_state(run.info.run_id) is True
    after = mlflow.get_run(run.info.run_id)
    assert tags.LAST_CHECKPOINT_TAG not in after.data.tags
    assert mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path=chain.RESUME_DIR) == []
    with mlflow.start_run() as bare:  # resumed with no step left: nothing was saved
        pass
    assert checkpoints.drop_trainer_state(bare.info.run_id) is True


def test_every_library_attribute_the_project_patches_is_there_and_a_missing_one_is_one_line() -> None:
    from hf_finetune import compat

    assert compat.check() == []
    with pytest.raises(
        UserError, match=r"^mlflow\.transformers\.gone_in_a_new_release is gone: .* supports mlflow"
    ):
        compat.target("mlflow.transformers", "gone_in_a_new_release")


def test_main_decides_per_step_reuse_resume_in_process_or_run() -> None:
    from types import SimpleNamespace

    from hf_finetune import reuse

    def run(run_id: str) -> SimpleNamespace:
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id))

    decide, Lookups = reuse.decide, reuse.Lookups
    assert decide("tokenize", False, "local", Lookups(cached=run("r1"))).action == reuse.REUSE
    assert decide("tokenize", True, "local", Lookups(cached=run("r1"))).says == "running (forced)"
    resumed = decide("finetune", False, "local", Lookups(resumable=run("k1"), changed="seed changed"))
    assert resumed.action == reuse.RESUME and "k1" in resumed.says
    assert (
        decide("finetune", False, "local", Lookups(changed="seed changed")).says == "running (seed changed)"
    )
    assert decide("register", False, "local", Lookups()).action == reuse.IN_PROCESS
    assert decide("register", False, "conda", Lookups()).action == reuse.RUN


def test_a_main_run_that_mlflow_created_but_never_started_is_closed_by_the_next(monkeypatch) -> None:
    """`mlflow run .` without conda: MLflow creates the main run, fails to build the environment,
    and leaves the run RUNNING with none of the pipeline's tags. The next main closes it."""
    import mlflow

    from hf_finetune import driver
    from hf_finetune.settings import PROJECT_DIR

    made_by_mlflow = {
        "mlflow.project.entryPoint": "main",
        "mlflow.project.env": "conda",
        "mlflow.source.name": str(PROJECT_DIR),
    }
    assert driver.never_started(made_by_mlflow, 60, conda_here=False)
    assert driver.never_started(made_by_mlflow, 60, conda_here=True) is None  # may be building it
    assert driver.never_started(made_by_mlflow, 2 * 24 * 3600, conda_here=True)
    started = made_by_mlflow | {"pipeline.pid": "123"}
    assert driver.never_started(started, 2 * 24 * 3600, conda_here=False) is None  # mark_dead_runs' job
    client = mlflow.MlflowClient()
    orphan = client.create_run("0", tags=made_by_mlflow)
    live = client.create_run("0", tags=started)
    monkeypatch.setattr(driver, "conda_available", lambda: False)
    closed = driver.close_never_started(client, "0", orphan.info.start_time + 1000)
    assert closed == [orphan.info.run_id]
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"
    assert "conda" in client.get_run(orphan.info.run_id).data.tags["pipeline.closed_because"]
    assert client.get_run(live.info.run_id).info.status == "RUNNING"
