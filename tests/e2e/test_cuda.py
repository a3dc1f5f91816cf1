"""On an NVIDIA GPU: ``main`` on the ``cuda`` profile, and what it recorded there.

Skipped where torch sees no CUDA device (``conftest`` skips every ``cuda``-marked test), so CI,
which has no GPU, never runs these; run them on a GPU box with ``pytest -m cuda``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from hf_finetune import devices, training
from hf_finetune.settings import PROJECT_DIR
from tests.conftest import deleted_unless_a_test_failed, main_in_store, use_store
from tests.recorded import child_runs

pytestmark = [pytest.mark.cuda, pytest.mark.slow]
MODEL = "cuda-spam"


@pytest.fixture(scope="module")
def cuda_main(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("cuda-store")
    argv = [
        "--profile", "cuda", "--registered_model", MODEL,
        "--system_metrics", "true", "--system_metrics_interval_s", "1",
    ]  # fmt: skip
    with deleted_unless_a_test_failed(request, root):
        yield root, main_in_store(root, argv)


@pytest.fixture
def steps_of(cuda_main: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> dict:
    root, run_id = cuda_main
    use_store(root, monkeypatch)
    return child_runs(run_id)


def test_finetune_trained_on_the_gpu_and_says_how_much_memory_it_took(steps_of: dict) -> None:
    run = steps_of["finetune"]
    assert run.data.params["resolved_device"] == "cuda"
    assert run.data.params["config.precision"] == "bf16"
    metrics = run.data.metrics
    # MiniLM (22.7 M parameters) in fp32 with AdamW state is ~350 MiB before any activation
    assert 300 < metrics["peak_gpu_memory_allocated_mb"] <= metrics["peak_gpu_memory_reserved_mb"]
    assert metrics["train_samples_per_second"] > 0


def test_finetune_logged_gpu_system_metrics(steps_of: dict) -> None:
    pytest.importorskip("pynvml", reason="GPU system metrics need the [gpu] extra (nvidia-ml-py)")
    metrics = steps_of["finetune"].data.metrics
    assert metrics["system/gpu_0_memory_usage_megabytes"] > 0
    assert "system/gpu_0_utilization_percentage" in metrics


def test_the_gpu_trained_champion_is_as_good_and_predicts(steps_of: dict) -> None:
    assert steps_of["evaluate"].data.metrics["test_f1"] >= 0.95
    probe = pd.read_csv(PROJECT_DIR / "data" / "probe_sms.csv")
    predicted = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(probe["text"].tolist())
    assert (predicted["label"] == probe["label"]).mean() >= 0.9


def test_gpu_memory_metrics_are_the_allocators_peak() -> None:
    import torch

    torch.cuda.reset_peak_memory_stats()
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    peak = training.gpu_memory_metrics()
    assert peak["peak_gpu_memory_allocated_mb"] >= 64
    assert peak["peak_gpu_memory_reserved_mb"] >= peak["peak_gpu_memory_allocated_mb"]
    del block


def test_bf16_is_accepted_on_a_gpu_that_has_it() -> None:
    import torch

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU predates bf16")
    devices.check_precision("bf16", "cuda")  # the cuda profile's precision
