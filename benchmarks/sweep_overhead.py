"""Benchmark: what a sweep's trial spends outside its finetune step, and two workers on one study.

One sweep (``steps.sweep``) of ``--trials`` trials on the profile (default ``local``), a fresh child
process on a fresh tracking store and Optuna storage, the space ``--space``. For each trial: the
wall time of its ``main --until finetune`` run and of the finetune run inside it; the fraction
outside finetune is ``1 - finetune / trial`` (process starts, cache look-ups, MLflow's bookkeeping:
what the sweep adds to training). With ``--compare-default`` (text classification), the study's
best trial beside the profile's own recipe and the classical baseline, on the same rows: the
validation F1 each reached, and the test F1 of the best trial's main and of a default ``main`` run
in the same store afterwards (the same prepare, so the same split). Then, with ``--workers 2``,
two sweeps started at once on one new study (``--workers-profile``, ``--workers-space``): every
trial number run once, none lost, and one registration. With ``--smoke-trials N``, the same
fraction for a one-worker ``smoke`` sweep of N trials (``sweeps/smoke.yaml``), where trials are
short and what the sweep adds weighs most.

    python benchmarks/sweep_overhead.py                                    # local, 3 trials, 2 workers
    python benchmarks/sweep_overhead.py --profile smoke --space sweeps/smoke.yaml --trials 3
    python benchmarks/sweep_overhead.py --trials 8 --compare-default --smoke-trials 3 \
        --workers-profile smoke --workers-space sweeps/smoke.yaml          # the committed figures

Figures: ``outside_finetune_fraction_median[<profile>]`` (target <= 0.10 on ``local``) with its
range, ``trial_s_median``; ``two_workers_trials_lost``, ``two_workers_trials_repeated`` and
``two_workers_registrations_besides_one`` (how far from exactly one registration): targets 0;
with ``--compare-default``, ``best_trial_val_f1``, ``best_trial_test_f1``, ``default_recipe_val_f1``,
``default_recipe_test_f1`` and ``classical_test_f1`` (figures, not targets).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent


def store_env(root: Path) -> dict[str, str]:
    return os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
        "PYTHONPATH": str(PROJECT_DIR),
        "TOKENIZERS_PARALLELISM": "false",
    }


def sweep_in_store(root: Path, profile: str, space: str, trials: int, workers: int) -> list[str]:
    env = store_env(root)
    command = [sys.executable, "-m", "steps.sweep", "--profile", profile, "--space", str(PROJECT_DIR / space),
               "--n_trials", str(trials), "--storage", f"sqlite:///{root / 'sweep.db'}",
               "--registered_model", "bench-sweep"]  # fmt: skip
    import mlflow

    mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).search_experiments()  # the store's schema, before a race
    started = [subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(workers)]  # fmt: skip
    outputs = [p.communicate()[0] for p in started]
    for process, output in zip(started, outputs, strict=True):
        if process.returncode != 0:
            raise SystemExit(f"sweep failed:\n{output[-3000:]}")
    return outputs


def trial_times(root: Path) -> list[tuple[float, float]]:
    """(trial main's wall s, its finetune's wall s) for every trial that trained."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    out = []
    for run in client.search_runs(experiments, "tags.`pipeline.sweep_trial` != 'warm-up'", max_results=500):
        if "pipeline.sweep_run_id" in run.data.tags:  # the best trial's whole chain: not a trial
            continue
        finetune = client.get_run(run.data.tags["pipeline.finetune_run_id"])
        if finetune.data.tags.get("mlflow.parentRunId") != run.info.run_id:  # reused, not trained here
            continue
        out.append(((run.info.end_time - run.info.start_time) / 1000,
                    (finetune.info.end_time - finetune.info.start_time) / 1000))  # fmt: skip
    return out


def study_facts(root: Path) -> tuple[list[int], int]:
    """The trial numbers in the study, and how many versions were registered."""
    import mlflow
    import optuna

    storage = f"sqlite:///{root / 'sweep.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return sorted(t.number for t in study.trials), len(client.search_model_versions("name = 'bench-sweep'"))


def against_the_default(root: Path, profile: str) -> dict[str, float]:
    """The best trial's validation and test F1, and a default ``main``'s, in the same store."""
    import mlflow
    import optuna

    storage = f"sqlite:///{root / 'sweep.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")

    def figures(main_run_id: str) -> tuple[float, float, float]:
        tags = client.get_run(main_run_id).data.tags
        finetune = client.get_run(tags["pipeline.finetune_run_id"]).data.metrics
        evaluate = client.get_run(tags["pipeline.evaluate_run_id"]).data.metrics
        return finetune["best_val_f1"], evaluate["test_f1"], evaluate["classical_f1"]

    best = figures(study.user_attrs["registered_main_run_id"])
    command = [sys.executable, "-m", "steps.main", "--profile", profile, "--registered_model", "bench-sweep"]
    done = subprocess.run(command, cwd=root, env=store_env(root), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the default main failed:\n{done.stderr[-3000:]}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (default,) = client.search_runs(  # the newest main: the default one, after every trial's
        experiments, "tags.`pipeline.step` = 'main'", order_by=["attributes.start_time DESC"], max_results=1
    )
    recipe = figures(default.info.run_id)
    print(f"best trial {study.best_trial.number} {study.best_trial.params}")
    print(f"{'':>16}{'val F1':>9}{'test F1':>9}")
    print(f"{'best trial':>16}{best[0]:>9.4f}{best[1]:>9.4f}")
    print(f"{'default recipe':>16}{recipe[0]:>9.4f}{recipe[1]:>9.4f}")
    print(f"{'classical':>16}{'':>9}{best[2]:>9.4f}")
    return {"best_trial_val_f1": best[0], "best_trial_test_f1": best[1], "default_recipe_val_f1": recipe[0],
            "default_recipe_test_f1": recipe[1], "classical_test_f1": best[2]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="local")
    parser.add_argument("--space", default="sweeps/default.yaml")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="0: no two-worker run")
    parser.add_argument("--workers-profile", default="", help="the two workers' profile (default: --profile)")
    parser.add_argument("--workers-space", default="", help="the two workers' space (default: --space)")
    parser.add_argument(
        "--compare-default", action="store_true", help="the best trial beside the profile's recipe"
    )
    parser.add_argument(
        "--smoke-trials", type=int, default=0, help="then a one-worker smoke sweep of so many trials"
    )
    args = parser.parse_args(argv)
    workers_profile = args.workers_profile or args.profile
    lines: list[dict[str, Any]] = []

    def figure(
        name: str, value: float, target: float | None, better: str, unit: str, profile: str = ""
    ) -> None:
        named = f"{name}[{profile or args.profile}]"
        lines.append({"benchmark": "sweep_overhead", "figure": named, "value": round(value, 4),
                      "target": target, "better": better, "unit": unit})  # fmt: skip

    def outside_finetune(profile: str, space: str, trials: int, compare: bool) -> None:
        with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
            sweep_in_store(Path(tmp), profile, space, trials, 1)
            times = trial_times(Path(tmp))
            compared = against_the_default(Path(tmp), profile) if compare else {}
        outside = [1 - finetune / trial for trial, finetune in times]
        print(f"{profile}: {'trial s':>9}{'finetune s':>12}{'outside':>9}")
        for (trial, finetune), share in zip(times, outside, strict=True):
            print(f"{'':>{len(profile) + 2}}{trial:>9.1f}{finetune:>12.1f}{share:>9.3f}")
        target = 0.10 if profile == "local" else None
        for name, value, goal in (("median", statistics.median(outside), target), ("min", min(outside), None),
                                  ("max", max(outside), None)):  # fmt: skip
            figure(f"outside_finetune_fraction_{name}", value, goal, "lower", "fraction", profile)
        figure("trial_s_median", statistics.median(t for t, _ in times), None, "lower", "s", profile)
        for name, value in compared.items():
            figure(name, value, None, "higher", "f1", profile)

    outside_finetune(args.profile, args.space, args.trials, args.compare_default)
    if args.smoke_trials:
        outside_finetune("smoke", "sweeps/smoke.yaml", args.smoke_trials, False)
    if args.workers >= 2:
        space = args.workers_space or args.space
        with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
            sweep_in_store(Path(tmp), workers_profile, space, args.trials, args.workers)
            numbers, registered = study_facts(Path(tmp))
        print(f"{args.workers} workers: trial numbers {numbers}, {registered} registration(s)")
        figure(
            "two_workers_trials_lost",
            float(len(set(range(args.trials)) - set(numbers))),
            0.0,
            "lower",
            "trials",
            workers_profile,
        )
        repeated = float(len(numbers) - len(set(numbers)))
        figure("two_workers_trials_repeated", repeated, 0.0, "lower", "trials", workers_profile)
        besides = float(abs(registered - 1))
        figure("two_workers_registrations_besides_one", besides, 0.0, "lower", "versions", workers_profile)
    print()
    for line in lines:
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
