"""main as a build tool: reuse what did not change, rerun what did, resume what was killed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import mlflow
import pytest

from hf_finetune import cache, corpus, sources
from hf_finetune.settings import BUNDLED_DATA, BUNDLED_DATA_COLUMNS
from hf_finetune.tags import REUSED_FROM_TAG
from steps import main as main_step
from tests.conftest import PROJECT_DIR, deleted_unless_a_test_failed, isolated_env
from tests.recorded import child_runs

pytestmark = pytest.mark.slow
CACHEABLE = ["prepare", "tokenize", "finetune", "evaluate", "log_model"]
REGISTRY = ["register", "persist", "version_cleanup"]


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, dict[str, str]]:
    """Run main in-process; return its run ID and, per step, 'reused' or why it ran."""
    assert main_step.main(["--profile", "smoke", *args]) == 0
    out = capsys.readouterr().out
    decisions = {}
    for line in out.splitlines():
        if m := re.match(r"^(\w+): reused run (\w+) \(key unchanged\)$", line):
            decisions[m.group(1)] = "reused"
        elif m := re.match(r"^(\w+): running \((.*)\)$", line):
            decisions[m.group(1)] = m.group(2)
    run_id = re.search(r"^main: finished run (\w+)$", out, re.M)
    assert run_id, out
    return run_id.group(1), decisions


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("driver")
    # the bundled corpus as a csv with a header row, the commonest layout of a user's own file
    bundled = sources.read_file(PROJECT_DIR / BUNDLED_DATA, BUNDLED_DATA_COLUMNS)
    bundled[["text", "label"]].to_csv(root / "sms.csv", index=False)
    with pytest.MonkeyPatch.context() as mp, deleted_unless_a_test_failed(request, root):
        for key, value in isolated_env(root).items():
            mp.setenv(key, value)
        mp.chdir(root)
        yield root


@pytest.fixture(scope="module")
def first(store: Path) -> str:
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    assert main_step.main(["--profile", "smoke", "--data", str(store / "sms.csv")]) == 0
    client = mlflow.MlflowClient()
    return client.search_runs(["0"], "tags.`pipeline.step` = 'main'")[0].info.run_id


@pytest.fixture(autouse=True)
def tracking(store: Path) -> Path:  # these tests share the module's store
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return store


def registry() -> dict:
    client = mlflow.MlflowClient()
    return {
        m.name: (
            dict(m.aliases),
            sorted(int(v.version) for v in client.search_model_versions(f"name = '{m.name}'")),
        )
        for m in client.search_registered_models()
    }


def test_nothing_changed_reuses_every_cacheable_step(first: str, store: Path, capsys) -> None:
    before = registry()
    # prepare accepted these bytes before: main's preflight does not read and split them again
    with mock.patch.object(corpus, "prepared", side_effect=AssertionError("data read again")):
        second, decisions = run_main(capsys, "--data", str(store / "sms.csv"))
    assert decisions == {step: "reused" for step in CACHEABLE} | {
        step: "changes the registry: never skipped, idempotent" for step in REGISTRY
    }
    old, new = child_runs(first), child_runs(second)
    for step in CACHEABLE:  # a child per step still, pointing at the run it reused
        assert new[step].data.tags[REUSED_FROM_TAG] == old[step].info.run_id
        assert new[step].info.status == "FINISHED"
    assert new["evaluate"].data.metrics["test_f1"] == old["evaluate"].data.metrics["test_f1"]
    assert new["prepare"].inputs.dataset_inputs  # the record travels with the marker
    assert registry() == before  # registry steps ran, and changed nothing


def test_changing_one_setting_reruns_that_step_and_those_after(first: str, store: Path, capsys) -> None:
    _, decisions = run_main(capsys, "--data", str(store / "sms.csv"), "--max_length", "24")
    assert decisions["prepare"] == "reused"
    assert decisions["tokenize"] == "max_length changed"
    for step in ("finetune", "evaluate", "log_model"):
        assert decisions[step] == "upstream run changed"


def test_changing_a_steps_code_reruns_it_and_those_after(first: str, store: Path, capsys) -> None:
    real = cache.module_source

    def edited(name: str) -> str:
        return real(name) + ("\n# an edit\n" if name == "steps.evaluate" else "")

    with mock.patch.object(cache, "module_source", edited):
        cache.code_closure.cache_clear()
        _, decisions = run_main(capsys, "--data", str(store / "sms.csv"))
    assert [decisions[s] for s in ("prepare", "tokenize", "finetune")] == ["reused"] * 3
    assert decisions["evaluate"] == "code changed"
    # no step imports another: log_model's code did not change, only its upstream run
    assert decisions["log_model"] == "upstream run changed"


def test_force_reruns_the_named_step_and_those_after(first: str, store: Path, capsys) -> None:
    _, decisions = run_main(capsys, "--data", str(store / "sms.csv"), "--force", "evaluate")
    assert [decisions[s] for s in ("prepare", "tokenize", "finetune")] == ["reused"] * 3
    assert decisions["evaluate"] == decisions["log_model"] == "forced"


def test_changing_the_data_reruns_everything(first: str, store: Path, capsys) -> None:
    with (store / "sms.csv").open("a", encoding="utf-8") as f:
        f.write("a brand new message about the school run,ham\n")
    with mock.patch.object(corpus, "prepared", wraps=corpus.prepared) as checked:
        _, decisions = run_main(capsys, "--data", str(store / "sms.csv"))
    assert checked.call_count == 1  # main's preflight checked the new data (prepare ran in its process)
    assert decisions["prepare"] == "data changed"
    for step in CACHEABLE[1:]:
        assert decisions[step] == "upstream run changed"


def finetune_pids(tracking_uri: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"steps.finetune" in cmdline and f"MLFLOW_TRACKING_URI={tracking_uri}".encode() in environ:
            pids.append(int(proc.name))
    return pids


def test_a_killed_finetune_resumes_without_repeating_finished_epochs(tmp_path: Path, capsys) -> None:
    env = os.environ | isolated_env(tmp_path)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    # 1,000 rows of the whole corpus: epochs long enough to kill one between its checkpoints
    data = ["--data", BUNDLED_DATA, "--data_columns", BUNDLED_DATA_COLUMNS, "--max_rows", "1000"]
    args = ["--profile", "smoke", *data, "--max_steps", "-1", "--num_train_epochs", "2"]
    first_main = subprocess.Popen(
        [sys.executable, "-m", "steps.main", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and first_main.poll() is None:
        time.sleep(0.5)
        runs = (
            client.search_runs(["0"], "tags.`pipeline.step` = 'finetune'")
            if Path(tmp_path / "mlflow.db").exists()
            else []
        )
        for run in runs:
            if "pipeline.last_checkpoint" in run.data.tags:
                for pid in finetune_pids(env["MLFLOW_TRACKING_URI"]):
                    os.kill(pid, signal.SIGKILL)  # a real SIGKILL, mid-training
                killed = run.info.run_id
    first_main.wait(timeout=120)
    assert killed is not None, "finetune never logged a checkpoint to kill after"
    assert first_main.returncode != 0
    assert client.get_run(killed).info.status in ("FAILED", "KILLED")
    epoch_steps = int(client.get_metric_history(killed, "val_f1")[0].step)
    assert [m.step for m in client.get_metric_history(killed, "val_f1")] == [epoch_steps]

    with mock.patch.dict(os.environ, isolated_env(tmp_path)):
        os.chdir(tmp_path)
        _, decisions = run_main(capsys, *args[2:])
    assert decisions["prepare"] == decisions["tokenize"] == "reused"
    assert decisions["finetune"] == f"resuming killed run {killed} from its last checkpoint"
    resumed = client.search_runs(["0"], f"tags.`pipeline.resumed_from` = '{killed}'")[0]
    assert resumed.info.status == "FINISHED"
    assert resumed.data.metrics["resumed_from_step"] == epoch_steps
    assert resumed.data.metrics["steps_trained_here"] == epoch_steps  # only the epoch left
    history = [m.step for m in client.get_metric_history(resumed.info.run_id, "val_f1")]
    assert history == [epoch_steps, 2 * epoch_steps]  # one continuous curve
