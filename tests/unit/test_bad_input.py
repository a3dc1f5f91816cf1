"""Every bad input: exit status 2, one line naming what is wrong and the fix, nothing registered."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from hf_finetune import corpus, profiles
from hf_finetune.tasks import registry
from steps import evaluate, finetune, log_model, persist, prepare, register, tokenize, version_cleanup
from steps import main as main_step
from tests.conftest import PROJECT_DIR
from tests.recorded import registered_models


def fails_with_one_line(
    capsys: pytest.CaptureFixture[str], entry: Callable[[list[str]], int], argv: list[str], expected: str
) -> str:
    assert entry(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]
    assert registered_models() == []
    return lines[0]


def write_csv(tmp_path: Path, rows: list[tuple[str, str]], name: str = "d.csv") -> str:
    path = tmp_path / name
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return str(path)


def finished_run(step: str) -> str:
    with mlflow.start_run(tags={"pipeline.step": step}) as run:
        return run.info.run_id


def test_missing_data_file(capsys) -> None:
    line = fails_with_one_line(
        capsys,
        prepare.main,
        ["--profile", "smoke", "--data", "nope.csv"],
        "data file 'nope.csv' does not exist",
    )
    assert "--data" in line


def test_missing_data_file_stops_main_before_any_run(capsys) -> None:
    fails_with_one_line(
        capsys, main_step.main, ["--profile", "smoke", "--data", "nope.csv"], "does not exist"
    )
    assert mlflow.MlflowClient().search_runs(["0"]) == []


def test_empty_file(capsys, tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    fails_with_one_line(
        capsys,
        prepare.main,
        ["--profile", "smoke", "--data", str(tmp_path / "empty.csv")],
        "cannot read csv file",
    )


def test_unreadable_file(capsys, tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"\x00garbage")
    fails_with_one_line(
        capsys,
        prepare.main,
        ["--profile", "smoke", "--data", str(tmp_path / "d.parquet")],
        "cannot read parquet file",
    )


def test_text_column_not_found_lists_columns(capsys, tmp_path: Path) -> None:
    data = write_csv(tmp_path, [("hi", "ham"), ("win", "spam")])
    fails_with_one_line(
        capsys,
        prepare.main,
        ["--profile", "smoke", "--data", data, "--text_column", "sms"],
        "column 'sms' not found; the data has columns text, label",
    )


def test_label_column_not_found(capsys, tmp_path: Path) -> None:
    data = write_csv(tmp_path, [("hi", "ham"), ("win", "spam")])
    fails_with_one_line(
        capsys,
        prepare.main,
        ["--profile", "smoke", "--data", data, "--label_column", "class"],
        "column 'class' not found",
    )


def test_one_class_only(capsys, tmp_path: Path) -> None:
    data = write_csv(tmp_path, [(f"hello {i}", "ham") for i in range(50)])
    fails_with_one_line(
        capsys, prepare.main, ["--profile", "smoke", "--data", data], "only one class ('ham')"
    )


def test_all_texts_empty(capsys, tmp_path: Path) -> None:
    data = write_csv(tmp_path, [("   ", "ham"), ("", "spam"), ("\t", "spam")])
    fails_with_one_line(capsys, prepare.main, ["--profile", "smoke", "--data", data], "no usable rows")


def test_unknown_profile(capsys) -> None:
    fails_with_one_line(capsys, prepare.main, ["--profile", "gpu-huge"], "unknown profile 'gpu-huge'")


def test_unknown_device(capsys) -> None:
    fails_with_one_line(
        capsys,
        main_step.main,
        ["--profile", "smoke", "--device", "tpu"],
        "unknown device 'tpu': use one of cpu, cuda, mps, auto",
    )


def test_unknown_save_mode(capsys) -> None:
    fails_with_one_line(
        capsys, main_step.main, ["--profile", "smoke", "--save_mode", "zip"], "unknown save_mode 'zip'"
    )


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_device_not_available(capsys) -> None:
    fails_with_one_line(
        capsys, main_step.main, ["--profile", "cuda"], "device cuda requested but torch sees no CUDA GPU"
    )


@pytest.mark.parametrize(
    ("entry", "flag"),
    [
        (tokenize.main, "prepare_run_id"),
        (finetune.main, "tokenize_run_id"),
        (evaluate.main, "finetune_run_id"),
    ],
)
def test_upstream_run_that_does_not_exist(capsys, entry, flag: str) -> None:
    fails_with_one_line(
        capsys, entry, ["--profile", "smoke", f"--{flag}", "0123456789abcdef"], "run '0123456789abcdef'"
    )


@pytest.mark.parametrize(
    ("entry", "flag", "wrong_step"),
    [
        (tokenize.main, "prepare_run_id", "finetune"),
        (finetune.main, "tokenize_run_id", "prepare"),
        (evaluate.main, "finetune_run_id", "tokenize"),
    ],
)
def test_upstream_run_of_another_step(capsys, entry, flag: str, wrong_step: str) -> None:
    run_id = finished_run(wrong_step)
    fails_with_one_line(
        capsys, entry, ["--profile", "smoke", f"--{flag}", run_id], f"is a {wrong_step} run, not a"
    )


def test_process_level_exit_status_and_single_line(tmp_path: Path) -> None:
    """The same contract seen from outside: a real process, its exit status and its stderr."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "steps.prepare",
            "--profile",
            "smoke",
            "--data",
            str(tmp_path / "missing.csv"),
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"prepare: error: data file '{tmp_path / 'missing.csv'}' does not exist: pass --data with a "
        "csv, tsv, json, jsonl or parquet file, or a hub dataset id"
    ]


# ----------------------------------------------------------------------------- lifecycle steps
def registry_state() -> dict:
    client = mlflow.MlflowClient()
    return {
        rm.name: (
            dict(rm.aliases),
            dict(rm.tags),
            sorted(
                (v.version, tuple(sorted(v.tags.items())))
                for v in client.search_model_versions(f"name = '{rm.name}'")
            ),
        )
        for rm in client.search_registered_models()
    }


def fake_chain(model_status: str = "READY", test_f1: float = 0.97) -> str:
    """A finished evaluate run and a log_model run above a logged model in ``model_status``."""
    from mlflow.entities import LoggedModelStatus

    with mlflow.start_run(tags={"pipeline.step": "evaluate"}) as evaluate_run:
        mlflow.log_metric("test_f1", test_f1)
    model = mlflow.initialize_logged_model(name="model")
    mlflow.finalize_logged_model(model.model_id, getattr(LoggedModelStatus, model_status))
    tags = {
        "pipeline.step": "log_model",
        "pipeline.upstream_run_id": evaluate_run.info.run_id,
        "pipeline.model_uri": f"models:/{model.model_id}",
        "pipeline.model_id": model.model_id,
        "save_mode": "full",
    }
    with mlflow.start_run(tags=tags) as run:
        return run.info.run_id


def test_reference_mode_for_a_full_fine_tune(capsys) -> None:
    evaluate_id = finished_run("evaluate")
    fails_with_one_line(
        capsys,
        log_model.main,
        ["--profile", "smoke", "--evaluate_run_id", evaluate_id, "--save_mode", "reference"],
        "use save_mode full or checkpoint",
    )


def test_unknown_save_mode_in_log_model(capsys) -> None:
    fails_with_one_line(
        capsys,
        log_model.main,
        ["--profile", "smoke", "--evaluate_run_id", "x", "--save_mode", "zip"],
        "unknown save_mode 'zip'",
    )


def test_failed_logged_model_is_not_registered(capsys) -> None:
    run_id = fake_chain("FAILED")
    fails_with_one_line(
        capsys, register.main, ["--profile", "smoke", "--log_model_run_id", run_id], "is FAILED, not READY"
    )


def test_logged_model_that_does_not_exist(capsys) -> None:
    run_id = fake_chain()
    model_id = mlflow.get_run(run_id).data.tags["pipeline.model_id"]
    mlflow.MlflowClient().delete_logged_model(model_id)
    fails_with_one_line(
        capsys,
        register.main,
        ["--profile", "smoke", "--log_model_run_id", run_id],
        f"logged model {model_id} does not exist",
    )


def test_registering_to_a_name_that_holds_another_task(capsys) -> None:
    client = mlflow.MlflowClient()
    client.create_registered_model("vision", tags={"task": "image-classification"})
    before = registry_state()
    assert (
        register.main(
            ["--profile", "smoke", "--log_model_run_id", fake_chain(), "--registered_model", "vision"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "registered model 'vision' holds image-classification models" in err
    assert registry_state() == before


def test_persisting_a_version_that_no_longer_exists(capsys) -> None:
    with mlflow.start_run(tags={"pipeline.step": "log_model"}) as lm:
        pass
    tags = {
        "pipeline.step": "register",
        "registered_model": "gone",
        "model_version": "4",
        "pipeline.upstream_run_id": lm.info.run_id,
    }
    with mlflow.start_run(tags=tags) as run:
        pass
    fails_with_one_line(
        capsys, persist.main, ["--profile", "smoke", "--register_run_id", run.info.run_id], "gone version 4"
    )


def test_keep_last_below_one(capsys) -> None:
    fails_with_one_line(
        capsys,
        version_cleanup.main,
        ["--profile", "smoke", "--keep_last", "0"],
        "keep_last=0 must be at least 1",
    )


def test_cleanup_of_a_model_that_does_not_exist(capsys) -> None:
    fails_with_one_line(
        capsys,
        version_cleanup.main,
        ["--profile", "smoke", "--registered_model", "nope"],
        "registered model 'nope' does not exist",
    )


# ----------------------------------------------------------------------------- driver
def test_force_naming_an_unknown_step(capsys) -> None:
    fails_with_one_line(
        capsys,
        main_step.main,
        ["--profile", "smoke", "--force", "training"],
        "force names unknown step(s) training: use all or some of prepare",
    )
    assert mlflow.MlflowClient().search_runs(["0"]) == []


@pytest.mark.parametrize("target", ["models:/sms-spam-classifier@champion", "0123456789abcdef"])
def test_lineage_target_that_does_not_exist(capsys, target: str) -> None:
    from steps import lineage

    assert lineage.main([target]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]  # MLflow may log INFO lines
    assert len(lines) == 1 and lines[0].startswith("lineage: error: ") and "Traceback" not in err


def test_lora_rank_below_one_stops_main_before_any_run(capsys) -> None:
    fails_with_one_line(
        capsys,
        main_step.main,
        ["--profile", "lora-reference", "--lora_r", "0"],
        "lora_r=0 and lora_alpha=16 must be at least 1",
    )
    assert mlflow.MlflowClient().search_runs(["0"]) == []


def test_data_that_prepare_would_refuse_stops_main_before_any_run(capsys, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    rows = "".join(f"message {i},{'spam' if i % 2 else 'ham'}\n" for i in range(40))
    path.write_bytes(b"text,label\n" + rows.encode() + "caf\xe9?,ham\n".encode("latin-1"))
    fails_with_one_line(capsys, main_step.main, ["--profile", "smoke", "--data", str(path)], "is not UTF-8")
    assert mlflow.MlflowClient().search_runs(["0"]) == []  # refused before any run


def write_uci(tmp_path: Path, extra: list[str] = (), header: bool = False) -> str:
    """A file laid out as the bundled corpus (label TAB text, no header): 40 good lines, then ``extra``."""
    lines = [f"{'spam' if i % 2 else 'ham'}\tmessage number {i}" for i in range(40)]
    path = tmp_path / "uci.tsv"
    path.write_text("\n".join((["label\ttext"] if header else []) + lines + list(extra)) + "\n")
    return str(path)


def uci_args(path: str) -> list[str]:
    return ["--profile", "smoke", "--data", path, "--data_columns", "label,text"]


def test_uci_file_with_a_third_field_names_the_line(capsys, tmp_path: Path) -> None:
    path = write_uci(tmp_path, ["spam\tcall now\tfor a prize"])
    line = fails_with_one_line(capsys, main_step.main, uci_args(path), "line 41 of uci.tsv has 3 tsv fields")
    assert "'label,text'" in line
    assert mlflow.MlflowClient().search_runs(["0"]) == []


def test_uci_file_with_an_empty_label_drops_and_counts_that_line(tmp_path: Path) -> None:
    cfg = profiles.load_config(
        "smoke", {"data": write_uci(tmp_path, ["\tno label here"]), "data_columns": "label,text"}
    )
    cleaned, stats, _ = corpus.prepared(cfg, registry.task_of(cfg))
    assert stats.rows_read == 41 and stats.dropped_missing_label == 1 and len(cleaned) == 40


def test_uci_file_with_a_label_that_is_neither_class(capsys, tmp_path: Path) -> None:
    path = write_uci(tmp_path, ["spma\ta typo in the label"])
    fails_with_one_line(
        capsys, main_step.main, uci_args(path), "label 'spma' (on 'a typo in the label') is not one of"
    )


def test_a_header_row_read_as_data_is_named_as_such(capsys, tmp_path: Path) -> None:
    line = fails_with_one_line(
        capsys, main_step.main, uci_args(write_uci(tmp_path, header=True)), "a header row, read as data"
    )
    assert "--data_columns ''" in line


def test_a_header_row_read_as_data_under_other_names_is_caught_by_its_lone_label(
    capsys, tmp_path: Path
) -> None:
    """Column names that differ from the header's: the header becomes a row of class 'label'."""
    path = write_uci(tmp_path, header=True)
    args = [
        "--profile",
        "smoke",
        "--data",
        path,
        "--data_columns",
        "kind,sms",
        "--label_column",
        "kind",
        "--text_column",
        "sms",
    ]
    fails_with_one_line(capsys, main_step.main, args, "looks like a header read as data")


def test_data_columns_on_a_parquet_file(capsys, tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": ["ham", "spam"]}).to_parquet(path)
    fails_with_one_line(capsys, prepare.main, uci_args(str(path)), "a parquet file names its columns itself")
