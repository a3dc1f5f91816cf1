"""A full disk fails a step in one line (exit 3) and leaves no half-written model behind.

The end-to-end version, with a real full filesystem under a real pipeline, is
``tests/e2e/test_faults.py::test_full_disk_while_logging_the_model``; these run everywhere, with the
write error raised by a mock where the artifact store writes.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import mlflow
import pytest

from hf_finetune import cli, save_modes
from tests.recorded import Echo


def enospc(path: str = "", dst: str = "") -> OSError:
    error = OSError(errno.ENOSPC, "No space left on device", path or None)
    error.filename2 = dst or None
    return error


@pytest.mark.parametrize(
    ("error", "target"),
    [
        (enospc("/store/model.safetensors"), "/store/model.safetensors"),
        (enospc("/tmp/src.bin", "/store/dst.bin"), "/store/dst.bin"),  # a copy: source, destination
        (enospc(), ""),
        (shutil.Error([("/a", "/store/b", str(enospc("/store/b")))]), "/store/b"),
        (shutil.Error([("/a", "/store/b", "[Errno 13] Permission denied")]), None),
        (OSError(errno.EACCES, "Permission denied", "/store/b"), None),
        (ValueError("no space left, says the text, but it is not the error"), None),
    ],
)
def test_no_space_target(error: Exception, target: str | None) -> None:
    assert cli.no_space_target(error) == target


def test_a_full_disk_under_a_wrapping_error_is_still_found() -> None:
    try:
        try:
            raise enospc("/store/x")
        except OSError as inner:
            raise RuntimeError("upload failed") from inner
    except RuntimeError as outer:
        assert cli.no_space_target(outer) == "/store/x"


def test_the_cli_says_no_space_in_one_line_and_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> str:
        raise enospc("/tmp/staged", "/store/model.safetensors")

    assert cli.cli("log_model", body) == cli.EXIT_NO_SPACE == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("log_model: error: no space left on the device writing /store/model.safetensors;")
    assert "free disk space" in err


def test_other_os_errors_are_not_called_a_full_disk() -> None:
    def body() -> str:
        raise PermissionError(errno.EACCES, "Permission denied", "/store")

    with pytest.raises(PermissionError):
        cli.cli("log_model", body)


def test_a_log_that_fills_the_disk_leaves_a_failed_model_without_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store's copy fails half-way: the model is FAILED (never registrable) and the part that
    was copied is deleted, so the space is free again."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    copy = LocalArtifactRepository.log_artifacts

    def half_then_full(self, local_dir, artifact_path=None):  # type: ignore[no-untyped-def]
        copy(self, local_dir, artifact_path)  # the files land, then the disk is "full"
        raise enospc(str(Path(local_dir) / "python_model.pkl"), str(Path(self.artifact_dir) / "x"))

    monkeypatch.setattr(LocalArtifactRepository, "log_artifacts", half_then_full)
    with mlflow.start_run(), pytest.raises(OSError) as raised:
        try:
            mlflow.pyfunc.log_model(name="model", python_model=Echo())
        except BaseException:
            save_modes.discard_failed_model()
            raise
    assert cli.no_space_target(raised.value)
    model = mlflow.last_logged_model()
    assert str(model.status).split(".")[-1].upper() == "FAILED"
    location = Path(model.artifact_location.removeprefix("file://"))
    assert not location.exists() or not any(location.iterdir())


def test_a_model_that_reached_ready_is_never_discarded() -> None:
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo())
    save_modes.discard_failed_model()
    assert mlflow.pyfunc.load_model(info.model_uri).predict(["a"]) == ["a"]
