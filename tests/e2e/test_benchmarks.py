"""Every benchmark script runs at a tiny size and prints its figures as JSON lines (so none rots).

The figures at tiny sizes say nothing about the targets; docs/PERFORMANCE.md has the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_DIR

pytestmark = pytest.mark.slow
KEYS = {"benchmark", "figure", "value", "target", "better", "unit"}


def test_run_all_quick_runs_every_benchmark_and_prints_json_lines() -> None:
    done = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "benchmarks" / "run_all.py"), "--quick"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(t) for t in done.stdout.splitlines() if t.startswith('{"benchmark"')]
    figures = {(line["benchmark"], line["figure"].split("[")[0]) for line in lines}
    assert ("cached_main", "second_over_first_wall") in figures
    assert ("log_modes", "checkpoint_over_cp") in figures and ("log_modes", "persist_over_copy") in figures
    for figure in ("checkpoint_over_cp_store_import_counted", "persist_over_copy_store_import_counted"):
        assert ("log_modes", figure) in figures  # the same, the store module's import counted
    # a reference as the step logs it (after the candidate) and as a process's first log
    assert ("log_modes", "reference_over_full") in figures
    assert ("log_modes", "reference_first_log_over_full") in figures
    # the comparisons the full run leaves out (--compare-mlflow, --ab) still run here
    assert ("log_modes", "mlflow_checkpoint_over_cp") in figures
    assert ("finetune_speed", "tracked_over_untracked_wall_pct") in figures
    for figure in ("samples_per_s_over_recipe", "test_f1_gap_points", "tracking_overhead_pct"):
        assert ("finetune_speed", figure) in figures
    for figure in ("finetune_test_f1_median", "finetune_minus_classical_points_median", "store_mb_per_main"):
        assert ("quality", figure) in figures
    assert ("predict_speed", "pyfunc_over_direct") in figures and (
        "predict_speed",
        "pyfunc_over_sorted",
    ) in figures
    for figure in ("local_over_direct", "peak_rss_mb", "rss_large_over_flat_limit"):
        assert ("batch_score", figure) in figures
    for figure in ("outside_finetune_fraction_median", "best_trial_test_f1", "default_recipe_test_f1"):
        assert ("sweep_overhead", figure) in figures
    for line in lines:
        assert set(line) == KEYS and line["better"] in ("lower", "higher")
        assert isinstance(line["value"], (int, float))
    by_name = {line["figure"]: line["value"] for line in lines}
    assert by_name["reference_artifact_mb[tiny]"] < 1.0  # a reference stores no weights at any size
    assert by_name["second_over_first_wall[smoke]"] < 1.0
