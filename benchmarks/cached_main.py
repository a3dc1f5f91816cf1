"""Benchmark: a second `main` with nothing changed, as a share of the first one's wall time.

Both runs are fresh child processes on a fresh tracking store, one after the other on the same
machine, so the ratio is measured side by side. Target: <= 0.05 (issue 4).

    python benchmarks/cached_main.py                 # profile local (a real fine-tune)
    python benchmarks/cached_main.py --profile smoke # seconds; what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
TARGET = 0.05


def timed_main(profile: str, env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "steps.main", "--profile", profile],
        cwd=cwd,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="local")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        root = Path(tmp)
        env = os.environ | {
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(root / "hf"),
            "PYTHONPATH": str(PROJECT_DIR),
        }
        first = timed_main(args.profile, env, root)
        second = timed_main(args.profile, env, root)
    ratio = second / first
    print(f"{'run':<24}{'wall s':>10}")
    print(f"{'first main':<24}{first:>10.1f}")
    print(f"{'second main (cached)':<24}{second:>10.1f}")
    print(f"{'ratio':<24}{ratio:>10.3f}   target <= {TARGET}")
    print(
        json.dumps(
            {
                "benchmark": "cached_main",
                "figure": f"second_over_first_wall[{args.profile}]",
                "value": round(ratio, 4),
                "target": TARGET,
                "better": "lower",
                "unit": "ratio",
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
