"""Run every benchmark, one after the other, and print each figure against its target.

    python benchmarks/run_all.py              # the full sizes (see each script's docstring)
    python benchmarks/run_all.py --quick      # tiny sizes: checks the scripts run, not the targets

Each script prints a table and then one JSON line per figure; this collects the JSON lines, prints
them again together with met / missed, and exits 1 if a target was missed. Figures the issue asks
for that no script measures yet are listed as not measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCHMARKS = {  # script: (arguments for the full run, arguments for --quick)
    "log_modes.py": ([], ["--sizes", "tiny", "--repeat", "1", "--compare-mlflow"]),
    "cached_main.py": ([], ["--profile", "smoke"]),
    "finetune_speed.py": ([], ["--train-rows", "64", "--epochs", "1", "--test-rows", "200", "--ab"]),
    "predict_speed.py": ([], ["--rows", "128", "--repeat", "1"]),
    "quality.py": ([], ["--profile", "smoke", "--seeds", "42"]),
}
NOT_MEASURED: tuple[str, ...] = ()  # figures the issue asks for that no script measures yet


def met(line: dict[str, Any]) -> bool | None:
    if line.get("target") is None:
        return None
    if line["better"] == "lower":
        return bool(line["value"] <= line["target"])
    return bool(line["value"] >= line["target"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the scripts run")
    args = parser.parse_args(argv)
    lines: list[dict[str, Any]] = []
    start = time.perf_counter()
    # The full run goes one script at a time, so no measurement shares the CPU with another.
    # --quick checks only that the scripts run: all at once (each in its own temp dirs and store).
    commands = {
        script: [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        for script, (full, quick) in BENCHMARKS.items()
    }
    started = {
        script: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for script, command in commands.items()
        if args.quick
    }
    for script, command in commands.items():
        print(f"=== {script}", flush=True)
        if args.quick:
            out, err = started[script].communicate()
            done = subprocess.CompletedProcess(command, started[script].returncode, out, err)
        else:
            done = subprocess.run(command, capture_output=True, text=True)
        print(done.stdout, end="")
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            for process in started.values():
                process.kill()
            return done.returncode
        lines += [json.loads(t) for t in done.stdout.splitlines() if t.startswith('{"benchmark"')]
    print(f"\n=== all figures ({time.perf_counter() - start:.0f} s)")
    missed = 0
    for line in lines:
        verdict = met(line)
        missed += verdict is False
        label = {True: "met", False: "MISSED", None: "(no target)"}[verdict]
        print(f"{line['benchmark'] + ' ' + line['figure']:<52}{line['value']:>10}  {label}")
    for figure in NOT_MEASURED:
        print(f"not measured yet: {figure}")
    print()
    for line in lines:
        print(json.dumps(line))
    return 1 if missed and not args.quick else 0


if __name__ == "__main__":
    raise SystemExit(main())
