"""Benchmark: the model a user gets from `main`, against the classical model, over three seeds.

Each seed is one `main` run of the profile (default ``local``: the real corpus, the bundled
base model, on this machine's CPU) with ``--seed``, a fresh child process on a fresh tracking
store: the seed sets the train/validation/test split, the new head's initialisation and the
data order. On each split, ``evaluate`` scores the fine-tuned model and the classical model
(TF-IDF + linear SVM, ``hf_finetune/tasks/text_classification/classical.py``) trained on the
same train split, on the same test rows. One test split of 516 rows (64 spam) moves F1 by about
a point per two messages, hence three seeds: the medians are the figures; the ranges are printed beside them.

    python benchmarks/quality.py                           # local, seeds 42 1 2 (three whole mains)
    python benchmarks/quality.py --profile smoke --seeds 42  # seconds; what the test suite runs

Figures: ``finetune_test_f1_median`` (target >= 0.96), ``finetune_minus_classical_points_median``
(test F1 of the fine-tune minus the classical model's, on the same rows, in points; target >= 0),
``main_wall_s_median`` (a whole `main`, set-up excluded: target <= 900 s), and without target the
ranges, the classical model's F1, and ``store_mb_per_main``: what one `main` leaves in the
tracking store and artifact root (the resumable Trainer state is dropped once a run finishes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
TARGETS = {  # figure: (target, better)
    "finetune_test_f1_median": (0.96, "higher"),
    "finetune_minus_classical_points_median": (0.0, "higher"),
    "main_wall_s_median": (900.0, "lower"),
}


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def one_main(profile: str, seed: int, *arguments: str) -> dict[str, Any]:
    """`main` once in a fresh store, with ``arguments`` after the profile and seed: its evaluate
    run's metrics, its wall time and what it left in the store."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        env = os.environ | {
            "MLFLOW_TRACKING_URI": uri,
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(root / "hf"),
            "PYTHONPATH": str(PROJECT_DIR),
            "TOKENIZERS_PARALLELISM": "false",
        }
        command = [sys.executable, "-m", "steps.main", "--profile", profile, "--seed", str(seed), *arguments]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"main --seed {seed} failed:\n{done.stderr[-3000:]}")
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        evaluate = client.search_runs(experiments, "tags.`pipeline.step` = 'evaluate'")[0]
        store = folder_mb(root / "mlruns") + (root / "mlflow.db").stat().st_size / 2**20
    return {"seed": seed, "wall_s": wall, "store_mb": store, **evaluate.data.metrics}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="local")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    args = parser.parse_args(argv)
    runs = [one_main(args.profile, seed) for seed in args.seeds]
    print(
        f"{'seed':>6}{'test rows':>11}{'fine-tune F1':>14}{'classical F1':>14}{'main s':>9}{'store MB':>10}"
    )
    for r in runs:
        print(
            f"{r['seed']:>6}{r['test_rows']:>11.0f}{r['test_f1']:>14.4f}{r['classical_f1']:>14.4f}"
            f"{r['wall_s']:>9.0f}{r['store_mb']:>10.0f}"
        )
    finetune = [r["test_f1"] for r in runs]
    classical = [r["classical_f1"] for r in runs]
    gaps = [100 * (r["test_f1"] - r["classical_f1"]) for r in runs]
    print(f"fine-tune F1 median [range] {spread(finetune)}; classical {spread(classical)}")
    figures = {
        "finetune_test_f1_median": statistics.median(finetune),
        "finetune_test_f1_min": min(finetune),
        "finetune_test_f1_max": max(finetune),
        "classical_test_f1_median": statistics.median(classical),
        "classical_test_f1_min": min(classical),
        "classical_test_f1_max": max(classical),
        "finetune_minus_classical_points_median": statistics.median(gaps),
        "finetune_minus_classical_points_min": min(gaps),
        "main_wall_s_median": statistics.median(r["wall_s"] for r in runs),
        "store_mb_per_main": statistics.median(r["store_mb"] for r in runs),
    }
    print()
    for figure, value in figures.items():
        lower_is_better = figure.startswith(("main_wall", "store"))
        target, better = TARGETS.get(figure, (None, "lower" if lower_is_better else "higher"))
        unit = "points" if "points" in figure else "s" if figure.endswith("_s_median") else (
            "MB" if figure.startswith("store") else "f1")  # fmt: skip
        line = {"benchmark": "quality", "figure": f"{figure}[{args.profile}]", "value": round(value, 4),
                "target": target, "better": better, "unit": unit}  # fmt: skip
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
